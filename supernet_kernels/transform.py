"""Whole-model transforms: replace a model's ``nn.Linear`` layers by ``QuantLinear``, save and
load the result.

This module sits above ``nn/`` (it builds layers) and beside ``supernet/``; ``quant/`` below
keeps the numerics (file format, quantizers, fake quantization) that kernels, ops and layers
share. It lives at the top of the package, not inside ``supernet/``, because it applies to any
``nn.Module``, not only to converted supernets. ``supernet_kernels.quant.quantize_model`` and
``supernet_kernels.quant.model.*`` are deprecated aliases of the names here.

Which layer becomes what is decided by a handler table (:data:`HANDLERS`, torchao's
``quantization/transform_module.py`` shape): a layer type maps to a function that returns the
quantized replacement, or the reason the layer is left as it is. The most derived registered
type in a layer's MRO wins, so ``FakeQuantLinear`` (exported with its learned scales) is handled
apart from a plain ``nn.Linear``; :func:`register_handler` adds a type.

``quantize_model(model, bits=4, group_size=128, ...)`` converts a model in place and returns a
:class:`QuantizeReport` saying what was quantized, what was left in full precision and why, and
the weight bytes before and after.

Per-layer settings: ``bits``, ``group_size`` and ``act_bits`` each take

* one value for every layer;
* a dict from module names or :mod:`fnmatch` patterns (``"blocks.*.mlp.fc1"``; ``*`` also
  matches dots) to values. An exact name wins over patterns; among patterns the first match in
  the dict's order wins, so put specific patterns before ``"*"``. A key that matches no linear
  layer raises ``ValueError`` (a typo would otherwise silently leave a layer as it was). A layer
  that matches no key gets the default: for ``bits`` it is left in full precision, for
  ``group_size`` 128, for ``act_bits`` 16;
* a callable ``(name, module) -> value``.

``bits=None`` for a layer leaves it in full precision; ``group_size`` None or -1 is per-channel.

``save_quantized`` / ``load_quantized`` store the state_dict in a safetensors file whose header
carries each QuantLinear's configuration as JSON, so a freshly built float model (the skeleton)
can be converted and loaded without re-running the quantizer.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._direct_reads import direct_reads
from ._io import check_dtypes, check_shapes, load_tensors, read_header, save_tensors, unshared
from .nn.fake_quant import FakeQuantLinear
from .nn.quant import QuantLinear
from .quant.packing import SUPPORTED_BITS, packed_width

MODEL_FORMAT = "sk-quant-model-v1"
_META_KEY = "supernet_kernels"
_DEFAULTS = {"bits": None, "group_size": 128, "act_bits": 16}


# --------------------------------------------------------------------------- report
@dataclasses.dataclass
class QuantizeReport:
    """What :func:`quantize_model` did.

    ``quantized``: (name, bits, group_size, act_bits) per converted layer (group_size is the
    actual group, in_features for per-channel). ``skipped``: (name, reason) per linear layer left
    as it was. Byte counts cover the weights of all linear layers seen (packed codes, scales and
    zero points for quantized ones; biases excluded as they are unchanged).
    """

    quantized: list[tuple[str, int, int, int]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0

    @property
    def compression(self) -> float:
        return self.weight_bytes_before / max(self.weight_bytes_after, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantized": [
                {"name": n, "bits": b, "group_size": g, "act_bits": a}
                for n, b, g, a in self.quantized
            ],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
            "weight_bytes_before": self.weight_bytes_before,
            "weight_bytes_after": self.weight_bytes_after,
            "compression": self.compression,
        }

    def __str__(self) -> str:
        rows = [("layer", "bits", "group", "act", "note")]
        rows += [(n, str(b), str(g), str(a), "") for n, b, g, a in self.quantized]
        rows += [(n, "-", "-", "-", f"skipped: {r}") for n, r in self.skipped]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = []
        for i, r in enumerate(rows):
            cells = [r[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(r[1:4], widths[1:], strict=True)
            ]
            lines.append("  ".join([*cells, r[4]]).rstrip())
            if i == 0:
                lines.append("-" * len(lines[0]))
        lines.append(
            f"{len(self.quantized)} quantized, {len(self.skipped)} skipped; linear weights "
            f"{_mib(self.weight_bytes_before)} -> {_mib(self.weight_bytes_after)} "
            f"({self.compression:.2f}x smaller)"
        )
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2**20:.3f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


# --------------------------------------------------------------------------- spec resolution
class _Spec:
    """One of bits / group_size / act_bits: a value, a {name or pattern: value} dict, or a
    callable (name, module) -> value."""

    def __init__(self, what: str, spec, names: list[str]):
        self.what, self.spec = what, spec
        self.kind = "dict" if isinstance(spec, dict) else "call" if callable(spec) else "value"
        if self.kind == "dict":
            unknown = [
                k for k in spec if not isinstance(k, str) or not any(_matches(k, n) for n in names)
            ]
            if unknown:
                raise ValueError(
                    f"quantize_model: {what} keys match no nn.Linear module: {unknown}; "
                    f"linear layers are named like {names[:4]}"
                )

    def __call__(self, name: str, module: nn.Module):
        if self.kind == "value":
            return self.spec
        if self.kind == "call":
            return self.spec(name, module)
        if name in self.spec:
            return self.spec[name]
        for key, value in self.spec.items():
            if fnmatch.fnmatchcase(name, key):
                return value
        return _DEFAULTS[self.what] if self.what != "bits" else _NO_KEY


_NO_KEY = object()


def _matches(key: str, name: str) -> bool:
    return key == name or fnmatch.fnmatchcase(name, key)


def _skip_fn(skip, names: list[str]) -> Callable[[str, nn.Module], bool]:
    if skip is None:
        return lambda name, module: False
    if callable(skip):
        return lambda name, module: bool(skip(name, module))
    patterns = [skip] if isinstance(skip, str) else list(skip)
    bad = [p for p in patterns if not isinstance(p, str)]
    if bad:
        raise TypeError(f"quantize_model: skip must hold names or patterns (str), got {bad}")
    unknown = [p for p in patterns if not any(_matches(p, n) for n in names)]
    if unknown:
        raise ValueError(f"quantize_model: skip patterns match no nn.Linear module: {unknown}")
    return lambda name, module: any(_matches(p, name) for p in patterns)


# --------------------------------------------------------------------------- model walking
def _linear_sites(model: nn.Module) -> dict[int, tuple[str, nn.Linear, list[tuple]]]:
    """id(linear) -> (first name, module, [(parent, attribute name), ...] for every place it
    is registered)."""
    sites: dict[int, tuple[str, nn.Linear, list[tuple]]] = {}
    for pname, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if isinstance(child, nn.Linear):
                name = f"{pname}.{attr}" if pname else attr
                if id(child) not in sites:
                    sites[id(child)] = (name, child, [])
                sites[id(child)][2].append((parent, attr))
    return sites


def _replace(places: list[tuple], new: nn.Module) -> None:
    for parent, attr in places:
        setattr(parent, attr, new)


def _shared_weight_ids(model: nn.Module) -> set[int]:
    """Parameters registered under more than one module (tied weights)."""
    count: dict[int, int] = {}
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None:
                count[id(p)] = count.get(id(p), 0) + 1
    return {i for i, c in count.items() if c > 1}


def _quant_nbytes(n: int, k: int, bits: int, g: int) -> int:
    return n * packed_width(k, bits) * 4 + 2 * n * (k // g) * 4


def _check_value(what: str, name: str, value, allowed) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(
            f"quantize_model: {what} for {name!r} must be one of {allowed}, got {value!r}"
        )


# --------------------------------------------------------------------------- handler table
@dataclasses.dataclass
class TransformContext:
    """What a handler may read: the per-layer settings (``specs[what](name, module)``), the
    quantizer options, and what the model tells about its layers (``direct_reads``: names of
    layers whose weight the model reads without calling them, with the reason; ``shared``: ids
    of tied parameters)."""

    specs: dict[str, _Spec]
    symmetric: bool
    clip_search: bool
    direct_reads: dict[str, str]
    shared: set[int]


# A handler returns a zero-argument callable building the replacement QuantLinear (called only
# once every layer was checked, so that a bad setting leaves the model unchanged), or a str: the
# reason the layer stays as it is.
Handler = Callable[[str, nn.Module, TransformContext], "Callable[[], nn.Module] | str"]
HANDLERS: dict[type, Handler] = {}


def register_handler(module_type: type) -> Callable[[Handler], Handler]:
    """Decorator: ``handler(name, module, ctx)`` quantizes layers of ``module_type``, an
    ``nn.Linear`` subclass (and its subclasses that have no handler of their own)."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Linear)):
        raise TypeError(
            f"register_handler: module_type must be nn.Linear or a subclass, got {module_type!r}"
        )

    def register(handler: Handler) -> Handler:
        HANDLERS[module_type] = handler
        return handler

    return register


def handler_for(module: nn.Module) -> Handler | None:
    """The handler of the most derived registered type in ``type(module).__mro__``."""
    for cls in type(module).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    return None


@register_handler(FakeQuantLinear)
def _fake_quant_linear(name: str, module: FakeQuantLinear, ctx: TransformContext):
    # Trained with its own quantizer: export its learned scales, whatever the specs say.
    return module.to_quant_linear


@register_handler(nn.Linear)
def _linear(name: str, lin: nn.Linear, ctx: TransformContext):
    b = ctx.specs["bits"](name, lin)
    if b is _NO_KEY:
        return "matched no key of bits"
    if b is None:
        return "bits=None (full precision)"
    _check_value("bits", name, b, SUPPORTED_BITS)
    a = ctx.specs["act_bits"](name, lin)
    a = 16 if a is None else a
    _check_value("act_bits", name, a, (8, 16))
    g = ctx.specs["group_size"](name, lin)
    w, n, k = lin.weight, lin.out_features, lin.in_features
    before = w.numel() * w.element_size()
    g = k if g is None or g == -1 else g
    if not isinstance(g, int) or isinstance(g, bool) or g < 1:
        raise ValueError(
            f"quantize_model: group_size for {name!r} must be a positive int, -1 or None, got {g!r}"
        )
    if name in ctx.direct_reads:
        return ctx.direct_reads[name]
    if type(lin).forward is not nn.Linear.forward:
        return f"{type(lin).__name__} overrides nn.Linear.forward"
    if not w.dtype.is_floating_point:
        return f"weight dtype {w.dtype} is not floating point"
    if w.device.type == "meta":
        return "weight is on the meta device (no values to quantize)"
    if id(w) in ctx.shared:
        return "weight is shared with another module (tied)"
    if n * k == 0:
        return "empty weight"
    if k % g:
        return f"in_features {k} not divisible by group_size {g}"
    if _quant_nbytes(n, k, b, g) >= before:
        return (
            f"too small: {b}-bit packed weight with group_size {g} takes "
            f"{_quant_nbytes(n, k, b, g)} bytes, not less than {before}"
        )
    if not torch.isfinite(w).all():
        return "weight has NaN or inf entries"
    return functools.partial(
        QuantLinear.from_linear,
        lin,
        bits=b,
        group_size=g,
        act_bits=a,
        symmetric=ctx.symmetric,
        clip_search=ctx.clip_search,
    )


# --------------------------------------------------------------------------- quantize_model
def quantize_model(
    model: nn.Module,
    bits=4,
    group_size=128,
    act_bits=16,
    symmetric: bool = False,
    clip_search: bool = False,
    skip=None,
) -> QuantizeReport:
    """Replace the model's ``nn.Linear`` layers by ``QuantLinear`` in place.

    Args:
        model: any module; its linear layers are converted where they are registered (a layer
            registered under several names is converted once and replaced everywhere).
        bits: 2, 3, 4, 8 or None (full precision), per layer as described in the module doc.
        group_size: a divisor of in_features, or None / -1 for per-channel; per layer likewise.
        act_bits: 16 (weight-only) or 8 (per-token int8 activations); per layer likewise.
        symmetric, clip_search: passed to :func:`~supernet_kernels.quant.quantize_weight`.
        skip: names / fnmatch patterns (a str or a list), or a callable (name, module) -> bool,
            of layers to leave in full precision.

    Layers that cannot be quantized are left as they are and listed in the report with the
    reason: in_features not divisible by group_size, a non-floating-point weight, a weight
    shared with another module, a layer whose weight or bias the model reads directly instead
    of calling it (``nn.MultiheadAttention``'s out_proj; timm BEiT / EVA / Swin V2 attention's
    ``F.linear(x, self.qkv.weight, ...)``, found by :mod:`supernet_kernels._direct_reads`),
    NaN / inf weights, or a layer too small for the packed form to save
    memory (scales and zero points outweigh the codes). ``FakeQuantLinear`` layers (from
    quantization-aware training) are exported with their own learned scales and configuration
    (``to_quant_linear()``), whatever ``bits`` / ``group_size`` / ``act_bits`` say.
    """
    sites = _linear_sites(model)
    names = [s[0] for s in sites.values()]
    ctx = TransformContext(
        specs={
            "bits": _Spec("bits", bits, names),
            "group_size": _Spec("group_size", group_size, names),
            "act_bits": _Spec("act_bits", act_bits, names),
        },
        symmetric=symmetric,
        clip_search=clip_search,
        direct_reads=direct_reads(model),
        shared=_shared_weight_ids(model),
    )
    skip_fn = _skip_fn(skip, names)
    report = QuantizeReport()
    todo = []

    for name, lin, places in sites.values():
        w = lin.weight
        before = w.numel() * w.element_size()
        report.weight_bytes_before += before
        handler = handler_for(lin)
        outcome = "matched skip" if skip_fn(name, lin) else handler(name, lin, ctx)
        if isinstance(outcome, str):
            report.skipped.append((name, outcome))
            report.weight_bytes_after += before
        else:
            todo.append((name, lin, places, outcome))

    # Every layer's settings were checked above: only now change the model.
    for name, lin, places, convert in todo:
        q = convert()
        q.train(lin.training)
        _replace(places, q)
        report.quantized.append((name, q.bits, q.group_size, q.act_bits))
        report.weight_bytes_after += q.weight_nbytes
    if todo:  # transformers' save_pretrained would reload these layers re-initialized
        from .supernet.hf import refuse_save_pretrained

        refuse_save_pretrained(model)
    return report


# --------------------------------------------------------------------------- save / load
def _quant_layers(model: nn.Module) -> dict[str, Any]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def save_quantized(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model.state_dict()`` to a safetensors file, with each QuantLinear's
    configuration as JSON in the header. Atomic: readers see the old file or the new one."""
    layers = {n: m.config() for n, m in _quant_layers(model).items()}
    if not layers:
        raise ValueError("save_quantized: the model has no QuantLinear layer (run quantize_model)")
    tensors = unshared(model.state_dict())
    meta = {
        _META_KEY: json.dumps(
            {"format": MODEL_FORMAT, "layers": layers, "keys": sorted(tensors)}, sort_keys=True
        )
    }
    return save_tensors(path, tensors, meta)


def _read_header(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """The layer metadata and {key: shape} of a save_quantized file, or a ValueError."""
    header, shapes = read_header(path, "load_quantized")
    if _META_KEY not in header:
        raise ValueError(
            f"load_quantized: {path} has no {_META_KEY!r} metadata; it was not written by "
            "save_quantized"
        )
    try:
        meta = json.loads(header[_META_KEY])
        if meta.get("format") != MODEL_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
        layers = meta["layers"]
        if not isinstance(layers, dict):
            raise ValueError("'layers' is not a mapping")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"load_quantized: {path} has corrupt metadata: {exc}") from exc
    return layers, shapes


def _int_field(cfg: dict, field: str, where: str):
    v = cfg.get(field)
    if field == "symmetric" or field == "bias":
        if not isinstance(v, bool):
            raise ValueError(f"{where}: corrupt metadata field {field}={v!r}")
        return v
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{where}: corrupt metadata field {field}={v!r}")
    return v


def load_quantized(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a :func:`save_quantized` file into ``model``, a float skeleton of the same
    architecture (or an already-quantized one): its ``nn.Linear`` layers named in the file are
    converted to ``QuantLinear`` with the recorded configuration, then every tensor is loaded
    (strictly). Returns the model.

    Raises ValueError for a truncated or corrupt file, or one saved from another model (layer
    names, sizes or state_dict keys that differ); the model is checked against the file before
    it is changed.
    """

    path = Path(path)
    layers, shapes = _read_header(path)

    # 1. Check every recorded layer against the skeleton before changing anything.
    plan = []
    for name, cfg in layers.items():
        where = f"load_quantized: {path} layer {name!r}"
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: corrupt metadata {cfg!r}")
        fields = ("in_features", "out_features", "bits", "group_size", "act_bits")
        c = {f: _int_field(cfg, f, where) for f in (*fields, "symmetric", "bias")}
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"{where}: the model has no module of that name; the file is from another model"
            ) from None
        if not isinstance(mod, nn.Linear | QuantLinear):
            raise ValueError(
                f"{where}: the model's module is a {type(mod).__name__}, not nn.Linear; the "
                "file is from another model"
            )
        sizes = (mod.in_features, mod.out_features, mod.bias is not None)
        want = (c["in_features"], c["out_features"], c["bias"])
        if sizes != want:
            raise ValueError(
                f"{where}: the model's layer has (in, out, bias) = {sizes}, the file {want}; the "
                "file is from another model"
            )
        if isinstance(mod, QuantLinear):
            have = mod.config()
            diff = [f"{f}={c[f]} (model has {have[f]})" for f in c if c[f] != have[f]]
            if diff:
                raise ValueError(
                    f"{where}: the model's QuantLinear has another configuration: "
                    + ", ".join(diff)
                    + "; load into a float skeleton instead"
                )
            plan.append((name, mod, None))
            continue
        try:
            q = QuantLinear(
                c["in_features"],
                c["out_features"],
                bits=c["bits"],
                group_size=c["group_size"],
                act_bits=c["act_bits"],
                symmetric=c["symmetric"],
                bias=c["bias"],
                device=mod.weight.device,
                dtype=mod.weight.dtype,
            )
        except ValueError as exc:
            raise ValueError(f"{where}: corrupt metadata: {exc}") from exc
        q.train(mod.training)
        plan.append((name, mod, q))

    expected: dict[str, tuple[int, ...] | None] = {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    for name, _mod, _q in plan:
        expected.pop(f"{name}.weight", None)
        for buf in ("packed", "scales", "zeros", "qmeta"):
            expected[f"{name}.{buf}"] = None  # checked by QuantLinear's loader
    check_shapes(expected, shapes, f"load_quantized: {path}")

    # 2. Convert (every place a converted module is registered), then load.
    swap = {id(mod): q for _, mod, q in plan if q is not None}
    places = [
        (pm, a, swap[id(child)])
        for _, pm in model.named_modules(remove_duplicate=False)
        for a, child in pm._modules.items()
        if id(child) in swap
    ]
    for pm, a, q in places:
        setattr(pm, a, q)

    tensors = load_tensors(path, "load_quantized")
    check_dtypes(tensors, model.state_dict(), f"load_quantized: {path}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"load_quantized: {path} does not fit the model: {exc}") from exc
    return model
