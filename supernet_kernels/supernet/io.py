"""Save and load extracted subnets: one safetensors file, its JSON document in the header.

``save(subnet, path)`` writes ``subnet.state_dict()`` to a safetensors file whose header
metadata key ``"supernet_kernels"`` holds a JSON document::

    {"format": "sk-subnet-v1", "family": "timm_vit", "build": {...} | null,
     "config": {...}, "resolution": 192 | null, "removed": ["blocks.3", ...],
     "attention": "ours" | "original",
     "heads": {"blocks.0.attn": {"num_heads": 2, "qkv_layout": "head"}, ...},
     "layers": {"blocks.0.attn.qkv": {"type": "LowRankLinear", "in_features": 64,
                "out_features": 192, "rank": 32, "bias": true}, ...},
     "keys": [...]}

``build`` is how to rebuild the architecture without code (recorded by ``convert``): a timm
model name plus constructor kwargs, or a whitelisted class (timm VisionTransformer /
SwinTransformer, segment-anything ImageEncoderViT) plus kwargs; null where the architecture
could not be recorded (generic models, custom layers). ``removed`` are dropped blocks by their
original names; ``layers`` are the subnet's linear layers by their names in the subnet (after
removal): ``Linear``, ``LowRankLinear`` (rank) or ``QuantLinear`` (bits, group_size, act_bits,
symmetric). ``attention`` says whether the subnet ran supernet-kernels' attention modules
(:mod:`~supernet_kernels.supernet.attention`, converted with ``attention="ours"``); they have
the original's state_dict keys, so :func:`load` rebuilds the original architecture and swaps
them in again. Files without the field (older ones) load with the original attention.
``heads`` records each of those modules (by its name in the subnet) with the heads it runs and
its qkv row layout (elastic heads: a head-major qkv sliced to ``num_heads`` heads, see
:mod:`~supernet_kernels.supernet.attention`); modules not listed (older files) run all their
heads in the original layout.

The single file is the atomic unit: it is written to a temporary file in the same folder,
fsynced, then renamed over the target. ``load(path, skeleton=None)`` reads only safetensors and
JSON (nothing is unpickled): it rebuilds the architecture (``timm.create_model(name,
pretrained=False, **kwargs)``, the recorded class, or the given ``skeleton``, an instance of the
original full model's architecture, which is changed in place), applies the resolution, removes
the blocks, puts the recorded layer types in place, checks every key and shape against the file,
then loads the tensors strictly. The model is returned in eval mode. A truncated or corrupt
file, or one from another model, raises ValueError naming the problem.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from torch import nn

from .._io import check_dtypes, check_shapes, load_tensors, read_header, save_tensors, unshared
from ..nn.lowrank import LowRankLinear
from ..nn.quant import QuantLinear
from . import families as fam
from .attention import (
    ATTENTION_CHOICES,
    QKV_LAYOUTS,
    SKSamAttention,
    SKViTAttention,
)
from .core import SUBNET_FORMAT, Supernet, remove_blocks

_META_KEY = "supernet_kernels"
FAMILIES = tuple(fam.FAMILIES)  # the family names a file may record


# The layer types a file may record: type name -> (class, int fields, bool fields). A record is
# ``{"type": name, **fields}``, the layer's own ``config()`` where it has one (QuantLinear), and
# the class is rebuilt with the fields as keywords, after they are checked (files are input).
_LAYERS: dict[str, tuple[type[nn.Module], tuple[str, ...], tuple[str, ...]]] = {
    "QuantLinear": (
        QuantLinear,
        ("in_features", "out_features", "bits", "group_size", "act_bits"),
        ("symmetric", "bias"),
    ),
    "LowRankLinear": (LowRankLinear, ("in_features", "out_features", "rank"), ("bias",)),
    "Linear": (nn.Linear, ("in_features", "out_features"), ("bias",)),
}


def _layer_type(m: nn.Module) -> str | None:
    """The recorded type of ``m``: the nearest class in its MRO that :data:`_LAYERS` holds."""
    by_cls = {cls: name for name, (cls, _, _) in _LAYERS.items()}
    return next((by_cls[c] for c in type(m).__mro__ if c in by_cls), None)


def _layer_record(m: nn.Module) -> dict | None:
    t = _layer_type(m)
    if t is None:
        return None
    cls, ints, bools = _LAYERS[t]
    if callable(getattr(cls, "config", None)):
        return {"type": t, **m.config()}
    rec = {f: getattr(m, f) for f in ints if f != "bias"}
    return {"type": t, **rec, "bias": m.bias is not None}


def save(module: nn.Module, path: str | os.PathLike) -> Path:
    """Write an extracted subnet (from ``Supernet.extract``) to the file ``path``, atomically;
    a whole :class:`Supernet` to the folder ``path`` (see :mod:`~supernet_kernels.supernet.store`;
    returns its supernet.json)."""
    if isinstance(module, Supernet):
        from .store import save_supernet

        return save_supernet(module, path)
    info = getattr(module, "sk_subnet", None)
    if not isinstance(info, dict) or info.get("format") != SUBNET_FORMAT:
        raise ValueError(
            "save: the module is not a subnet extracted by Supernet.extract (no sk_subnet "
            "record); use supernet_kernels.save_quantized or safetensors for other models"
        )
    layers, heads = {}, {}
    for name, m in module.named_modules():
        rec = _layer_record(m)
        if rec is not None:
            layers[name] = rec
        if isinstance(m, SKViTAttention | SKSamAttention):
            heads[name] = {"num_heads": m.num_heads, "qkv_layout": m.qkv_layout}
    tensors = unshared(module.state_dict())
    doc = {
        "format": SUBNET_FORMAT,
        "family": info["family"],
        "build": info.get("build"),
        "config": info.get("config"),
        "resolution": info.get("resolution"),
        "removed": list(info.get("removed", [])),
        "attention": info.get("attention", "original"),
        "heads": heads,
        "layers": layers,
        "keys": sorted(tensors),
    }
    meta = {_META_KEY: json.dumps(doc, sort_keys=True)}
    return save_tensors(path, tensors, meta)


def _read_doc(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    header, shapes = read_header(path, "load")
    if _META_KEY not in header:
        raise ValueError(f"load: {path} has no {_META_KEY!r} metadata; it was not written by save")
    try:
        doc = json.loads(header[_META_KEY])
        if not isinstance(doc, dict):
            raise ValueError("the document is not a JSON object")
        if doc.get("format") != SUBNET_FORMAT:
            raise ValueError(
                f"format {doc.get('format')!r}, expected {SUBNET_FORMAT!r} (another file kind "
                "or a newer release)"
            )
        if doc.get("family") not in FAMILIES:
            raise ValueError(f"unknown family {doc.get('family')!r}")
        if not isinstance(doc.get("layers"), dict) or not isinstance(doc.get("removed"), list):
            raise ValueError("'layers' / 'removed' missing or of the wrong type")
        if not all(isinstance(r, str) for r in doc["removed"]):
            raise ValueError("'removed' must hold block names")
        if doc.get("attention", "original") not in ATTENTION_CHOICES:
            raise ValueError(f"unknown attention {doc.get('attention')!r}")
        heads = doc.get("heads", {})
        if not isinstance(heads, dict) or (heads and doc.get("attention") != "ours"):
            raise ValueError("'heads' must be a dict, and empty unless attention is 'ours'")
        for name, rec in heads.items():
            n = rec.get("num_heads") if isinstance(rec, dict) else None
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"heads {name!r}: bad num_heads {n!r}")
            if rec.get("qkv_layout") not in QKV_LAYOUTS:
                raise ValueError(f"heads {name!r}: bad qkv_layout {rec.get('qkv_layout')!r}")
        res = doc.get("resolution")
        if res is not None and (not isinstance(res, int) or res <= 0):
            raise ValueError(f"bad resolution {res!r}")
        if doc.get("keys") is not None and sorted(doc["keys"]) != sorted(shapes):
            raise ValueError("the tensors in the file are not the ones the document lists")
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"load: {path} has corrupt metadata: {exc}") from exc
    return doc, shapes


def _int(rec: dict, field: str, where: str) -> int:
    v = rec.get(field)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{where}: corrupt layer record field {field}={v!r}")
    return v


def _make_layer(rec: Any, where: str, ref: nn.Linear) -> nn.Module:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: corrupt layer record {rec!r}")
    k, n = _int(rec, "in_features", where), _int(rec, "out_features", where)
    bias = rec.get("bias")
    if not isinstance(bias, bool):
        raise ValueError(f"{where}: corrupt layer record field bias={bias!r}")
    if k > ref.in_features or n > ref.out_features or bias != (ref.bias is not None):
        raise ValueError(
            f"{where}: the file's layer is {k}->{n} (bias={bias}), the model's "
            f"{ref.in_features}->{ref.out_features} (bias={ref.bias is not None}); the file is "
            "from another model"
        )
    kw = {"device": ref.weight.device, "dtype": ref.weight.dtype}
    t = rec.get("type")
    if t not in _LAYERS:
        raise ValueError(f"{where}: unknown layer type {t!r}")
    cls, ints, bools = _LAYERS[t]
    fields = {f: _int(rec, f, where) for f in ints}
    for f in bools:
        if not isinstance(rec.get(f), bool):
            raise ValueError(f"{where}: corrupt layer record: corrupt field {f}={rec.get(f)!r}")
        fields[f] = rec[f]
    try:
        return cls(**fields, **kw)
    except ValueError as exc:
        raise ValueError(f"{where}: corrupt layer record: {exc}") from exc


# Bounds of the metadata, checked before anything is built. A build record's numbers come
# from the file's header, which anyone can edit: a depth of 10**7 must not make load build
# ten million blocks. Each kept block, layer and attention module holds at least one tensor
# of the file, and no constructor number of these families exceeds a small multiple of the
# largest tensor dimension (image sizes are the largest: SAM ViT-B 1024 against an MLP of
# 3072; a tiny ViT 224 against 128).
_DIM_FACTOR = 16
_MAX_NAME = 1000


def _hf_layers(kwargs: dict):
    """The layers a transformers config asks for (``num_hidden_layers``, nested configs
    summed), or None."""
    total, found = 0, False
    stack = [kwargs]
    while stack:
        d = stack.pop()
        for k, v in d.items():
            if isinstance(v, dict):
                stack.append(v)
            elif k == "num_hidden_layers":
                if not _is_count(v):
                    return v  # reported as not a block count
                total, found = total + v, True
    return total if found else None


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _walk_numbers(value, where: str):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int | float):
        yield where, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_numbers(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_numbers(v, f"{where}.{k}")
    else:
        raise ValueError(f"{where}: unexpected value {value!r}")


def check_build_bounds(build, shapes: dict[str, tuple[int, ...]], n_removed: int, bad: str) -> None:
    """A build record's numbers against the bounds the file's tensors give (see above)."""
    n_tensors = len(shapes)
    limit = _DIM_FACTOR * max([d for s in shapes.values() for d in s] + [n_tensors, 64])
    if not isinstance(build, dict) or not isinstance(build.get("kwargs"), dict):
        raise ValueError(f"{bad}: build record {build!r} is not a dict with kwargs")
    kwargs = build["kwargs"]
    for key, v in _walk_numbers(kwargs, "build.kwargs"):
        if not math.isfinite(v) or abs(v) > limit:
            raise ValueError(
                f"{bad}: {key} = {v!r} is out of bounds (at most {limit}, {_DIM_FACTOR}x "
                "the largest tensor dimension in the file)"
            )
    depth = kwargs.get("depth", kwargs.get("depths", _hf_layers(kwargs)))
    if isinstance(depth, list) and all(_is_count(d) for d in depth):
        depth = sum(depth)
    if depth is not None and not _is_count(depth):
        raise ValueError(f"{bad}: build.kwargs depth {depth!r} is not a block count")
    if depth is not None and depth > n_tensors + n_removed:
        raise ValueError(
            f"{bad}: build.kwargs asks for {depth} blocks, but the file holds {n_tensors} "
            f"tensors and removes {n_removed} blocks (each kept block holds at least "
            "one tensor)"
        )


def _check_bounds(doc: dict, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Every number and list of the document against bounds the file's tensors give (see
    above); ValueError naming the field. Cheap: nothing is built."""
    n_tensors = len(shapes)
    largest = max([d for s in shapes.values() for d in s] + [n_tensors, 64])
    limit = _DIM_FACTOR * largest
    bad = f"{where}: corrupt metadata"
    removed = doc["removed"]
    if len(set(removed)) != len(removed) or any(len(r) > _MAX_NAME for r in removed):
        raise ValueError(f"{bad}: 'removed' holds repeated or overlong block names")
    for field in ("layers", "heads"):
        entries = doc.get(field) or {}
        if len(entries) > n_tensors:
            raise ValueError(
                f"{bad}: {len(entries)} {field} records, but the file holds only {n_tensors} "
                "tensors (each has at least one)"
            )
    if doc.get("build") is not None:
        check_build_bounds(doc["build"], shapes, len(removed), bad)
    for name, rec in doc["layers"].items():
        for key, v in _walk_numbers(rec, f"layers.{name}"):
            if not math.isfinite(v) or abs(v) > limit:
                raise ValueError(f"{bad}: {key} = {v!r} is out of bounds (at most {limit})")
        if not isinstance(rec, dict):
            continue
        # The layer's tensors must be in the file with the recorded shapes.
        k, n, t = rec.get("in_features"), rec.get("out_features"), rec.get("type")
        want = {}
        if t == "Linear":
            want = {f"{name}.weight": (n, k)}
        elif t == "LowRankLinear":
            r = rec.get("rank")
            want = {f"{name}.u": (n, r), f"{name}.v": (r, k)}
        for key, shape in want.items():
            if key in shapes and shapes[key] != shape:
                raise ValueError(
                    f"{bad}: layer {name!r} is recorded as {t} {k}->{n} (rank "
                    f"{rec.get('rank')}), but the file's {key} is {shapes[key]}"
                )


def load(path: str | os.PathLike, skeleton: nn.Module | None = None) -> nn.Module:
    """Load a :func:`save` file; see the module doc. ``skeleton``: a full model of the original
    architecture (required where the file records no build; it is changed in place). A folder
    (or its supernet.json) written by ``save(supernet, folder)`` or the command line loads as
    a :class:`Supernet` at its max config.

    Nothing is built before the metadata is checked: first its numbers against bounds the
    file's tensors give (:func:`_check_bounds`), then (without a skeleton) the whole plan on
    the meta device (no memory): the architecture, removals, layer types and every key and
    shape against the file. Only then is the model built on the CPU and the tensors read."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".json":  # a whole supernet (folder or supernet.json)
        from .store import load_supernet

        if skeleton is not None:
            raise ValueError(f"load: {path} is a supernet folder; it takes no skeleton")
        return load_supernet(path)[0]
    doc, shapes = _read_doc(path)
    where = f"load: {path}"
    _check_bounds(doc, shapes, where)
    if skeleton is None:
        if doc.get("build") is None:
            raise ValueError(
                f"{where}: the file records no architecture (a {doc['family']} model whose "
                "constructor arguments could not be recorded); pass skeleton=, a model of the "
                "original architecture"
            )
        try:
            dry = fam.rebuild(doc["build"], device="meta")
        except ValueError as exc:
            if "cannot rebuild" not in str(exc):
                raise ValueError(f"{where}: {exc}") from exc
            dry = None  # a build some timm versions cannot run on meta: the bounds hold
        if dry is not None:
            _prepare(dry, doc, shapes, where)
        try:
            model = fam.rebuild(doc["build"])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    else:
        if not isinstance(skeleton, nn.Module):
            raise TypeError(f"load: skeleton must be an nn.Module, got {type(skeleton).__name__}")
        model = skeleton
    _prepare(model, doc, shapes, where)
    tensors = load_tensors(path, where)
    check_dtypes(tensors, model.state_dict(), where)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{where} does not fit the model: {exc}") from exc
    model.sk_subnet = {
        "format": SUBNET_FORMAT,
        "family": doc["family"],
        "build": doc.get("build"),
        "config": doc.get("config"),
        "removed": list(doc["removed"]),
        "resolution": doc["resolution"],
        "attention": doc.get("attention", "original"),
    }
    return model.eval()


def _prepare(model: nn.Module, doc: dict, shapes: dict, where: str) -> None:
    """Make ``model`` (the full original architecture) the file's subnet: resolution, removed
    blocks, attention, heads, layer types; then check every key and shape against the file."""
    have = fam.detect_family(model)
    if have != doc["family"]:
        raise ValueError(
            f"{where}: the file holds a {doc['family']} subnet, the model is {have}; the file "
            "is from another model"
        )

    # Check the structure against the model before changing anything.
    if doc["resolution"] is not None and have != "timm_vit":
        raise ValueError(f"{where}: corrupt metadata: resolution given for a {have} model")
    for b in doc["removed"]:
        try:
            model.get_submodule(b)
        except AttributeError:
            raise ValueError(
                f"{where}: the model has no block {b!r} to remove; the file is from another model"
            ) from None
    if doc["resolution"] is not None:
        p = model.patch_embed.patch_size[0]
        if doc["resolution"] % p:
            raise ValueError(
                f"{where}: resolution {doc['resolution']} is not a multiple of the model's "
                f"patch size {p}; the file is from another model"
            )
        fam.vit_set_resolution(model, doc["resolution"], fam.vit_flags(model))
    remove_blocks(model, doc["removed"])
    attention = doc.get("attention", "original")
    if attention == "ours":
        fam.swap_attention(model, have)
    for name, rec in doc.get("heads", {}).items():
        aw = f"{where} attention {name!r}"
        try:
            att = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"{aw}: the model has no module of that name; the file is from another model"
            ) from None
        if not isinstance(att, SKViTAttention | SKSamAttention):
            raise ValueError(
                f"{aw}: the model's module is a {type(att).__name__}, not our attention; the "
                "file is from another model"
            )
        if rec["num_heads"] > att.num_heads:
            raise ValueError(
                f"{aw}: the file runs {rec['num_heads']} heads, the model's module has "
                f"{att.num_heads}; the file is from another model"
            )
        att.set_active(heads=rec["num_heads"])
        att.qkv_layout = rec["qkv_layout"]
    plan = []
    for name, rec in doc["layers"].items():
        lw = f"{where} layer {name!r}"
        try:
            ref = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"{lw}: the model has no module of that name; the file is from another model"
            ) from None
        if not isinstance(ref, nn.Linear):
            raise ValueError(
                f"{lw}: the model's module is a {type(ref).__name__}, not nn.Linear; the file "
                "is from another model"
            )
        new = _make_layer(rec, lw, ref)
        new.train(ref.training)
        plan.append((name, new))
    for name, new in plan:
        head, _, attr = name.rpartition(".")
        setattr(model.get_submodule(head) if head else model, attr, new)

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_shapes(expected, shapes, where)
