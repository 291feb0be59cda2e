"""Weight-sharing supernets made from models the user already has.

``supernet = convert(model, space=None, *, importance="magnitude", calib_batches=None,
head_importance=None, inplace=False, group_size=128, build="auto")`` returns a
:class:`Supernet` owning a converted copy of ``model`` (``inplace=False``, the default,
deep-copies the model first, so the user's model is untouched; ``inplace=True`` converts the
given model itself, replacing its layers):

* every convertible ``nn.Linear`` becomes an :class:`~supernet_kernels.nn.ElasticLinear`
  (not converted, and listed in ``supernet.skipped`` with the reason: linears inside
  ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` / ``...DecoderLayer``, whose
  forwards read ``.weight``; subclasses overriding forward; shared or tied layers);
* each MLP's hidden units are sorted by importance (``importance="magnitude"``, ``"activation"``
  with ``calib_batches``, or a callable ``(fc1, fc2) -> scores``), so a width-w prefix keeps the
  w best units;
* where the number of attention heads is elastic, each attention's heads are sorted by
  importance the same way (``head_importance``, see
  :func:`~supernet_kernels.nn.importance.reorder_heads`) and its qkv rows laid out head-major,
  so h heads are the h best and their q, k, v rows one prefix of qkv (see
  :mod:`~supernet_kernels.supernet.attention`);
* each droppable block is wrapped in an :class:`~supernet_kernels.nn.ElasticBlock`;
* a timm ViT is made to accept any resolution that is a multiple of its patch size (position
  embeddings resampled by timm's ``resample_abs_pos_embed`` on each forward);
* with ``attention="ours"`` (the default), the attention modules of timm ViT / DeiT, timm Swin
  and the SAM image encoder are replaced by :mod:`~supernet_kernels.supernet.attention`'s
  modules, which compute through ``torch.ops.supernet_kernels.attention`` (same parameters and
  state_dict keys; SAM's relative-position indices precomputed; Swin's relative-position bias
  and shifted-window mask passed as the op's additive bias). ``"original"`` keeps every
  model's own attention.

Families (see :mod:`supernet_kernels.supernet.families`): timm ViT / DeiT, timm Swin, the
segment-anything image encoder, and a generic path for any other model.

Config (a plain JSON-serializable dict; this shape is stable)::

    {
      "resolution": 224,                       # timm ViT; None (null) for other families
      "depth": {"blocks.3": true, ...},        # false: the block is skipped (identity)
      "mlp": {"blocks.0.mlp": 1536, ...},      # MLP hidden width
      "heads": {"blocks.0.attn": 6, ...},      # attention heads run (timm ViT / DeiT, SAM)
      "linear": {"blocks.0.attn.qkv": {"rank": 96, "w_bits": 16, "a_bits": 16}, ...},
    }

Names are the original model's module names (a block's linears keep their names when the block
is wrapped). ``rank`` is an int for a factorized (low-rank) layer and None for a dense one. The
search space ``supernet.space`` has the same shape with a list of choices (ascending; the last
is the largest) in place of each value; ``space["resolution"]`` is None where resolution is not
elastic.

Default space (derived from the model; ``space=`` overrides it, see :func:`convert`):

* attention qkv, MLP fc1 / fc2 and generic linears (every linear of a generic model, Swin's
  patch-merging reductions): factorized, ``rank`` in ratios {1/8, 2/8, ..., 8/8} of
  min(in, out) (8/8 = full rank, which reproduces the layer to fp32 rounding), 16-bit;
* attention proj: dense (``rank`` [null]), ``w_bits`` [4, 8, 16], ``a_bits`` [16];
* other linears of a family model (classifier heads, ...): dense, 16-bit, fixed;
* ``a_bits``: [16] everywhere (int8 activations are opt-in: they need w_bits <= 8 and cost
  more accuracy than weight-only quantization);
* MLP width: fractions {0.25, 0.33, 0.5, 0.75, 1} of the hidden size (rounded to a multiple of 8
  when the hidden size is at least 64);
* heads (attention modules of timm ViT / DeiT and SAM, with ``attention="ours"``): every count
  from ceil(H / 2) to H of a module's H heads (DeiT-S 6 heads: [3, 4, 5, 6]; SAM ViT-B 12:
  [6, ..., 12]). The qkv rows of h heads are 3 * h * head_dim and proj reads h * head_dim
  inputs; the scale stays head_dim ** -0.5. Kept at [H] with ``attention="original"`` (the
  model's own attention runs a fixed head count; asking for fewer is an error). timm attention
  with ``scale_norm`` or a gate has no entry (not sliceable per head: it runs all heads);
* depth: every block droppable except the first and the last (timm ViT); per stage for Swin
  (first and last block of each stage kept); SAM also keeps its global-attention blocks;
  a generic model has no depth entries unless ``space=`` declares them;
* resolution (timm ViT): native * {160/224, 192/224, 1}, rounded to multiples of the patch size.

A layer is either factorized or dense, fixed at conversion by its space: ``ElasticLinear`` has no
dense mode in a factorized layer and quantized low-rank is not supported, so a factorized layer
is 16-bit only. To quantize a layer instead, give it ``"rank": [None]`` and ``w_bits`` choices.

``set_active(config)`` validates the whole config first, then applies it (never half-applied).
Partial configs are allowed: entries left out keep their current values. Errors are ValueError
naming the key path, e.g. ``linear.blocks.0.attn.qkv.rank: 999 is not one of [8, 16, 24]``.
Cross-checks: a rank may not exceed min(active in, active out) of its layer (MLP width and head
count included), and a_bits 8 needs w_bits <= 8. ``heads`` values are ints among the module's
choices (``heads.blocks.0.attn: 0 is not one of [2, 3] (the module has 3 heads)``).

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
import fnmatch
import json
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..nn.elastic import A_BITS, W_BITS, ElasticBlock, ElasticLinear
from ..nn.importance import (
    activation_head_importance,
    activation_importance,
    magnitude_head_importance,
    magnitude_importance,
    reorder_mlp,
)
from ..nn.mlp import fuse_mlps
from . import families as fam
from .attention import ATTENTION_CHOICES, prioritize_heads, swap_attention

CONFIG_KEYS = ("resolution", "depth", "mlp", "heads", "linear")
LINEAR_FIELDS = ("rank", "w_bits", "a_bits")
RANK_EIGHTHS = tuple(range(1, 9))
MLP_FRACTIONS = (0.25, 0.33, 0.5, 0.75, 1.0)
SUBNET_FORMAT = "sk-subnet-v1"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v) -> str:
    return json.dumps(v) if isinstance(v, bool) or v is None else repr(v)


# --------------------------------------------------------------------------- default space
def _rank_choices(n: int, k: int) -> list[int]:
    full = min(n, k)
    return sorted({max(1, round(full * e / 8)) for e in RANK_EIGHTHS})


def _mlp_width(hidden: int, f: float) -> int:
    """The width of fraction ``f`` of a hidden size (a multiple of 8 from 64 units up)."""
    w = hidden * f
    w = round(w / 8) * 8 if hidden >= 64 else round(w)
    return min(hidden, max(1, int(w)))


def _mlp_widths(hidden: int) -> list[int]:
    return sorted({_mlp_width(hidden, f) for f in MLP_FRACTIONS})


def _head_counts(heads: int) -> list[int]:
    """Every head count from half the heads (rounded up) to all: dropping more than half of a
    block's heads is rarely worth it, and a contiguous range lets a search step one head."""
    return list(range(max(1, math.ceil(heads / 2)), heads + 1))


def _linear_default(role: str, lin: nn.Linear) -> dict:
    if role in ("qkv", "fc1", "fc2", "generic"):
        ranks = _rank_choices(lin.out_features, lin.in_features)
        return {"rank": ranks, "w_bits": [16], "a_bits": [16]}
    if role == "proj":
        return {"rank": [None], "w_bits": [4, 8, 16], "a_bits": [16]}
    return {"rank": [None], "w_bits": [16], "a_bits": [16]}


def _default_space(model: nn.Module, lay: fam.Layout, attention: str) -> dict:
    mods = dict(model.named_modules())
    return {
        "resolution": list(lay.resolution["choices"]) if lay.resolution else None,
        "depth": {b: ([False, True] if d else [True]) for b, d in lay.blocks.items()},
        "mlp": {m: _mlp_widths(mods[a].out_features) for m, (a, _) in lay.mlps.items()},
        # The model's own attention reshapes with a fixed head count: elastic with ours only.
        "heads": {
            a: _head_counts(h) if attention == "ours" or lay.family == "hf_vit" else [h]
            for a, h in lay.heads.items()
        },
        "linear": {n: _linear_default(r, mods[n]) for n, r in lay.roles.items()},
    }


# --------------------------------------------------------------------------- space overrides
def _match(keys: Iterable[str], key: str) -> list[str]:
    if key in keys:
        return [key]
    return [k for k in keys if fnmatch.fnmatchcase(k, key)]


def _find_pair(model: nn.Module, name: str, convertible: dict) -> tuple[str, str]:
    """fc1, fc2 of a user-declared MLP module: its only two convertible linears, in order."""
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"space.mlp.{name}: the model has no module of that name") from None
    lins = [f"{name}.{n}" for n, m in mod.named_modules() if n and isinstance(m, nn.Linear)]
    lins = [n for n in lins if n in convertible]
    if len(lins) != 2:
        raise ValueError(
            f"space.mlp.{name}: an MLP module must hold exactly two convertible nn.Linear "
            f"layers (fc1, fc2); found {lins}"
        )
    a, b = (model.get_submodule(n) for n in lins)
    if a.out_features != b.in_features:
        raise ValueError(
            f"space.mlp.{name}: {lins[0]}.out_features ({a.out_features}) != "
            f"{lins[1]}.in_features ({b.in_features})"
        )
    return lins[0], lins[1]


def _merge_space(space: dict, user, model: nn.Module, lay: fam.Layout) -> dict:
    """The default ``space`` with the user's overrides applied (``lay`` gains user-declared
    MLPs and blocks). Entries name layers exactly or by fnmatch pattern (``*`` matches dots);
    a key matching nothing is an error, except exact module names that declare a new MLP or
    droppable block."""
    if user is None:
        return space
    if not isinstance(user, dict):
        raise ValueError(f"space: expected a dict, got {type(user).__name__}")
    bad = [k for k in user if k not in CONFIG_KEYS]
    if bad:
        raise ValueError(f"space: unknown key {bad[0]!r} (expected one of {list(CONFIG_KEYS)})")
    space = copy.deepcopy(space)
    if "resolution" in user:
        if space["resolution"] is None and user["resolution"] is not None:
            raise ValueError(
                f"space.resolution: this {lay.family} supernet has no elastic resolution "
                "(timm ViT only)"
            )
        if user["resolution"] is not None:
            space["resolution"] = user["resolution"]
        elif lay.resolution is not None:  # fixed at the native resolution
            space["resolution"] = [lay.resolution["native"]]
    for section in ("depth", "mlp", "heads", "linear"):
        entries = user.get(section, {})
        if not isinstance(entries, dict):
            raise ValueError(f"space.{section}: expected a dict, got {type(entries).__name__}")
        for key, value in entries.items():
            where = f"space.{section}.{key}"
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be module names (str)")
            hits = _match(space[section], key)
            if not hits and section == "mlp" and "*" not in key:
                lay.mlps[key] = _find_pair(model, key, lay.roles)
                hits = [key]
            elif not hits and section == "depth" and "*" not in key:
                _check_block(model, key, lay)
                lay.blocks[key] = True
                hits = [key]
            if not hits:
                raise ValueError(
                    f"{where}: matches no {section} entry of this {lay.family} supernet "
                    f"(entries are named like {list(space[section])[:4]})"
                )
            for k in hits:
                if section == "linear":
                    if not isinstance(value, dict):
                        raise ValueError(f"{where}: expected a dict of {list(LINEAR_FIELDS)}")
                    unknown = [f for f in value if f not in LINEAR_FIELDS]
                    if unknown:
                        raise ValueError(
                            f"{where}: unknown key {unknown[0]!r} (expected {list(LINEAR_FIELDS)})"
                        )
                    space["linear"][k] = {**space["linear"][k], **value}
                else:
                    space[section][k] = value
    return space


def _check_block(model: nn.Module, name: str, lay: fam.Layout) -> None:
    try:
        model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"space.depth.{name}: the model has no module of that name") from None
    if not name or any(name.startswith(b + ".") or b.startswith(name + ".") for b in lay.blocks):
        raise ValueError(f"space.depth.{name}: droppable blocks may not nest")


def _norm_choices(where: str, values, check: Callable[[Any], str | None]) -> list:
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"{where}: expected a non-empty list of choices, got {values!r}")
    for v in values:
        problem = check(v)
        if problem:
            raise ValueError(f"{where}: {_show(v)} {problem}")
    nums = sorted({v for v in values if v is not None})
    return nums + ([None] if None in values else [])


def _check_space(space: dict, model: nn.Module, lay: fam.Layout, attention: str) -> dict:
    """Validate and normalize (sorted, deduplicated) every list of choices."""
    mods = dict(model.named_modules())
    out: dict[str, Any] = {"resolution": None, "depth": {}, "mlp": {}, "heads": {}, "linear": {}}
    if space["resolution"] is not None:
        p = lay.resolution["patch"]
        out["resolution"] = _norm_choices(
            "space.resolution",
            space["resolution"],
            lambda v: (
                None
                if _is_int(v) and v > 0 and v % p == 0
                else f"is not a positive multiple of the patch size {p}"
            ),
        )
    for b, vals in space["depth"].items():
        out["depth"][b] = _norm_choices(
            f"space.depth.{b}", vals, lambda v: None if isinstance(v, bool) else "is not a bool"
        )
    for m, vals in space["mlp"].items():
        hidden = mods[lay.mlps[m][0]].out_features
        if isinstance(vals, list | tuple):  # fractions of the hidden size, as the docs give them
            vals = [
                _mlp_width(hidden, v) if isinstance(v, float) and 0 < v <= 1 else v for v in vals
            ]
        out["mlp"][m] = _norm_choices(
            f"space.mlp.{m}",
            vals,
            lambda v, h=hidden: (
                None
                if _is_int(v) and 1 <= v <= h
                else f"is neither a width in 1..{h} nor a fraction in (0, 1] of it"
            ),
        )
    for a, vals in space["heads"].items():
        full = lay.heads[a]
        out["heads"][a] = _norm_choices(
            f"space.heads.{a}",
            vals,
            lambda v, h=full: None if _is_int(v) and 1 <= v <= h else f"is not an int in 1..{h}",
        )
        if attention != "ours" and lay.family != "hf_vit" and out["heads"][a] != [full]:
            raise ValueError(
                f'space.heads.{a}: fewer heads than the model\'s {full} need attention="ours" '
                f"(the model's own attention runs a fixed head count), got {out['heads'][a]}"
            )
    for n, sp in space["linear"].items():
        lin = mods[n]
        full = min(lin.in_features, lin.out_features)
        where = f"space.linear.{n}"
        ranks = _norm_choices(
            f"{where}.rank",
            sp.get("rank"),
            lambda v, f=full: (
                None
                if v is None or (_is_int(v) and 1 <= v <= f)
                else f"is not null or an int in 1..{f} (min(in, out))"
            ),
        )
        if None in ranks and len(ranks) > 1:
            raise ValueError(
                f"{where}.rank: a layer is either dense ([null]) or factorized (int ranks), "
                f"got {ranks} (ElasticLinear has no dense mode in a factorized layer)"
            )
        w = _norm_choices(
            f"{where}.w_bits",
            sp.get("w_bits"),
            lambda v: None if _is_int(v) and v in W_BITS else f"is not one of {list(W_BITS)}",
        )
        a = _norm_choices(
            f"{where}.a_bits",
            sp.get("a_bits"),
            lambda v: None if _is_int(v) and v in A_BITS else f"is not one of {list(A_BITS)}",
        )
        if ranks != [None] and w != [16]:
            raise ValueError(
                f"{where}.w_bits: a factorized layer (rank choices {ranks}) runs 16-bit only "
                f"(quantized low-rank is not supported), got {w}; give it rank [null] to "
                "quantize it"
            )
        for wb in w:
            if not any(ab == 16 or wb <= 8 for ab in a):
                raise ValueError(
                    f"{where}.a_bits: no choice in {a} works with w_bits {wb} (a_bits 8 needs "
                    "w_bits <= 8)"
                )
        out["linear"][n] = {"rank": ranks, "w_bits": w, "a_bits": a}
    # Every MLP width and head count must leave a valid rank for the layers it narrows:
    # (entry, what it is, smallest choice, [(linear, side narrowed, width per choice unit)]).
    narrowed = [
        (f"mlp.{m}", "width", w[0], [(lay.mlps[m][0], "out", 1), (lay.mlps[m][1], "in", 1)])
        for m, w in out["mlp"].items()
    ]
    for a, counts in out["heads"].items():
        sides = [(n, side, unit) for n, side, unit in _head_sides(lay, mods, a)]
        narrowed.append((f"heads.{a}", "head count", counts[0], sides))
    for key, what, smallest, sides in narrowed:
        for lname, side, unit in sides:
            lin = mods[lname]
            ranks = out["linear"][lname]["rank"]
            other = lin.in_features if side == "out" else lin.out_features
            limit = min(other, smallest * unit)
            if ranks != [None] and ranks[0] > limit:
                raise ValueError(
                    f"space.linear.{lname}.rank: the smallest rank {ranks[0]} exceeds "
                    f"min(in, out) = {limit} at the smallest {what} {smallest} of {key}"
                )
    return out


def _head_sides(lay: fam.Layout, mods: dict, a: str) -> list[tuple[str, str, int]]:
    """(linear, side narrowed, width per head) of attention module ``a``: its fused qkv and
    proj (timm / SAM, our attention) or transformers ViT's q, k, v and o projections."""
    if lay.family == "hf_vit":
        from . import hf

        qkv, o = hf.head_linears(a)
        d = mods[o].in_features // lay.heads[a]
        return [(n, "out", d) for n in qkv] + [(o, "in", d)]
    d = mods[f"{a}.proj"].in_features // lay.heads[a]
    return [(f"{a}.qkv", "out", 3 * d), (f"{a}.proj", "in", d)]


# --------------------------------------------------------------------------- module surgery
def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, attr = name.rpartition(".")
    return (model.get_submodule(head) if head else model), attr


class _Removed(nn.Identity):
    """Placeholder for a dropped block while extracting."""


def remove_blocks(model: nn.Module, names: Iterable[str]) -> None:
    """Remove the named blocks (original names, resolved before anything moves): entries of
    nn.Sequential / nn.ModuleList are deleted and the rest renumbered; elsewhere nn.Identity."""
    for name in sorted(set(names)):
        parent, attr = _parent(model, name)
        setattr(parent, attr, _Removed())
    drop_placeholders(model)


def drop_placeholders(model: nn.Module) -> None:
    for _, parent in list(model.named_modules()):
        kids = parent._modules
        if not any(isinstance(c, _Removed) for c in kids.values()):
            continue
        if isinstance(parent, nn.Sequential | nn.ModuleList):
            keep = [c for c in kids.values() if not isinstance(c, _Removed)]
            kids.clear()
            for i, c in enumerate(keep):
                kids[str(i)] = c
        else:
            for attr, c in list(kids.items()):
                if isinstance(c, _Removed):
                    kids[attr] = nn.Identity()


# --------------------------------------------------------------------------- Supernet
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
        self._wrapped = list(wrapped)
        self._vit_flags = vit_flags
        # Paths in self.model (blocks may be wrapped) of the linears and attention modules.
        self._paths = {n: self._wrapped_path(n) for n in [*space["linear"], *space["heads"]]}
        # Attention modules running fewer heads than they have (prioritized by convert):
        # name -> head_dim.
        if self.family == "hf_vit":  # transformers ViT: prioritized where heads are elastic
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
    def _wrapped_path(self, name: str) -> str:
        """The path in self.model of an original module name (inside a wrapped block it gains
        ``.block``)."""
        for w in self._wrapped:
            if name == w:
                return f"{w}.block"
            if name.startswith(w + "."):
                return f"{w}.block.{name[len(w) + 1 :]}"
        return name

    def _mod(self, name: str) -> nn.Module:
        """The ElasticLinear of a linear name, or the attention module of a heads name."""
        return self.model.get_submodule(self._paths[name])

    def _block(self, name: str) -> nn.Module:
        """The (ElasticBlock-wrapped) block of a depth name; blocks never nest."""
        return self.model.get_submodule(name)

    @property
    def space(self) -> dict:
        """The search space (a copy): the config's shape with lists of choices."""
        return copy.deepcopy(self._space)

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
        sp = self._space
        cfg: dict[str, Any] = {
            "resolution": choose(sp["resolution"]) if sp["resolution"] else None,
            "depth": {k: choose(v) for k, v in sp["depth"].items()},
            "mlp": {k: choose(v) for k, v in sp["mlp"].items()},
            "heads": {k: choose(v) for k, v in sp["heads"].items()},
            "linear": {},
        }
        for n, s in sp["linear"].items():
            limit = self._limit(n, cfg)
            ranks = [r for r in s["rank"] if r is None or r <= limit]
            w = choose(s["w_bits"])
            a = choose([x for x in s["a_bits"] if x == 16 or w <= 8])
            cfg["linear"][n] = {"rank": choose(ranks), "w_bits": w, "a_bits": a}
        return cfg

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
        if not isinstance(config, dict):
            raise ValueError(f"config: expected a dict, got {type(config).__name__}")
        for k in config:
            if k not in CONFIG_KEYS:
                raise ValueError(f"config: unknown key {k!r} (expected one of {list(CONFIG_KEYS)})")
        sp = self._space
        new = copy.deepcopy(self._config)
        if "resolution" in config:
            v = config["resolution"]
            if sp["resolution"] is None:
                if v is not None:
                    raise ValueError(
                        f"resolution: this {self.family} supernet has no elastic resolution "
                        f"(give null), got {_show(v)}"
                    )
            elif not _is_int(v) or v not in sp["resolution"]:
                raise ValueError(
                    f"resolution: {_show(v)} is not one of {json.dumps(sp['resolution'])}"
                )
            new["resolution"] = v
        for section, is_ok, what in (
            ("depth", lambda v: isinstance(v, bool), "block"),
            ("mlp", _is_int, "MLP"),
            ("heads", _is_int, "attention module"),
        ):
            entries = config.get(section, {})
            if not isinstance(entries, dict):
                raise ValueError(f"{section}: expected a dict, got {type(entries).__name__}")
            for k, v in entries.items():
                if k not in sp[section]:
                    raise ValueError(
                        f"{section}.{k}: unknown {what} (this supernet has "
                        f"{list(sp[section])[:4]}{' ...' if len(sp[section]) > 4 else ''})"
                    )
                if not is_ok(v) or v not in sp[section][k]:
                    has = (
                        f" (the module has {self._layout.heads[k]} heads)"
                        if section == "heads"
                        else ""
                    )
                    raise ValueError(
                        f"{section}.{k}: {_show(v)} is not one of {json.dumps(sp[section][k])}{has}"
                    )
                new[section][k] = v
        entries = config.get("linear", {})
        if not isinstance(entries, dict):
            raise ValueError(f"linear: expected a dict, got {type(entries).__name__}")
        for n, c in entries.items():
            if n not in sp["linear"]:
                raise ValueError(
                    f"linear.{n}: unknown layer (this supernet has {list(sp['linear'])[:4]} ...)"
                )
            if not isinstance(c, dict):
                raise ValueError(f"linear.{n}: expected a dict of {list(LINEAR_FIELDS)}")
            for f, v in c.items():
                if f not in LINEAR_FIELDS:
                    raise ValueError(
                        f"linear.{n}: unknown key {f!r} (expected {list(LINEAR_FIELDS)})"
                    )
                ok = (v is None or _is_int(v)) if f == "rank" else _is_int(v)
                if not ok or v not in sp["linear"][n][f]:
                    raise ValueError(
                        f"linear.{n}.{f}: {_show(v)} is not one of {json.dumps(sp['linear'][n][f])}"
                    )
                new["linear"][n][f] = v
        for n, c in new["linear"].items():
            limit = self._limit(n, new)
            if c["rank"] is not None and c["rank"] > limit:
                raise ValueError(
                    f"linear.{n}.rank: {c['rank']} exceeds min(in, out) = {limit} of the layer "
                    "at the configured MLP width / head count"
                )
            if c["a_bits"] == 8 and c["w_bits"] > 8:
                raise ValueError(
                    f"linear.{n}.a_bits: 8 needs w_bits <= 8, got w_bits {c['w_bits']}"
                )
        return new

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
            if self.family != "hf_vit":  # transformers' ViT reshapes with -1 heads
                self._mod(a).set_heads(h)
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
        if (
            x is not None
            and x.dim() == 4
            and x.shape[0] == 0
            and self.family in ("timm_vit", "timm_swin", "sam")
        ):
            # Image models reshape with -1 somewhere (timm's dynamic-size ViT x.view(B, -1, C),
            # the attention of SAM and Swin), ambiguous for B = 0: run one zero image appended
            # to the empty batch and keep none of it (gradients still reach the input).
            out = self.model(torch.cat([x, x.new_zeros((1, *x.shape[1:]))]), *args[1:], **kwargs)
            if isinstance(out, torch.Tensor):
                return out[:0]
            return type(out)(o[:0] for o in out)
        px = kwargs.get("pixel_values")
        if self.family == "hf_vit" and isinstance(px, torch.Tensor) and px.shape[0] == 0:
            # transformers' ViT attention views with -1 heads, ambiguous for B = 0: as above.
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
        if self.family == "timm_vit" and cfg["resolution"] is not None:
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


# --------------------------------------------------------------------------- convert
def _importance_fns(importance, head_importance, calib_batches, model: nn.Module):
    """(MLP importance ``(fc1, fc2) -> scores``, head importance ``(qkv, proj, num_heads) ->
    scores``) for convert's arguments."""
    if not (callable(importance) or importance in ("magnitude", "activation")):
        raise ValueError(
            f'convert: importance must be "magnitude", "activation" or a callable (fc1, fc2) -> '
            f"scores, got {importance!r}"
        )
    if head_importance is None:  # follow importance; a user MLP hook says nothing about heads
        head_importance = importance if isinstance(importance, str) else "magnitude"
    if not (callable(head_importance) or head_importance in ("magnitude", "activation")):
        raise ValueError(
            f'convert: head_importance must be None, "magnitude", "activation" or a callable '
            f"(qkv, proj, num_heads) -> scores, got {head_importance!r}"
        )
    run = None
    if "activation" in (importance, head_importance):
        if calib_batches is None:
            raise ValueError('convert: importance="activation" needs calib_batches')
        batches = list(calib_batches)
        if not batches:
            raise ValueError("convert: calib_batches is empty")

        def run():
            was = model.training
            model.eval()
            try:
                for b in batches:
                    model(*b) if isinstance(b, tuple | list) else model(b)
            finally:
                model.train(was)

    def pick(choice, magnitude, activation):
        if callable(choice):
            return choice
        if choice == "magnitude":
            return magnitude
        return lambda *layers: activation(*layers, run)

    return (
        pick(importance, magnitude_importance, activation_importance),
        pick(head_importance, magnitude_head_importance, activation_head_importance),
    )


def convert(
    model: nn.Module,
    space: dict | None = None,
    *,
    importance: str | Callable = "magnitude",
    calib_batches: Iterable | None = None,
    head_importance: str | Callable | None = None,
    inplace: bool = False,
    group_size: int | None = 128,
    build: dict | str | None = "auto",
    attention: str = "ours",
) -> Supernet:
    """Turn ``model`` into a :class:`Supernet` (see the module doc for the space and config).

    Args:
        model: a timm ViT / DeiT / Swin, a segment-anything ``ImageEncoderViT``, or any module.
        space: overrides of the default search space, in its shape: ``{"resolution": [...],
            "depth": {block: [False, True]}, "mlp": {mlp: [widths]}, "linear": {layer:
            {"rank": [...], "w_bits": [...], "a_bits": [...]}}, "heads": {attn: [counts]}}``.
            Keys are names or fnmatch
            patterns (``"blocks.*.attn.proj"``); a linear's entry overrides only the fields it
            gives. Exact names not in the default declare new entries: ``"depth"`` a droppable
            block (any module whose output has its input's shape), ``"mlp"`` an elastic-width
            MLP (a module holding exactly two linears fc1, fc2, e.g. ``nn.Sequential(Linear,
            GELU, Linear)``). ``"resolution": None`` fixes a ViT at its native resolution.
        importance: how MLP hidden units are sorted before slicing: ``"magnitude"``,
            ``"activation"`` (needs ``calib_batches``: inputs, or tuples of positional inputs)
            or a callable ``(fc1, fc2) -> scores``.
        head_importance: how attention heads are sorted where their number is elastic:
            ``"magnitude"``, ``"activation"`` (needs ``calib_batches``), a callable ``(qkv,
            proj, num_heads) -> scores`` (:mod:`supernet_kernels.nn.importance`), or None (the
            default): the same as ``importance`` when that is a string, else magnitude.
        inplace: convert ``model`` itself (its layers are replaced) instead of a deep copy.
        group_size: quantization group of the ElasticLinears (per-channel where it does not
            divide the input width).
        build: "auto" records how to rebuild the architecture for :func:`load` (verified on
            the meta device; None where that fails), None records nothing (load then needs a
            skeleton), or a record ``{"kind": "timm", "name": ..., "kwargs": {...}}`` /
            ``{"kind": "class", "class": ..., "kwargs": {...}}`` (verified).
        attention: "ours" (default) replaces the attention of timm ViT / DeiT / Swin and SAM
            image encoders by modules computing through ``torch.ops.supernet_kernels.attention``
            (generic models keep theirs); "original" keeps every model's own.
    """
    if not isinstance(model, nn.Module) or isinstance(model, Supernet):
        raise TypeError(f"convert: expected a model (nn.Module), got {type(model).__name__}")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(
            f"convert: attention must be one of {list(ATTENTION_CHOICES)}, got {attention!r}"
        )
    meta = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if meta:
        # SVD factors, importance orders and quantization scales all need the weights' values.
        raise ValueError(
            f"convert: the model has {len(meta)} tensors on the meta device (e.g. {meta[0]!r}), "
            "without values to convert; materialize it first (model.to_empty(device='cpu') then "
            "load_state_dict, or build it on a real device)"
        )
    family = fam.detect_family(model)
    if build == "auto":
        record = fam.describe_build(model, family)
    elif build is None:
        record = None
    else:
        try:
            ok = fam.fingerprint(fam.rebuild(build, device="meta")) == fam.fingerprint(model)
        except ValueError as exc:
            raise ValueError(f"convert: build: {exc}") from exc
        if not ok:
            raise ValueError("convert: build does not rebuild this model's architecture")
        record = json.loads(json.dumps(build))
    lay = fam.layout(model, family)
    merged = _merge_space(_default_space(model, lay, attention), space, model, lay)
    checked = _check_space(merged, model, lay, attention)
    work = model if inplace else copy.deepcopy(model)
    imp, head_imp = _importance_fns(importance, head_importance, calib_batches, work)

    with torch.no_grad():
        for a, b in lay.mlps.values():
            reorder_mlp(work.get_submodule(a), work.get_submodule(b), imp)
    swapped = swap_attention(work, family) if attention == "ours" else []
    for a, counts in checked["heads"].items():
        if counts == [lay.heads[a]]:
            continue
        # fewer heads possible: best heads first, qkv head-major
        if family == "hf_vit":
            from . import hf

            hf.prioritize_heads(work.get_submodule(a), lay.heads[a])  # magnitude
        else:
            prioritize_heads(work.get_submodule(a), head_imp)
    flags = None
    if family == "timm_vit" and checked["resolution"] is not None:
        flags = fam.vit_flags(work)
        # Only an elastic resolution needs timm's dynamic image size; a fixed one keeps the
        # model's own (static) path, which also runs empty batches (the dynamic one cannot).
        if len(checked["resolution"]) > 1:
            fam.vit_make_dynamic(work)
    for n, sp in checked["linear"].items():
        lin = work.get_submodule(n)
        ranks = [r for r in sp["rank"] if r is not None] or None
        el = ElasticLinear.from_linear(
            lin,
            rank_choices=ranks,
            w_bits_choices=sp["w_bits"],
            a_bits_choices=sp["a_bits"],
            group_size=group_size,
        )
        el.train(lin.training)
        for p in el.parameters():
            p.requires_grad_(lin.weight.requires_grad)
        parent, attr = _parent(work, n)
        setattr(parent, attr, el)
    _warn_if_nearly_empty(model, lay, checked)
    # The fused low-rank MLP block (nn/mlp.py): runs where the active config makes both linears
    # of an MLP low-rank; the module's own forward otherwise.
    fuse_mlps(work, lay.mlps)
    wrapped = [b for b, c in checked["depth"].items() if False in c]
    for b in wrapped:
        parent, attr = _parent(work, b)
        blk = getattr(parent, attr)
        eb = ElasticBlock(blk)
        eb.train(blk.training)
        setattr(parent, attr, eb)
    from .hf import refuse_save_pretrained

    refuse_save_pretrained(work)
    return Supernet(
        work, lay, checked, wrapped, record, flags, "ours" if swapped else "original", swapped
    )


NEARLY_EMPTY = 0.2  # elastic linears holding less than this share of the weights: warn


def _warn_if_nearly_empty(model: nn.Module, lay: fam.Layout, space: dict) -> None:
    """A generic model whose elastic layers hold little of its weights (a CNN: only its
    classifier; a model whose linears are read directly) gets a space that cannot compress
    it: say so instead of returning it silently."""
    if lay.family != "generic":
        return
    total = sum(p.numel() for p in model.parameters())
    mods = dict(model.named_modules())
    elastic = sum(mods[n].weight.numel() for n, sp in space["linear"].items() if len(sp["rank"]) > 1
                  or len(sp["w_bits"]) > 1)  # fmt: skip
    share = elastic / max(total, 1)
    if (
        share < NEARLY_EMPTY
        and not space["mlp"]
        and not any(False in c for c in space["depth"].values())
    ):
        import warnings

        warnings.warn(
            f"convert: the search space of this generic {type(model).__name__} is nearly empty: "
            f"its {len(space['linear'])} elastic linear layers hold {share:.2%} of the model's "
            f"{total} parameters, with no elastic MLP widths, heads or depth (first-class "
            "families: timm ViT / DeiT / Swin, SAM's image encoder; declare MLPs and blocks "
            "with space=)",
            stacklevel=3,
        )


def extract(supernet: Supernet, config: dict | None = None) -> nn.Module:
    """``supernet.extract(config)``."""
    if not isinstance(supernet, Supernet):
        raise TypeError(f"extract: expected a Supernet, got {type(supernet).__name__}")
    return supernet.extract(config)
