"""``profile(model, example_input)``: params, MACs, BitOPs and weight bytes per layer, counted
without computing on the real weights.

How it counts
-------------
The forward runs once under :class:`torch._subclasses.FakeTensorMode` (shapes only: no
arithmetic, no memory for activations; the real weights are wrapped, never read) inside
:class:`torch.utils.flop_counter.FlopCounterMode`, which attributes each op's FLOPs to every
module running at that moment. Our custom ops are counted by the formulas of
:mod:`supernet_kernels.cost.formulas`. A model built on the meta device
(``with torch.device("meta"): ...``) works too: its inputs are made on the meta device.

* MACs = FLOPs / 2 (FlopCounterMode counts a multiply-add as 2 FLOPs; additions of biases,
  norms, softmax and the like are not counted, as in torch's counter).
* A *weight layer* is ``nn.Linear``, ``nn.Conv1d/2d/3d`` (and transposed), ``LowRankLinear``,
  ``ElasticLowRankLinear``, ``QuantLinear``, any module with a ``cost_bits()`` method (e.g.
  ``ElasticLinear``), or any other module that holds parameters itself, has no sub-module with
  parameters and runs counted ops. A weight layer's MACs are all the counted ops that run inside
  it; nested layers belong to the outermost one.
* Bits: ``QuantLinear`` -> (bits, act_bits); a module with ``cost_bits()`` -> its
  ``(w_bits, a_bits)``; every other layer -> (base_bits, base_bits). BitOPs = MACs * w_bits *
  a_bits.
* Everything counted outside weight layers (attention's q @ k^T and attn @ v, relative-position
  einsums, ...) is an activation x activation product: one row ``other (activation x
  activation)`` at base_bits x base_bits, with per-op totals in :attr:`Profile.other_ops`.
  ``base_bits`` is 16 by default (fp16 / bf16 inference); pass 32 for fp32.
* Fake-quantized activations (mixed-precision supernets, :mod:`supernet_kernels.recipes.mixed`):
  a weight layer with an ``input_quant`` child whose ``bits`` is below its a_bits counts at
  those bits; an attention module with an ``attn_quant`` child below 16 bits gets its own row
  ``"<name> (activation x activation)"``: every MAC counted inside it but outside its weight
  layers (q k^T, P v and SAM's relative-position products) at bits x bits.
* Params: a layer's parameters (the active slice for elastic layers, zero for layers in an
  inactive block, i.e. under a module whose ``active`` attribute is False). Parameters outside
  weight layers (norms, embeddings, position tables) form the row ``other parameters``.
* Weight bytes: actual storage of the layer's weight and bias (``QuantLinear``: packed codes +
  scales + zero points (+ bias); elastic layers: the active slice, at the active bits when the
  layer reports ``cost_bits()``; a module may give its own via ``active_weight_bytes()``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..nn.lowrank import ElasticLowRankLinear, LowRankLinear
from ..nn.quant import QuantLinear
from ..quant.packing import packed_width
from . import formulas  # noqa: F401  (registers the flop formulas)

OTHER_ACT = "other (activation x activation)"
OTHER_PARAMS = "other parameters"
_DENSE = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


@dataclass
class LayerCost:
    """One row of a :class:`Profile`."""

    name: str
    type: str
    params: int
    macs: int
    w_bits: int
    a_bits: int
    bitops: int
    weight_bytes: int
    active: bool = True


@dataclass
class Profile:
    """Cost of one forward pass: per-layer rows and totals (see the module docstring)."""

    layers: list[LayerCost]
    other_ops: dict[str, int] = field(default_factory=dict)
    base_bits: int = 16
    input_shapes: list[list[int]] = field(default_factory=list)
    config: Any = None

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    @property
    def total_bitops(self) -> int:
        return sum(r.bitops for r in self.layers)

    @property
    def total_weight_bytes(self) -> int:
        return sum(r.weight_bytes for r in self.layers)

    def layer(self, name: str) -> LayerCost:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"Profile: no layer named {name!r}")

    def to_dict(self) -> dict:
        """JSON-serializable: rows, per-op totals of the activation products, and totals."""
        return {
            "layers": [asdict(r) for r in self.layers],
            "other_ops": dict(self.other_ops),
            "base_bits": self.base_bits,
            "input_shapes": [list(s) for s in self.input_shapes],
            "config": _jsonable(self.config),
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "total_bitops": self.total_bitops,
            "total_weight_bytes": self.total_weight_bytes,
        }

    def __str__(self) -> str:
        head = ("layer", "type", "params", "MMACs", "W/A", "GBitOPs", "KiB")
        rows = [
            (
                r.name + ("" if r.active else " (inactive)"),
                r.type,
                f"{r.params:,}",
                f"{r.macs / 1e6:,.2f}",
                f"{r.w_bits}/{r.a_bits}",
                f"{r.bitops / 1e9:,.2f}",
                f"{r.weight_bytes / 1024:,.1f}",
            )
            for r in self.layers
        ]
        rows.append(
            (
                "total",
                "",
                f"{self.total_params:,}",
                f"{self.total_macs / 1e6:,.2f}",
                "",
                f"{self.total_bitops / 1e9:,.2f}",
                f"{self.total_weight_bytes / 1024:,.1f}",
            )
        )
        widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]

        def fmt(cells):
            first = str(cells[0]).ljust(widths[0])
            rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            return "  ".join([first, *rest])

        lines = [fmt(head), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows[:-1]]
        lines += ["  ".join("-" * w for w in widths), fmt(rows[-1])]
        if self.other_ops:
            ops = ", ".join(f"{k}: {v / 1e6:,.2f} MMACs" for k, v in self.other_ops.items())
            lines.append(
                f"activation x activation ops at {self.base_bits}x{self.base_bits} bits: {ops}"
            )
        return "\n".join(lines)


def _jsonable(obj):
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return repr(obj)


# --------------------------------------------------------------------------- layers
def _nbytes(t: torch.Tensor | None, numel: int | None = None) -> int:
    if t is None:
        return 0
    return (t.numel() if numel is None else numel) * t.element_size()


def _own_params(m: nn.Module) -> list[torch.Tensor]:
    return list(m.parameters(recurse=False))


def is_weight_layer(m: nn.Module, macs: int | None = None) -> bool:
    """Whether ``m`` is a weight layer (see the module docstring). ``macs`` is its counted MACs
    (needed only to recognise unknown leaf layers)."""
    if isinstance(m, (QuantLinear, LowRankLinear, ElasticLowRankLinear, *_DENSE)):
        return True
    if callable(getattr(m, "cost_bits", None)):
        return True
    if not macs or not _own_params(m):
        return False
    return not any(_own_params(c) for c in m.modules() if c is not m)


def _elastic_linear_bytes(m: nn.Module, w_bits: int) -> int:
    """Bytes of an ElasticLinear's active sub-layer as ``extract()`` would store it: a float
    slice (dense or factorized) at 16 bits, or a packed sk-pack-v1 weight with float32 scales
    and zero points (QuantLinear's layout) below 16 bits; plus the bias slice."""
    n, k, r = int(m.active_out), int(m.active_in), getattr(m, "active_rank", None)
    bias = getattr(m, "bias", None)
    nbytes = _nbytes(bias, n) if isinstance(bias, torch.Tensor) else 0
    if r is not None:
        return nbytes + math.ceil(r * (n + k) * w_bits / 8)
    if w_bits >= 16:
        return nbytes + math.ceil(n * k * w_bits / 8)
    g = m.quant_group_size(k) if callable(getattr(m, "quant_group_size", None)) else k
    return nbytes + n * packed_width(k, w_bits) * 4 + 2 * n * (k // g) * 4


def layer_cost(m: nn.Module, base_bits: int = 16) -> tuple[str, int, int, int, int]:
    """(type, params, w_bits, a_bits, weight_bytes) of a weight layer in its active state."""
    kind = type(m).__name__
    if isinstance(m, QuantLinear):
        params = m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        return (
            kind,
            params,
            m.bits,
            m.act_bits,
            _nbytes(m.packed) + _nbytes(m.scales) + _nbytes(m.zeros) + _nbytes(m.bias),
        )
    if isinstance(m, ElasticLowRankLinear):
        r, n, k = m.active_rank, m.active_out_features, m.active_in_features
        has_bias = m.bias is not None
        params = n * r + r * k + (n if has_bias else 0)
        nbytes = _nbytes(m.u, n * r) + _nbytes(m.v, r * k) + (_nbytes(m.bias, n) if has_bias else 0)
        return kind, params, base_bits, base_bits, nbytes
    if callable(getattr(m, "cost_bits", None)):
        w_bits, a_bits = (int(b) for b in m.cost_bits())
        if callable(getattr(m, "active_weight_params", None)):
            params = int(m.active_weight_params())
        else:
            params = sum(p.numel() for p in m.parameters())
        if callable(getattr(m, "active_weight_bytes", None)):
            nbytes = int(m.active_weight_bytes())
        elif hasattr(m, "active_out") and hasattr(m, "active_in"):
            nbytes = _elastic_linear_bytes(m, w_bits)
        else:
            nbytes = math.ceil(params * w_bits / 8)
        return kind, params, w_bits, a_bits, nbytes
    tensors = list(m.parameters())
    return (
        kind,
        sum(t.numel() for t in tensors),
        base_bits,
        base_bits,
        sum(_nbytes(t) for t in tensors),
    )


def _input_quant_bits(m: nn.Module, a_bits: int) -> int:
    """A layer's activation bits, lowered by an input fake quantizer it carries (a child
    ``input_quant`` with an int ``bits``, e.g. :class:`~supernet_kernels.quant.fake.
    LSQActQuantizer` attached by the mixed-precision recipe)."""
    q = m._modules.get("input_quant") if isinstance(m, nn.Module) else None
    bits = getattr(q, "bits", None)
    return min(a_bits, int(bits)) if isinstance(bits, int) else a_bits


def _attn_quant_bits(m: nn.Module) -> int | None:
    """The operand bits of an attention module with an ``attn_quant`` child below 16 bits."""
    q = m._modules.get("attn_quant")
    bits = getattr(q, "bits", None)
    return int(bits) if isinstance(bits, int) and bits < 16 else None


def _weight_layers_in(m: nn.Module, counter, root: str, fqn: str) -> list[nn.Module]:
    """The outermost weight layers under ``m`` (not ``m`` itself)."""
    out: list[nn.Module] = []
    taken: list[str] = []
    for cfqn, c in m.named_modules():
        if c is m or any(cfqn.startswith(t) for t in taken):
            continue
        key = _tracker_name(counter, c, f"{root}.{fqn}.{cfqn}" if fqn else f"{root}.{cfqn}")
        flops = sum(counter.get_flop_counts().get(key, {}).values())
        if is_weight_layer(c, flops // 2):
            out.append(c)
            taken.append(cfqn + ".")
    return out


# --------------------------------------------------------------------------- inputs
def _model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype]:
    device, dtype = None, torch.get_default_dtype()
    for p in model.parameters():
        device = p.device if device is None else device
        if p.is_floating_point():
            return p.device, p.dtype
    return device, dtype


def _is_shape(obj) -> bool:
    return isinstance(obj, torch.Size) or (
        isinstance(obj, (tuple, list))
        and len(obj) > 0
        and all(isinstance(d, int) and not isinstance(d, bool) for d in obj)
    )


def _split_input(example_input, device, dtype) -> tuple[tuple, dict]:
    """(args, kwargs) for the forward. Called inside FakeTensorMode, so a shape makes a fake
    tensor and real tensors become fake ones; all go to the model's device."""
    if _is_shape(example_input):
        args, kwargs = (torch.randn(*example_input, device=device, dtype=dtype),), {}
    elif isinstance(example_input, torch.Tensor):
        args, kwargs = (example_input,), {}
    elif isinstance(example_input, dict):
        args, kwargs = (), dict(example_input)
    elif isinstance(example_input, (tuple, list)):
        args, kwargs = tuple(example_input), {}
    else:
        raise TypeError(
            "profile: example_input must be a tensor, a tuple / dict of tensors, or a shape "
            f"tuple, got {type(example_input).__name__}"
        )
    if device is not None:

        def move(t):
            return t.to(device) if isinstance(t, torch.Tensor) and t.device != device else t

        args, kwargs = tree_map(move, (args, kwargs))
    return args, kwargs


def _shapes(args, kwargs) -> list[list[int]]:
    out = []

    def grab(t):
        if isinstance(t, torch.Tensor):
            out.append(list(t.shape))
        return t

    tree_map(grab, (args, kwargs))
    return out


# --------------------------------------------------------------------------- config
@contextlib.contextmanager
def _applied(model: nn.Module, config):
    """Apply a supernet config for the duration; restore the previous active config after."""
    if config is None:
        yield
        return
    if not callable(getattr(model, "set_active", None)):
        raise TypeError(
            f"profile: a config was given but {type(model).__name__} has no set_active(config); "
            "pass a Supernet (or profile the model as it is, config=None)"
        )
    previous = model.active_config() if callable(getattr(model, "active_config", None)) else None
    if previous is None:
        warnings.warn(
            f"profile: {type(model).__name__} has no active_config(); the config applied for "
            "profiling stays active afterwards",
            stacklevel=3,
        )
    model.set_active(config)
    try:
        yield
    finally:
        if previous is not None:
            model.set_active(previous)


# --------------------------------------------------------------------------- profile
def count_flops(model: nn.Module, example_input, record_inputs: tuple[nn.Module, ...] = ()):
    """Run ``model`` once under FakeTensorMode + FlopCounterMode; return (counter, input
    shapes, {id(module): its first input's shape} for ``record_inputs``). No real arithmetic
    is done."""
    from torch._subclasses import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    seen: dict[int, tuple[int, ...]] = {}

    def grab(module, args):
        if args and isinstance(args[0], torch.Tensor):
            seen.setdefault(id(module), tuple(args[0].shape))

    handles = [m.register_forward_pre_hook(grab) for m in record_inputs]
    device, dtype = _model_device_dtype(model)
    try:
        with (
            torch.no_grad(),
            FakeTensorMode(allow_non_fake_inputs=True),
            FlopCounterMode(display=False) as counter,
        ):
            args, kwargs = _split_input(example_input, device, dtype)
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return counter, _shapes(args, kwargs), seen


def _tracker_name(counter, module: nn.Module, fallback: str) -> str:
    known = getattr(getattr(counter, "mod_tracker", None), "_known_modules", None)
    if known is not None:
        try:
            return known.get(module, fallback)
        except TypeError:
            pass
    return fallback


def profile(model: nn.Module, example_input, config=None, base_bits: int = 16) -> Profile:
    """Params, MACs, BitOPs and weight bytes of ``model``'s forward on ``example_input``.

    Args:
        model: any ``nn.Module`` (a timm / segment-anything model, a quantized or low-rank
            model, a Supernet). It may live on CPU, CUDA or the meta device.
        example_input: a tensor, a tuple (positional) or dict (keyword) of tensors, or a shape
            tuple such as ``(1, 3, 224, 224)`` meaning a random tensor of that shape in the
            model's dtype. Only shapes matter: nothing is computed.
        config: a supernet configuration; applied with ``model.set_active(config)`` for the
            count, and the previous ``model.active_config()`` restored afterwards.
        base_bits: precision of float layers and of activation x activation ops (16 or 32).
    """
    if base_bits not in (8, 16, 32):
        raise ValueError(f"profile: base_bits must be 16 or 32 (or 8), got {base_bits!r}")
    with _applied(model, config):
        # Layers that know their deployable cost (ElasticLinear.cost_macs: a high rank runs as
        # one dense weight, LoRA merges away) report it from their input shape; the forward's
        # own ops (the u @ v product formed once per call, the adapters) are not deploy cost.
        declared = tuple(m for m in model.modules() if callable(getattr(m, "cost_macs", None)))
        counter, shapes, inputs = count_flops(model, example_input, declared)
        counts = counter.get_flop_counts()
        root = type(model).__name__
        rows: list[LayerCost] = []
        layer_ops: dict[str, int] = {}
        owned: set[int] = set()
        inactive: list[str] = []
        taken: list[str] = []
        for fqn, m in model.named_modules(remove_duplicate=True):
            if fqn and getattr(m, "active", True) is False:
                inactive.append(fqn + ".")
            elif not fqn and getattr(m, "active", True) is False:
                inactive.append("")
            if any(fqn.startswith(t) for t in taken):
                continue  # inside a weight layer already counted
            key = _tracker_name(counter, m, f"{root}.{fqn}" if fqn else root)
            ops = counts.get(key, {})
            flops = sum(ops.values())
            if not is_weight_layer(m, flops // 2):
                continue
            taken.append(fqn + "." if fqn else "")
            owned.update(id(p) for p in m.parameters())
            for op, f in ops.items():
                layer_ops[str(op)] = layer_ops.get(str(op), 0) + f
            kind, params, w_bits, a_bits, nbytes = layer_cost(m, base_bits)
            a_bits = _input_quant_bits(m, a_bits)
            active = not any((fqn + ".").startswith(p) for p in inactive)
            if not active:
                params = nbytes = 0
            macs = flops // 2
            if id(m) in inputs:
                macs = int(m.cost_macs(inputs[id(m)]))
            rows.append(
                LayerCost(
                    fqn or root,
                    kind,
                    params,
                    macs,
                    w_bits,
                    a_bits,
                    macs * w_bits * a_bits,
                    nbytes,
                    active,
                )
            )
        # Parameters outside weight layers (norms, embeddings, position tables).
        other_params = other_bytes = 0
        for fqn, p in model.named_parameters(remove_duplicate=True):
            if id(p) in owned or any(fqn.startswith(pre) for pre in inactive):
                continue
            other_params += p.numel()
            other_bytes += _nbytes(p)
        # Attention modules with quantized matmul operands (``attn_quant``): their own
        # activation x activation MACs (everything counted inside them but outside their
        # weight layers) at the quantizer's bits, one row each.
        for fqn, m in model.named_modules(remove_duplicate=True):
            bits = _attn_quant_bits(m)
            if bits is None or any((fqn + ".").startswith(p) for p in inactive):
                continue
            key = _tracker_name(counter, m, f"{root}.{fqn}" if fqn else root)
            own = dict(counts.get(key, {}))
            for c in _weight_layers_in(m, counter, root, fqn):
                ckey = _tracker_name(counter, c, "")
                for op, f in counts.get(ckey, {}).items():
                    own[op] = own.get(op, 0) - f
            macs = sum(max(f, 0) for f in own.values()) // 2
            if not macs:
                continue
            for op, f in own.items():
                if f > 0:
                    layer_ops[str(op)] = layer_ops.get(str(op), 0) + f
            rows.append(
                LayerCost(
                    f"{fqn} (activation x activation)",
                    "activation",
                    0,
                    macs,
                    bits,
                    bits,
                    macs * bits * bits,
                    0,
                )
            )
        # Counted ops outside weight layers: activation x activation products.
        other_ops: dict[str, int] = {}
        for op, f in counts.get("Global", {}).items():
            rest = f - layer_ops.get(str(op), 0)
            if rest > 0:
                other_ops[str(op)] = rest // 2
        other_macs = sum(other_ops.values())
        if other_macs:
            rows.append(
                LayerCost(
                    OTHER_ACT,
                    "activation",
                    0,
                    other_macs,
                    base_bits,
                    base_bits,
                    other_macs * base_bits * base_bits,
                    0,
                )
            )
        if other_params:
            rows.append(
                LayerCost(
                    OTHER_PARAMS,
                    "parameters",
                    other_params,
                    0,
                    base_bits,
                    base_bits,
                    0,
                    other_bytes,
                )
            )
        cfg = config
        if cfg is None and callable(getattr(model, "active_config", None)):
            with contextlib.suppress(Exception):
                cfg = model.active_config()
    return Profile(rows, other_ops, base_bits, shapes, cfg)
