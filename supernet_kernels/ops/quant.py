"""Quantized matmul ops.

* ``torch.ops.supernet_kernels.quant_linear(x, packed, scales, zeros, bits, group_size,
  in_features, act_bits=16, bias=None)``: x times a packed 2/3/4/8-bit weight (the
  ``sk-pack-v1`` format of :mod:`supernet_kernels.quant.packing`). ``act_bits=16``: weight-only,
  the weight is dequantized in registers and multiplied in x's precision with fp32
  accumulation. ``act_bits=8``: x is quantized per token to int8 (scale max|x| / 127) and
  multiplied with the integer codes in int32, so W8A8 and W4A8 run on int8 tensor cores.
* ``torch.ops.supernet_kernels.int8_linear(x, weight, weight_scale, bias=None)``: W8A8 with a
  plain int8 weight (N, K) and a float32 per-channel scale (N,), for weights made by other tools.

* ``torch.ops.supernet_kernels.quant_linear_tiled(x, tiles, scales, zeros, bits, group_size,
  in_features, tile, bias=None)``: weight-only, on a weight held in the Triton kernel's tile
  layout only (what ``QuantLinear`` calls on the Triton backend; see nn.quant).

Gradients flow to x (straight through the activation quantizer for act_bits=8) and to bias,
so a frozen quantized base can carry trainable adapters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends, registry
from ..quant.packing import from_tiles, unpack, unpack_tiles
from ..quant.quantize import (
    QuantizedWeight,
    quantize_activations_fp8,
    quantize_activations_int8,
    validate_qweight,
)

QUANT_OP = "supernet_kernels::quant_linear"
INT8_OP = "supernet_kernels::int8_linear"
FP8_OP = "supernet_kernels::fp8_linear"
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_x_bias(x, bias, n: int, k: int, device, op: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"{op}: x must have shape (..., {k}) (in_features), got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{op}: x is on {x.device}, the weight is on {device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"{op}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dim() != 1 or bias.shape[0] != n:
            raise ValueError(f"{op}: bias must have shape ({n},), got {tuple(bias.shape)}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise TypeError(
                f"{op}: bias must match x's dtype and device ({x.dtype}, {x.device}), "
                f"got {bias.dtype} on {bias.device}"
            )


def check_quant_args(
    x, packed, scales, zeros, bits, group_size, in_features, act_bits, bias
) -> int:
    """Validate quant_linear's arguments; return N."""
    n = validate_qweight(packed, scales, zeros, bits, group_size, in_features, where="quant_linear")
    if act_bits not in (8, 16):
        raise ValueError(f"quant_linear: act_bits must be 8 or 16, got {act_bits!r}")
    _check_x_bias(x, bias, n, in_features, packed.device, "quant_linear")
    return n


def check_raw8_args(x, weight, weight_scale, bias, op="int8_linear", wdtype=torch.int8) -> int:
    """Validate int8_linear / fp8_linear arguments; return N."""
    for name, t in (("weight", weight), ("weight_scale", weight_scale)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    kind = str(wdtype).removeprefix("torch.")
    if weight.dtype != wdtype or weight.dim() != 2:
        raise TypeError(
            f"{op}: weight must be a 2-D {kind} tensor (N, K), got {weight.dtype} "
            f"{tuple(weight.shape)}"
        )
    n, k = weight.shape
    if weight_scale.dtype != torch.float32 or tuple(weight_scale.shape) != (n,):
        raise TypeError(
            f"{op}: weight_scale must be float32 of shape ({n},), got "
            f"{weight_scale.dtype} {tuple(weight_scale.shape)}"
        )
    if weight_scale.device != weight.device:
        raise ValueError(
            f"{op}: weight_scale is on {weight_scale.device}, weight on {weight.device}"
        )
    _check_x_bias(x, bias, n, k, weight.device, op)
    return n


def _dequantize(packed, scales, zeros, bits, group_size, k) -> torch.Tensor:
    n = packed.shape[0]
    q = unpack(packed, bits, k).to(torch.float32).view(n, k // group_size, group_size)
    return ((q - zeros[..., None]) * scales[..., None]).reshape(n, k)


def quant_linear_reference(
    x, packed, scales, zeros, bits, group_size, in_features, act_bits=16, bias=None
):
    """The pure-PyTorch definition (CPU path and test reference)."""
    w = _dequantize(packed, scales, zeros, bits, group_size, in_features)
    if act_bits == 16:
        return F.linear(x, w.to(x.dtype), bias)
    # y = xs * (xq @ w.T): the integer codes and the dequantized weight are exact in float64
    # (the CPU path); on a GPU float32 rounds each product sum once (relative error ~1e-7).
    xq, xs = quantize_activations_int8(x)
    acc_dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    y = (xq.to(acc_dtype) @ w.to(acc_dtype).T) * xs.to(acc_dtype)
    if bias is not None:
        y = y + bias.to(acc_dtype)
    return y.to(x.dtype)


def int8_linear_reference(x, weight, weight_scale, bias=None):
    """W8A8 definition: per-token int8 x, int8 weight, int32-exact products, fp32 scales."""
    xq, xs = quantize_activations_int8(x)
    acc_dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    y = (xq.to(acc_dtype) @ weight.to(acc_dtype).T) * xs.to(acc_dtype) * weight_scale.to(acc_dtype)
    if bias is not None:
        y = y + bias.to(acc_dtype)
    return y.to(x.dtype)


def _flat(x, k):
    m = x.numel() // k
    return x.reshape(m, k), m


def _quant_triton(x2, packed, scales, zeros, bits, group_size, k, act_bits, bias):
    if act_bits == 8:  # the A8 kernel: quantizer and int8 product in one launch
        from ..kernels import triton_quant_a8 as a8

        return a8.quant_linear_a8(x2, packed, scales, zeros, bits, group_size, k, 8, bias)
    from ..kernels import triton_quant as tq

    return tq.quant_linear(x2, packed, scales, zeros, bits, group_size, k, act_bits, bias)


def _quant_cuda(x2, packed, scales, zeros, bits, group_size, k, act_bits, bias):
    from ..quant import cuda_layout

    why = _no_act8_cuda(x2.device, x2.dtype, act_bits=act_bits, bits=bits, group_size=group_size,
                        k=k)  # fmt: skip
    if why:
        raise backends.BackendUnavailable(f"quant_linear: {why}; use backend 'triton'")
    try:  # the kernel's own layout, made on the first call for this weight (then cached)
        lay = cuda_layout.cached_layout(packed, scales, zeros, bits, group_size, k)
    except ValueError as e:
        raise backends.BackendUnavailable(f"quant_linear: {e}; use backend 'triton'") from None
    return torch.ops.supernet_kernels._quant_linear_cuda(
        x2, lay.codes, lay.params, bits, group_size, k, packed.shape[0], bias
    )


# ------------------------------------------------------------------ registered implementations
# Each has the op's signature; x may have any leading dims.


def _no_act8_cuda(device, dtype, *, act_bits=16, **shape):
    if act_bits == 8:
        return "the CUDA backend has no act_bits=8 kernel for packed weights yet"
    if {"bits", "group_size", "k"} <= shape.keys():
        from ..quant.cuda_layout import unsupported_reason

        return unsupported_reason(shape["bits"], shape["k"], shape["group_size"])
    return None


@registry.register("quant_linear", "torch", kernel=False, reference=True)
def _quant_torch(x, packed, scales, zeros, bits, group_size, in_features, act_bits=16, bias=None):
    """The pure-PyTorch definition (unpack to float32, multiply): the CPU path and oracle."""
    return quant_linear_reference(
        x, packed, scales, zeros, bits, group_size, in_features, act_bits, bias
    )


def _flat_call(impl_fn):
    def run(x, packed, scales, zeros, bits, group_size, in_features, act_bits=16, bias=None):
        x2, _ = _flat(x, in_features)
        y = impl_fn(x2, packed, scales, zeros, bits, group_size, in_features, act_bits, bias)
        return y.reshape(*x.shape[:-1], packed.shape[0])

    run.__doc__ = impl_fn.__doc__
    return run


registry.register("quant_linear", "triton", kernel=True, doc="our Triton kernels")(
    _flat_call(_quant_triton)
)
registry.register(
    "quant_linear", "cuda", kernel=True, supports=_no_act8_cuda, doc="our CUDA C++ kernels"
)(_flat_call(_quant_cuda))


@torch.library.custom_op(QUANT_OP, mutates_args=())
def _quant_linear_op(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    act_bits: int = 16,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    n = check_quant_args(x, packed, scales, zeros, bits, group_size, in_features, act_bits, bias)
    m = x.numel() // in_features
    impl = backends.select(
        "quant_linear", x.device, x.dtype, m=m, bits=bits, act_bits=act_bits,
        group_size=group_size, k=in_features, n=n,
    ).impl  # fmt: skip
    return impl.fn(x, packed, scales, zeros, bits, group_size, in_features, act_bits, bias)


@_quant_linear_op.register_fake
def _(x, packed, scales, zeros, bits, group_size, in_features, act_bits=16, bias=None):
    n = check_quant_args(x, packed, scales, zeros, bits, group_size, in_features, act_bits, bias)
    return x.new_empty((*x.shape[:-1], n))


def _quant_setup(ctx, inputs, output):
    x, packed, scales, zeros, bits, group_size, in_features, act_bits, bias = inputs
    ctx.meta = (bits, group_size, in_features)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(packed, scales, zeros)


def _quant_backward(ctx, grad):
    packed, scales, zeros = ctx.saved_tensors
    bits, group_size, k = ctx.meta
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        # Straight through the activation quantizer: d(x @ w.T)/dx = g @ w.
        w = _dequantize(packed, scales, zeros, bits, group_size, k).to(grad.dtype)
        grad_x = grad @ w
    if ctx.has_bias and ctx.needs_input_grad[8]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
    return grad_x, None, None, None, None, None, None, None, grad_bias


_quant_linear_op.register_autograd(_quant_backward, setup_context=_quant_setup)


# ------------------------------------------------------------------ the tile layout held alone
# QuantLinear on the Triton backend keeps only the tile layout of its weight (see
# quant.packing.to_tiles), not sk-pack-v1 beside it, and calls this op.

TILED_OP = "supernet_kernels::quant_linear_tiled"


def check_tiled_args(x, tiles, scales, zeros, bits, group_size, in_features, tile, bias) -> int:
    """Validate quant_linear_tiled's arguments; return N."""
    from ..kernels.triton_quant import tile_for
    from ..quant.packing import tile_codes

    op = "quant_linear_tiled"
    if bits not in (2, 3, 4, 8) or tile != tile_for(bits, group_size, in_features):
        raise ValueError(
            f"{op}: bits {bits!r}, group_size {group_size!r}, in_features {in_features!r} "
            f"have no tile layout of tile {tile!r}"
        )
    if not isinstance(tiles, torch.Tensor) or tiles.dtype != torch.int16 or tiles.dim() != 2:
        raise TypeError(f"{op}: tiles must be a 2-D int16 tensor (the tile layout)")
    n, width = tiles.shape[0], tile_codes(in_features, bits, tile)[1]
    if tiles.shape[1] != width:
        raise ValueError(f"{op}: tiles must have {width} int16 words per row, got {tiles.shape[1]}")
    groups = in_features // group_size
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t.dtype != torch.float32 or tuple(t.shape) != (n, groups) or t.device != tiles.device:
            raise ValueError(
                f"{op}: {name} must be float32 ({n}, {groups}) on {tiles.device}, got "
                f"{t.dtype} {tuple(t.shape)} on {t.device}"
            )
    _check_x_bias(x, bias, n, in_features, tiles.device, op)
    return n


@torch.library.custom_op(TILED_OP, mutates_args=())
def _quant_linear_tiled_op(
    x: torch.Tensor,
    tiles: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    in_features: int,
    tile: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    n = check_tiled_args(x, tiles, scales, zeros, bits, group_size, in_features, tile, bias)
    x2, _ = _flat(x, in_features)
    if (
        x.dtype != torch.float64
        and backends.unavailable_reason("triton", x.device, x.dtype) is None
    ):
        from ..kernels import triton_quant as tq

        sc, zc = scales.contiguous(), zeros.contiguous()
        y = tq.launch_tiled(x2, tiles, sc, zc, bias, n, in_features, group_size, bits, tile)
    else:  # no Triton here (CPU without the interpreter, float64): the reference
        packed = from_tiles(tiles, bits, in_features, tile)
        y = quant_linear_reference(
            x2, packed, scales, zeros, bits, group_size, in_features, 16, bias
        )
    return y.reshape(*x.shape[:-1], n)


@_quant_linear_tiled_op.register_fake
def _(x, tiles, scales, zeros, bits, group_size, in_features, tile, bias=None):
    n = check_tiled_args(x, tiles, scales, zeros, bits, group_size, in_features, tile, bias)
    return x.new_empty((*x.shape[:-1], n))


def _tiled_setup(ctx, inputs, output):
    x, tiles, scales, zeros, bits, group_size, in_features, tile, bias = inputs
    ctx.meta = (bits, group_size, in_features, tile)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(tiles, scales, zeros)


def _tiled_backward(ctx, grad):
    tiles, scales, zeros = ctx.saved_tensors
    bits, group_size, k, tile = ctx.meta
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        n = tiles.shape[0]
        q = unpack_tiles(tiles, bits, k, tile).to(torch.float32).view(n, k // group_size, -1)
        w = ((q - zeros[..., None]) * scales[..., None]).reshape(n, k)
        grad_x = grad @ w.to(grad.dtype)
    if ctx.has_bias and ctx.needs_input_grad[8]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
    return grad_x, None, None, None, None, None, None, None, grad_bias


_quant_linear_tiled_op.register_autograd(_tiled_backward, setup_context=_tiled_setup)


def _raw8_forward(op, x, weight, weight_scale, bias, *, check):
    """One forward for int8_linear and fp8_linear: the registry holds what differs (their
    reference, kernels, and the GPUs that can run them)."""
    n = check(x, weight, weight_scale, bias)
    m = x.numel() // weight.shape[1]
    impl = backends.select(op, x.device, x.dtype, m=m, k=weight.shape[1], n=n).impl
    return impl.fn(x, weight, weight_scale, bias)


def _raw8_kernel(kernel):
    def run(x, weight, weight_scale, bias=None):
        x2, _ = _flat(x, weight.shape[1])
        return kernel(x2, weight, weight_scale, bias).reshape(*x.shape[:-1], weight.shape[0])

    return run


def _triton_raw8(x2, weight, weight_scale, bias):
    from ..kernels import triton_quant_a8 as a8

    return a8.raw8_linear(x2, weight, weight_scale, bias)


registry.register(
    "int8_linear",
    "torch",
    kernel=False,
    reference=True,
    doc="The W8A8 definition (float64 on the CPU): the CPU path and oracle.",
)(  # fmt: skip
    lambda x, weight, weight_scale, bias=None: int8_linear_reference(x, weight, weight_scale, bias)
)
registry.register("int8_linear", "triton", kernel=True, doc="our Triton kernel")(
    _raw8_kernel(_triton_raw8)
)


@torch.library.custom_op(INT8_OP, mutates_args=())
def _int8_linear_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    return _raw8_forward("int8_linear", x, weight, weight_scale, bias, check=check_raw8_args)


@_int8_linear_op.register_fake
def _(x, weight, weight_scale, bias=None):
    n = check_raw8_args(x, weight, weight_scale, bias)
    return x.new_empty((*x.shape[:-1], n))


def _raw8_setup(ctx, inputs, output):
    x, weight, weight_scale, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(weight, weight_scale)


def _raw8_backward(ctx, grad):
    weight, weight_scale = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = grad @ (weight.to(torch.float32) * weight_scale[:, None]).to(grad.dtype)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
    return grad_x, None, None, grad_bias


_int8_linear_op.register_autograd(_raw8_backward, setup_context=_raw8_setup)


def quant_linear(
    x: torch.Tensor, qweight: QuantizedWeight, bias: torch.Tensor | None = None, act_bits: int = 16
) -> torch.Tensor:
    """``x @ qweight.dequantize().T + bias``, on the packed weight.

    Args:
        x: (..., K) float32, float16 or bfloat16 (float64 on the torch backend).
        qweight: a :class:`~supernet_kernels.quant.QuantizedWeight` (see ``quantize_weight``).
        bias: optional (N,) in x's dtype.
        act_bits: 16 for weight-only (A16); 8 for per-token dynamic int8 activations (A8).
    """
    if not isinstance(qweight, QuantizedWeight):
        raise TypeError(
            f"quant_linear: qweight must be a QuantizedWeight, got {type(qweight).__name__}"
        )
    return torch.ops.supernet_kernels.quant_linear(
        x,
        qweight.packed,
        qweight.scales,
        qweight.zeros,
        qweight.bits,
        qweight.group_size,
        qweight.in_features,
        act_bits,
        bias,
    )


def int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W8A8: x quantized per token to int8, times an int8 weight (N, K) with float32 per-channel
    scales (N,), int32 accumulation, output in x's dtype."""
    check_raw8_args(x, weight, weight_scale, bias)
    return torch.ops.supernet_kernels.int8_linear(x, weight, weight_scale, bias)


def fp8_linear_reference(x, weight, weight_scale, bias=None):
    """fp8 definition: per-token float8 e4m3 x (scale max|x| / 448), float8 e4m3 weight with
    per-row scales, products summed in float (fp32 on tensor cores)."""
    xq, xs = quantize_activations_fp8(x)
    acc_dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    y = (xq.to(acc_dtype) @ weight.to(acc_dtype).T) * xs.to(acc_dtype) * weight_scale.to(acc_dtype)
    if bias is not None:
        y = y + bias.to(acc_dtype)
    return y.to(x.dtype)


registry.register(
    "fp8_linear",
    "torch",
    kernel=False,
    reference=True,
    doc="The fp8 definition (float64 on the CPU): the CPU path and oracle.",
)(  # fmt: skip
    lambda x, weight, weight_scale, bias=None: fp8_linear_reference(x, weight, weight_scale, bias)
)
# float8 tensor cores: sm_89 (Ada) and newer.
registry.register(
    "fp8_linear", "triton", kernel=True, min_capability=(8, 9), doc="our Triton kernel"
)(_raw8_kernel(_triton_raw8))


def _check_fp8(x, weight, weight_scale, bias) -> int:
    return check_raw8_args(x, weight, weight_scale, bias, "fp8_linear", torch.float8_e4m3fn)


@torch.library.custom_op(FP8_OP, mutates_args=())
def _fp8_linear_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    return _raw8_forward("fp8_linear", x, weight, weight_scale, bias, check=_check_fp8)


@_fp8_linear_op.register_fake
def _(x, weight, weight_scale, bias=None):
    n = _check_fp8(x, weight, weight_scale, bias)
    return x.new_empty((*x.shape[:-1], n))


_fp8_linear_op.register_autograd(_raw8_backward, setup_context=_raw8_setup)


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp8 W8A8: x quantized per token to float8 e4m3, times a float8 e4m3 weight (N, K) with
    float32 per-row scales (N,) (see ``quantize_weight_fp8``); fp32 accumulation."""
    _check_fp8(x, weight, weight_scale, bias)
    return torch.ops.supernet_kernels.fp8_linear(x, weight, weight_scale, bias)
