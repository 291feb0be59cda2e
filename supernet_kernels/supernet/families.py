"""Model families: which layers of a model are elastic, and how to rebuild its architecture.

A family turns a model into a :class:`Layout`: the role of each ``nn.Linear`` (attention qkv /
proj, MLP fc1 / fc2, other), the MLPs whose hidden width is elastic (fc1, fc2 pairs), the
blocks that may be dropped, the attention modules whose heads may be elastic (timm ViT / DeiT
and SAM, see :func:`~supernet_kernels.supernet.attention.head_count`), and (timm ViT) the input
resolution. Each family is one :class:`Family` object in the :data:`FAMILIES` table (detection,
layout, attention swap, build records), detected by type in the table's order:

* ``timm_vit``: ``timm.models.vision_transformer.VisionTransformer`` (ViT, DeiT, and subclasses):
  ``blocks.{i}.attn.qkv`` / ``.attn.proj``, ``blocks.{i}.mlp.fc1`` / ``.fc2``;
* ``timm_swin``: ``timm.models.swin_transformer.SwinTransformer``:
  ``layers.{s}.blocks.{j}.attn.qkv`` / ``proj`` / ``mlp.fc1`` / ``fc2``; the patch-merging
  ``layers.{s}.downsample.reduction`` layers take the generic role;
* ``sam``: ``segment_anything.modeling.image_encoder.ImageEncoderViT``: ``blocks.{i}.attn.qkv`` /
  ``proj`` and ``blocks.{i}.mlp.lin1`` / ``lin2`` (windowed and global attention alike);
* ``hf_vit`` / ``hf_sam``: Hugging Face transformers ViT and SAM (:mod:`.hf`; transformers'
  SAM attention is swapped for :mod:`.hf_sam_attention`'s module, eager and SDPA classes alike,
  by the family's own ``swap``);
* ``generic``: any other module; every convertible ``nn.Linear`` has the generic role.

It also records how to rebuild the architecture without code (:func:`describe_build`): a timm
model made by ``timm.create_model`` as its architecture name plus the constructor arguments that
differ from that name's defaults (read off the instance); an explicitly constructed timm ViT /
Swin or a SAM image encoder as a whitelisted class plus its constructor arguments. Every record
is verified at once by building it on the meta device and comparing module types, reprs and
tensor shapes with the model; where that fails (custom layers, norms, ...) the record is None
and :func:`~supernet_kernels.supernet.load` needs ``skeleton=``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from .._direct_reads import direct_reads
from .attention import head_count
from .vit_resolution import (  # noqa: F401 - re-exported: callers use families.vit_*
    _vit_resolution,
    vit_flags,
    vit_make_dynamic,
    vit_set_flags,
    vit_set_resolution,
)


@dataclasses.dataclass
class Layout:
    family: str
    roles: dict[str, str]  # linear name -> "qkv" | "proj" | "fc1" | "fc2" | "generic" | "other"
    mlps: dict[str, tuple[str, str]]  # MLP module name -> (fc1 name, fc2 name)
    blocks: dict[str, bool]  # droppable-block candidates -> droppable by default
    skipped: dict[str, str]  # linear name -> why it is not converted
    resolution: dict | None = None  # timm_vit: {"native", "patch", "choices"}
    # attention module name -> its number of heads, where heads can be elastic (timm ViT, SAM)
    heads: dict[str, int] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- detection
def _vit_cls():
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return VisionTransformer


def _swin_cls():
    try:
        from timm.models.swin_transformer import SwinTransformer
    except ImportError:  # pragma: no cover
        return None
    return SwinTransformer


def _sam_cls():
    try:
        from segment_anything.modeling.image_encoder import ImageEncoderViT
    except ImportError:  # pragma: no cover
        return None
    return ImageEncoderViT


def detect_family(model: nn.Module) -> str:
    """The name of ``model``'s family: the first entry of :data:`FAMILIES` that claims it."""
    for family in FAMILIES.values():
        if family.detect(model):
            return family.name
    return "generic"


# --------------------------------------------------------------------------- linears
def convertible_linears(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """(names of the nn.Linear layers that can become ElasticLinear, {name: reason} for the
    ones that cannot)."""
    count: dict[int, int] = {}
    for _, parent in model.named_modules(remove_duplicate=False):
        for child in parent._modules.values():
            if child is not None:
                count[id(child)] = count.get(id(child), 0) + 1
    params: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                params[id(p)] = params.get(id(p), 0) + 1
    ok, skipped = [], {}
    reads = direct_reads(model)
    for pname, parent in model.named_modules():
        for attr, child in parent._modules.items():
            if not isinstance(child, nn.Linear):
                continue
            name = f"{pname}.{attr}" if pname else attr
            if name in reads:
                skipped[name] = reads[name]
            elif type(child).forward is not nn.Linear.forward:
                skipped[name] = f"{type(child).__name__} overrides nn.Linear.forward"
            elif count[id(child)] > 1:
                skipped[name] = "registered under several names (shared module)"
            elif any(params[id(p)] > 1 for p in child._parameters.values() if p is not None):
                skipped[name] = "weight shared with another module (tied)"
            elif not child.weight.dtype.is_floating_point or child.weight.is_meta:
                skipped[name] = "weight is not a floating-point tensor with values"
            else:
                ok.append(name)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    ok.sort(key=lambda n: order.get(n, len(order)))
    return ok, skipped


def _is_linear(module: nn.Module, attr: str) -> bool:
    return isinstance(getattr(module, attr, None), nn.Linear)


def _mlp_ok(mlp: nn.Module, a: str, b: str) -> bool:
    """fc1 -> elementwise -> fc2 with matching hidden width (no norm over the hidden units)."""
    if not (_is_linear(mlp, a) and _is_linear(mlp, b)):
        return False
    if getattr(mlp, a).out_features != getattr(mlp, b).in_features:
        return False
    norm = getattr(mlp, "norm", None)
    return norm is None or isinstance(norm, nn.Identity)


def _transformer_block(
    prefix: str, blk: nn.Module, fc: tuple[str, str], roles: dict, mlps: dict
) -> None:
    attn = getattr(blk, "attn", None)
    if attn is not None:
        if _is_linear(attn, "qkv"):
            roles[f"{prefix}.attn.qkv"] = "qkv"
        if _is_linear(attn, "proj"):
            roles[f"{prefix}.attn.proj"] = "proj"
    mlp = getattr(blk, "mlp", None)
    if mlp is not None and _mlp_ok(mlp, *fc):
        roles[f"{prefix}.mlp.{fc[0]}"] = "fc1"
        roles[f"{prefix}.mlp.{fc[1]}"] = "fc2"
        mlps[f"{prefix}.mlp"] = (f"{prefix}.mlp.{fc[0]}", f"{prefix}.mlp.{fc[1]}")


def _attention_heads(model: nn.Module) -> dict[str, int]:
    """Heads of each ``blocks.{i}.attn`` that can be elastic (timm ViT, SAM)."""
    heads = {}
    for i, blk in enumerate(model.blocks):
        count = head_count(getattr(blk, "attn", None))
        if count is not None:
            heads[f"blocks.{i}.attn"] = count
    return heads


def _vit_parts(model: nn.Module) -> dict:
    roles: dict[str, str] = {}
    mlps: dict[str, tuple[str, str]] = {}
    n = len(model.blocks)
    blocks = {}
    for i, blk in enumerate(model.blocks):
        _transformer_block(f"blocks.{i}", blk, ("fc1", "fc2"), roles, mlps)
        blocks[f"blocks.{i}"] = 0 < i < n - 1
    return {
        "roles": roles,
        "mlps": mlps,
        "blocks": blocks,
        "heads": _attention_heads(model),
        "resolution": _vit_resolution(model),
    }


def _swin_parts(model: nn.Module) -> dict:
    roles: dict[str, str] = {}
    mlps: dict[str, tuple[str, str]] = {}
    blocks = {}
    for s, stage in enumerate(model.layers):
        ds = getattr(stage, "downsample", None)
        if ds is not None and _is_linear(ds, "reduction"):
            roles[f"layers.{s}.downsample.reduction"] = "generic"
        n = len(stage.blocks)
        for j, blk in enumerate(stage.blocks):
            _transformer_block(f"layers.{s}.blocks.{j}", blk, ("fc1", "fc2"), roles, mlps)
            blocks[f"layers.{s}.blocks.{j}"] = 0 < j < n - 1
    return {"roles": roles, "mlps": mlps, "blocks": blocks}


def _sam_parts(model: nn.Module) -> dict:
    roles: dict[str, str] = {}
    mlps: dict[str, tuple[str, str]] = {}
    n = len(model.blocks)
    blocks = {}
    for i, blk in enumerate(model.blocks):
        _transformer_block(f"blocks.{i}", blk, ("lin1", "lin2"), roles, mlps)
        is_global = getattr(blk, "window_size", 0) == 0
        blocks[f"blocks.{i}"] = 0 < i < n - 1 and not is_global
    return {"roles": roles, "mlps": mlps, "blocks": blocks, "heads": _attention_heads(model)}


def _hf_parts(name: str) -> Callable[[nn.Module], dict]:
    def parts(model: nn.Module) -> dict:
        from . import hf

        roles, mlps, blocks, heads = hf.layout_parts(model, name)
        return {"roles": roles, "mlps": mlps, "blocks": blocks, "heads": heads}

    return parts


def layout(model: nn.Module, family: str | None = None) -> Layout:
    """The family's layout of ``model``; linears without a family role get "other" (family
    models) or "generic" (generic models, Swin's patch-merging reductions)."""
    family = family or detect_family(model)
    spec = FAMILIES[family]
    names, skipped = convertible_linears(model)
    parts = spec.parts(model)
    roles, mlps = parts.get("roles", {}), parts.get("mlps", {})
    blocks, heads = parts.get("blocks", {}), parts.get("heads", {})
    default = spec.default_role
    roles = {n_: roles.get(n_, default) for n_ in names}  # model order; skipped ones dropped
    mlps = {k: v for k, v in mlps.items() if v[0] in roles and v[1] in roles}
    heads = {
        a: h
        for a, h in heads.items()
        if all(n_ in roles for n_ in [*spec.head_linears(a)[0], spec.head_linears(a)[1]])
    }
    return Layout(family, roles, mlps, blocks, skipped, parts.get("resolution"), heads)


# --------------------------------------------------------------------------- build records
def _square(v) -> Any:
    v = tuple(int(x) for x in v)
    return v[0] if len(set(v)) == 1 else list(v)


def _vit_kwargs(m: nn.Module) -> dict:
    blk = m.blocks[0]
    return {
        "img_size": _square(m.patch_embed.img_size),
        "patch_size": _square(m.patch_embed.patch_size),
        "in_chans": int(m.patch_embed.proj.in_channels),
        "num_classes": int(m.num_classes),
        "global_pool": m.global_pool,
        "embed_dim": int(m.embed_dim),
        "depth": len(m.blocks),
        "num_heads": int(blk.attn.num_heads),
        "mlp_ratio": blk.mlp.fc1.out_features / m.embed_dim,
        "qkv_bias": blk.attn.qkv.bias is not None,
        "class_token": m.cls_token is not None,
        "reg_tokens": int(m.num_reg_tokens),
        "no_embed_class": bool(m.no_embed_class),
        "pre_norm": not isinstance(m.norm_pre, nn.Identity),
        "fc_norm": not isinstance(m.fc_norm, nn.Identity),
        "dynamic_img_size": bool(m.dynamic_img_size),
    }


def _swin_windows(m: nn.Module) -> list:
    """Per-stage window sizes as given to the constructor. Recent timm keeps them in
    ``_ref_window_sizes``; older versions only in each block (``target_window_size``, else
    ``window_size``). A wrong guess is caught: describe_build checks the rebuilt model."""
    ref = getattr(m, "_ref_window_sizes", None)
    if ref is not None:
        return [_square(w) for w in ref]
    out = []
    for stage in m.layers:
        blk = stage.blocks[0]
        w = getattr(blk, "target_window_size", None) or blk.window_size
        out.append(_square(w))
    return out


def _swin_kwargs(m: nn.Module) -> dict:
    first = m.layers[0].blocks[0]
    return {
        "img_size": _square(m.patch_embed.img_size),
        "patch_size": _square(m.patch_embed.patch_size),
        "in_chans": int(m.patch_embed.proj.in_channels),
        "num_classes": int(m.num_classes),
        "embed_dim": int(m.patch_embed.proj.out_channels),
        "depths": [len(s.blocks) for s in m.layers],
        "num_heads": [int(s.blocks[0].attn.num_heads) for s in m.layers],
        "window_size": _swin_windows(m),
        "mlp_ratio": first.mlp.fc1.out_features / first.mlp.fc1.in_features,
        "qkv_bias": first.attn.qkv.bias is not None,
    }


def _sam_kwargs(m: nn.Module) -> dict:
    blk = m.blocks[0]
    norm = blk.norm1
    if type(norm) is not nn.LayerNorm or type(blk.mlp.act) is not nn.GELU:
        raise ValueError("custom norm / activation")
    return {
        "img_size": int(m.img_size),
        "patch_size": int(m.patch_embed.proj.kernel_size[0]),
        "in_chans": int(m.patch_embed.proj.in_channels),
        "embed_dim": int(m.patch_embed.proj.out_channels),
        "depth": len(m.blocks),
        "num_heads": int(blk.attn.num_heads),
        "mlp_ratio": blk.mlp.lin1.out_features / blk.mlp.lin1.in_features,
        "out_chans": int(m.neck[0].out_channels),
        "qkv_bias": blk.attn.qkv.bias is not None,
        "use_abs_pos": m.pos_embed is not None,
        "use_rel_pos": bool(blk.attn.use_rel_pos),
        "window_size": max(int(b.window_size) for b in m.blocks),
        "global_attn_indexes": [i for i, b in enumerate(m.blocks) if b.window_size == 0],
        "norm_eps": float(norm.eps),
    }


# --------------------------------------------------------------------------- the family table
def _fused_head_linears(attn: str) -> tuple[list[str], str]:
    """(qkv linears, output linear) of a timm / segment-anything attention: one fused qkv."""
    return [f"{attn}.qkv"], f"{attn}.proj"


def _hf_head_linears(family: str) -> Callable[[str], tuple[list[str], str]]:
    def head_linears(attn: str) -> tuple[list[str], str]:
        from . import hf

        return hf.head_linears(attn, family)

    return head_linears


def _is_instance(get_cls: Callable[[], type | None]) -> Callable[[nn.Module], bool]:
    def detect(model: nn.Module) -> bool:
        cls = get_cls()
        return cls is not None and isinstance(model, cls)

    return detect


def _hf_record(model: nn.Module) -> dict:
    from . import hf

    return hf.build_record(model)


def _is_hf(name: str) -> Callable[[nn.Module], bool]:
    def detect(model: nn.Module) -> bool:
        from . import hf

        return hf.detect(model) == name

    return detect


def _hf_sam_swap(model: nn.Module) -> list[str]:
    from .hf_sam_attention import swap

    return swap(model)


def _attention_swap(module: str, cls: str, ours: str) -> tuple[Callable[[], type | None], type]:
    """(getter of the original attention class, our replacement), both from ``module`` (our
    attention modules, imported when first asked for)."""
    mod = importlib.import_module(f"{__package__}.{module}")
    return getattr(mod, cls), getattr(mod, ours)


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything the library knows about one model family, in one place.

    ``name`` is what files and ``Supernet.family`` record. ``detect(model)`` claims a model;
    ``parts(model)`` gives the layout's roles / mlps / blocks / heads / resolution (what is
    left out is empty); ``head_linears(attn)`` names an attention module's (q, k, v or fused
    qkv) and output linears; ``attention`` names (module, original class getter, our class) for
    ``attention="ours"`` (None: the model keeps its own); ``swap(model)``: a family's own
    replacement of its attention modules by ours, in place, returning the names replaced
    (transformers SAM: two original classes); ``own_heads``: the model's own
    attention runs any head count (transformers ViT), so heads are elastic without ours;
    ``build_class`` / ``get_class`` / ``kwargs`` describe a "class" build record, ``record``
    makes a family's own kind of record (transformers); ``elastic_resolution``: the input
    resolution is elastic (timm ViT); ``pad_empty_batch``: the forward cannot run B = 0
    (reshapes with -1); ``default_role``: the role of a linear the layout does not name."""

    name: str
    detect: Callable[[nn.Module], bool]
    parts: Callable[[nn.Module], dict]
    head_linears: Callable[[str], tuple[list[str], str]] = _fused_head_linears
    attention: tuple[str, str, str] | None = None
    swap: Callable[[nn.Module], list[str]] | None = None
    own_heads: bool = False
    build_class: str | None = None
    get_class: Callable[[], type | None] | None = None
    kwargs: Callable[[nn.Module], dict] | None = None
    record: Callable[[nn.Module], dict] | None = None
    elastic_resolution: bool = False
    pad_empty_batch: bool = False
    default_role: str = "other"

    def swap_pair(self) -> tuple[Callable[[], type | None], type] | None:
        """(original attention class getter, our module) or None."""
        return _attention_swap(*self.attention) if self.attention else None


# Detection order: the first family that claims a model wins (transformers' classes first,
# SAM before the timm families, generic last).
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "hf_vit",
            _is_hf("hf_vit"),
            _hf_parts("hf_vit"),
            _hf_head_linears("hf_vit"),
            own_heads=True,
            record=_hf_record,
        ),
        Family(
            "hf_sam",
            _is_hf("hf_sam"),
            _hf_parts("hf_sam"),
            _hf_head_linears("hf_sam"),
            swap=_hf_sam_swap,
            record=_hf_record,
            pad_empty_batch=True,
        ),
        Family(
            "sam",
            _is_instance(_sam_cls),
            _sam_parts,
            attention=("attention", "_sam_attention_cls", "SKSamAttention"),
            build_class="segment_anything.ImageEncoderViT",
            get_class=_sam_cls,
            kwargs=_sam_kwargs,
            pad_empty_batch=True,
        ),
        Family(
            "timm_swin",
            _is_instance(_swin_cls),
            _swin_parts,
            attention=("swin_attention", "_window_attention_cls", "SKSwinAttention"),
            build_class="timm.SwinTransformer",
            get_class=_swin_cls,
            kwargs=_swin_kwargs,
            pad_empty_batch=True,
        ),
        Family(
            "timm_vit",
            _is_instance(_vit_cls),
            _vit_parts,
            attention=("attention", "_timm_attention_cls", "SKViTAttention"),
            build_class="timm.VisionTransformer",
            get_class=_vit_cls,
            kwargs=_vit_kwargs,
            elastic_resolution=True,
            pad_empty_batch=True,
        ),
        Family("generic", lambda model: True, lambda model: {}, default_role="generic"),
    )
}


def swap_attention(model: nn.Module, family: str) -> list[str]:
    """Replace, in place, the attention modules of a ``family`` model with ours (the family's
    own ``swap``, else :func:`~supernet_kernels.supernet.attention.swap_attention`); returns
    the names replaced."""
    spec = FAMILIES.get(family)
    if spec is not None and spec.swap is not None:
        return spec.swap(model)
    from .attention import swap_attention as swap

    return swap(model, family)


# Build records (describe_build / rebuild / fingerprint) live in build_records.py; they are
# re-exported here, where callers (and tests that wrap rebuild) have always found them.
from .build_records import describe_build, fingerprint, rebuild  # noqa: E402, F401
