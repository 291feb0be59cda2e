"""
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
* with ``attention="ours"`` (the default), the attention modules of timm ViT / DeiT, timm Swin,
  the SAM image encoder and transformers SAM are replaced by
  :mod:`~supernet_kernels.supernet.attention`'s modules, which compute through
  ``torch.ops.supernet_kernels.attention`` (same parameters and state_dict keys; SAM's
  relative-position indices precomputed; Swin's relative-position bias and shifted-window
  mask passed as the op's additive bias). ``"original"`` keeps every model's own attention.

Families (see :mod:`supernet_kernels.supernet.families`): timm ViT / DeiT, timm Swin, the
segment-anything image encoder, transformers ViT and SAM (:mod:`~supernet_kernels.supernet.hf`),
and a generic path for any other model.

The space and config are described in :mod:`~supernet_kernels.supernet.space`, the
:class:`~supernet_kernels.supernet.Supernet` in :mod:`~supernet_kernels.supernet.supernet`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..nn.elastic import ElasticBlock, ElasticLinear
from ..nn.importance import (
    activation_head_importance,
    activation_importance,
    magnitude_head_importance,
    magnitude_importance,
    reorder_mlp,
)
from ..nn.mlp import fuse_mlps
from . import families as fam
from .attention import ATTENTION_CHOICES, prioritize_heads
from .default_space import _default_space, _merge_space
from .space import _check_space
from .supernet import Supernet
from .surgery import _parent


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
        attention: "ours" (default) replaces the attention of timm ViT / DeiT / Swin, SAM
            image encoders and transformers SAM by modules computing through
            ``torch.ops.supernet_kernels.attention`` (generic models keep theirs); "original"
            keeps every model's own.
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
    swapped = fam.swap_attention(work, family) if attention == "ours" else []
    for a, counts in checked["heads"].items():
        if counts == [lay.heads[a]]:
            continue
        # fewer heads possible: best heads first, qkv head-major
        if fam.FAMILIES[family].own_heads:  # transformers ViT: its own q, k, v, o layers
            from . import hf

            hf.prioritize_heads(work.get_submodule(a), lay.heads[a])  # magnitude
        else:
            prioritize_heads(work.get_submodule(a), head_imp)
    flags = None
    if fam.FAMILIES[family].elastic_resolution and checked["resolution"] is not None:
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
            "families: timm ViT / DeiT / Swin, SAM's image encoder, transformers ViT / SAM; "
            "declare MLPs and blocks with space=)",
            stacklevel=3,
        )


def extract(supernet: Supernet, config: dict | None = None) -> nn.Module:
    """``supernet.extract(config)``."""
    if not isinstance(supernet, Supernet):
        raise TypeError(f"extract: expected a Supernet, got {type(supernet).__name__}")
    return supernet.extract(config)
