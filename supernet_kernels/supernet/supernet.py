"""The :class:`Supernet` class: a converted model with its search space, configs and
extraction (build one with :func:`~supernet_kernels.supernet.convert`).

``supernet.extract(config=None)`` returns a standalone plain ``nn.Module`` for the config (or the
active one): a deep copy of the converted model in which each ElasticLinear is replaced by its
``extract()`` (``nn.Linear``, ``LowRankLinear`` or ``QuantLinear``, weights copied; qkv and proj
hold only the active heads' rows / columns, and their attention module has ``num_heads`` = the
active count), each kept ElasticBlock by its block, and each dropped block removed (entries of
``nn.Sequential`` / ``nn.ModuleList`` are deleted and the rest renumbered; a dropped block
anywhere else is replaced by ``nn.Identity``). A timm ViT subnet is static at its resolution
(position embeddings resampled once, ``patch_embed`` sizes updated, the original dynamic-size
flags restored). The subnet carries ``subnet.sk_subnet`` (family, build record, config, removed
blocks, resolution, attention), which :func:`~supernet_kernels.supernet.save` stores (with each
attention module's head count). It holds no reference to the supernet.

Not done: elastic embedding width, elastic heads for Swin, elastic resolution for Swin and SAM
(their window / relative-position tables depend on the input size), elastic classifier heads.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..nn.elastic import ElasticBlock, ElasticLinear
from . import families as fam
from .space import SUBNET_FORMAT, Space, _head_sides
from .surgery import _Removed, drop_placeholders


class Supernet(nn.Module):
    """A weight-sharing supernet around a converted model (build it with :func:`convert`).

    Attributes: ``model`` (the converted model), ``family``, ``build`` (the architecture
    record :func:`save` stores, or None), ``skipped`` ({linear name: reason} for linears left
    as they were), ``attention`` ("ours" or "original": which attention modules the model
    runs; ``attention_modules`` lists the ones replaced by ours). ``forward`` runs ``model`` at
    the active config (a timm ViT checks that the image size equals the active resolution).
    """

    def __init__(
        self,
        model: nn.Module,
        layout: fam.Layout,
        space: dict,
        wrapped: list[str],
        build: dict | None,
        vit_flags: dict | None,
        attention: str = "original",
        attention_modules: list[str] | None = None,
    ):
        super().__init__()
        self.model = model
        self.family = layout.family
        self.build = build
        self.attention = attention
        self.attention_modules = list(attention_modules or [])
        self.skipped = dict(layout.skipped)
        self._layout = layout
        self._space = space
        # The typed space owns picking, validation and repair; bound to this supernet's limits.
        self._spec = Space.from_dict(
            space, limit=self._limit, family=layout.family, head_counts=dict(layout.heads)
        )
        self._wrapped = list(wrapped)
        self._vit_flags = vit_flags
        # Paths in self.model (blocks may be wrapped) of the linears and attention modules.
        self._paths = {n: self.module(n) for n in [*space["linear"], *space["heads"]]}
        # Attention modules running fewer heads than they have (prioritized by convert):
        # name -> head_dim.
        self._family = fam.FAMILIES[self.family]
        if self._family.own_heads:  # transformers ViT: prioritized where heads are elastic
            self._head_dims = {
                a: self._mod(a).head_dim
                for a, c in space["heads"].items()
                if c != [layout.heads[a]]
            }
        else:
            self._head_dims = {
                a: self._mod(a).head_dim
                for a in space["heads"]
                if getattr(self._mod(a), "qkv_layout", "qkv") == "head"
            }
        # Linears whose width follows another dimension: name -> (config section, entry,
        # side, width per unit of the entry's value).
        self._side: dict[str, tuple[str, str, str, int]] = {}
        for m, (a, b) in layout.mlps.items():
            self._side[a] = ("mlp", m, "out", 1)
            self._side[b] = ("mlp", m, "in", 1)
        mods = {n: self._mod(n) for n in space["linear"]}
        for a in self._head_dims:
            for n, side, unit in _head_sides(layout, mods, a):
                self._side[n] = ("heads", a, side, unit)
        self._config = self.max_config()
        self._apply_config(self._config)

    def _side_of_heads(self, a: str) -> list[tuple[str, str, int]]:
        return [(n, s[2], s[3]) for n, s in self._side.items() if s[0] == "heads" and s[1] == a]

    # ----------------------------------------------------------------- lookups
    def module(self, name: str) -> str:
        """The path in this supernet (as ``self.named_modules()`` names it) of a module named
        as in its configs (a linear, an attention module, a block, or any module of the
        original model): ``model.`` prefixed, and inside a droppable block (wrapped in an
        ElasticBlock) ``.block`` inserted: ``blocks.1.attn.qkv`` ->
        ``model.blocks.1.block.attn.qkv``. The one map from config names to module paths."""
        for w in self._wrapped:
            if name == w:
                return f"model.{w}.block"
            if name.startswith(w + "."):
                return f"model.{w}.block.{name[len(w) + 1 :]}"
        return f"model.{name}" if name else "model"

    def _mod(self, name: str) -> nn.Module:
        """The ElasticLinear of a linear name, or the attention module of a heads name."""
        return self.get_submodule(self._paths[name])

    def _block(self, name: str) -> nn.Module:
        """The (ElasticBlock-wrapped) block of a depth name; blocks never nest."""
        return self.model.get_submodule(name)

    @property
    def space(self) -> dict:
        """The search space (a copy): the config's shape with lists of choices."""
        return copy.deepcopy(self._space)

    def space_spec(self) -> Space:
        """The search space as a typed :class:`~supernet_kernels.supernet.space.Space` bound to
        this supernet (its rank limits), with the sections a subclass adds (``space``'s)."""
        return Space.from_dict(
            self.space, limit=self._limit, family=self.family, head_counts=dict(self._layout.heads)
        )

    def elastic_linears(self) -> dict[str, ElasticLinear]:
        return {n: self._mod(n) for n in self._space["linear"]}

    def _limit(self, name: str, cfg: dict) -> int:
        """min(active in, active out) of a linear at ``cfg`` (its MLP width or head count)."""
        lin = self._mod(name)
        k, n = lin.in_features, lin.out_features
        if name in self._side:
            section, key, side, unit = self._side[name]
            width = cfg[section][key] * unit
            if side == "out":
                n = width
            else:
                k = width
        return min(k, n)

    # ----------------------------------------------------------------- configs
    def _pick(self, choose: Callable[[list], Any]) -> dict:
        return self._spec.pick(choose)

    def max_config(self) -> dict:
        """The largest subnet: every block, full widths, all heads, full ranks, the most bits."""
        return self._pick(lambda c: c[-1])

    def min_config(self) -> dict:
        """The smallest subnet: every droppable block dropped, the smallest choices (fewest
        heads included)."""
        return self._pick(lambda c: c[0])

    def sample_config(self, rng: random.Random | int | None = None) -> dict:
        """A config drawn uniformly per dimension (``rng``: a random.Random, or a seed).
        Ranks are drawn among those valid at the drawn MLP width and head count, a_bits among
        those valid with the drawn w_bits."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        return self._pick(rng.choice)

    def active_config(self) -> dict:
        return copy.deepcopy(self._config)

    def validate_config(self, config: dict) -> dict:
        """The full config ``config`` (partial: the rest from the active one) would set;
        ValueError naming the key path of the first problem."""
        return self._spec.validate(config, self._config)

    def set_active(self, config: dict) -> None:
        """Validate ``config`` (full or partial) entirely, then apply it."""
        new = self.validate_config(config)
        self._apply_config(new)
        self._config = new

    def _apply_config(self, cfg: dict) -> None:
        for b in self._wrapped:
            self._block(b).set_active(cfg["depth"][b])
        for m, h in cfg["mlp"].items():
            a, b = self._layout.mlps[m]
            self._mod(a).set_active(out=h)
            self._mod(b).set_active(in_features=h)
        for a in self._head_dims:
            h = cfg["heads"][a]
            if not self._family.own_heads:  # transformers' ViT reshapes with -1 heads
                self._mod(a).set_active(heads=h)
            for n, side, unit in self._side_of_heads(a):
                # head-major: one prefix of each
                self._mod(n).set_active(**{"out" if side == "out" else "in_features": h * unit})
        for n, c in cfg["linear"].items():
            self._mod(n).set_active(rank=c["rank"], w_bits=c["w_bits"], a_bits=c["a_bits"])

    # ----------------------------------------------------------------- running
    def forward(self, *args, **kwargs):
        r = self._config["resolution"]
        if r is not None and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            hw = tuple(args[0].shape[-2:])
            if hw != (r, r):
                raise ValueError(
                    f"Supernet: the input is {hw[0]}x{hw[1]}, the active resolution is {r}x{r}; "
                    "resize the images or set_active({'resolution': ...})"
                )
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is not None and x.dim() == 4 and x.shape[0] == 0 and self._family.pad_empty_batch:
            # Image models reshape with -1 somewhere (timm's dynamic-size ViT x.view(B, -1, C),
            # the attention of SAM and Swin), ambiguous for B = 0: run one zero image appended
            # to the empty batch and keep none of it (gradients still reach the input).
            out = self.model(torch.cat([x, x.new_zeros((1, *x.shape[1:]))]), *args[1:], **kwargs)
            if isinstance(out, torch.Tensor):
                return out[:0]
            if hasattr(out, "items"):  # a transformers ModelOutput
                for k, v in list(out.items()):
                    if isinstance(v, torch.Tensor):
                        out[k] = v[:0]
                return out
            return type(out)(o[:0] for o in out)
        px = kwargs.get("pixel_values")
        if (
            self.family in ("hf_vit", "hf_sam")
            and isinstance(px, torch.Tensor)
            and px.shape[0] == 0
        ):
            # transformers' ViT attention views with -1 heads, its SAM layers unpartition
            # windows with -1 channels, ambiguous for B = 0: as above.
            one = torch.cat([px, px.new_zeros((1, *px.shape[1:]))])
            out = self.model(*args, **{**kwargs, "pixel_values": one})
            for k, v in list(out.items()):
                if isinstance(v, torch.Tensor):
                    out[k] = v[:0]
            return out
        return self.model(*args, **kwargs)

    def active_params(self) -> int:
        """Weight parameters of the active subnet's elastic linears (dropped blocks excluded)."""
        dropped = [b for b, on in self._config["depth"].items() if not on]
        return sum(
            lin.active_weight_params()
            for n, lin in self.elastic_linears().items()
            if not any(n == b or n.startswith(b + ".") for b in dropped)
        )

    # ----------------------------------------------------------------- extraction
    @torch.no_grad()
    def extract(self, config: dict | None = None) -> nn.Module:
        """The standalone subnet at ``config`` (default: the active config); the supernet's
        active config is unchanged afterwards."""
        if config is None:
            return self._extract()
        new = self.validate_config(config)
        old = self._config
        self._apply_config(new)
        self._config = new
        try:
            return self._extract()
        finally:
            self._apply_config(old)
            self._config = old

    def _extract(self) -> nn.Module:
        cfg = self._config
        dropped = [b for b, on in cfg["depth"].items() if not on]
        memo: dict[int, Any] = {}
        for n in self._space["linear"]:
            if any(n == b or n.startswith(b + ".") for b in dropped):
                continue
            el = self._mod(n)
            sub = el.extract()
            sub.train(el.training)
            memo[id(el)] = sub
        for b in dropped:
            memo[id(self._block(b))] = _Removed()
        sub = copy.deepcopy(self.model, memo)
        for _, parent in list(sub.named_modules()):
            for attr, child in list(parent._modules.items()):
                if isinstance(child, ElasticBlock):
                    parent._modules[attr] = child.block
        drop_placeholders(sub)
        if self._family.elastic_resolution and cfg["resolution"] is not None:
            fam.vit_set_resolution(sub, cfg["resolution"], self._vit_flags)
        from .hf import refuse_save_pretrained

        refuse_save_pretrained(sub)
        sub.sk_subnet = {
            "format": SUBNET_FORMAT,
            "family": self.family,
            "build": copy.deepcopy(self.build),
            "config": copy.deepcopy(cfg),
            "removed": sorted(dropped),
            "resolution": cfg["resolution"],
            "attention": self.attention,
        }
        return sub

    def extra_repr(self) -> str:
        return (
            f"family={self.family}, linears={len(self._space['linear'])}, "
            f"mlps={len(self._space['mlp'])}, elastic_heads={len(self._head_dims)}, droppable="
            f"{sum(False in v for v in self._space['depth'].values())}, "
            f"resolution={self._space['resolution']}"
        )
