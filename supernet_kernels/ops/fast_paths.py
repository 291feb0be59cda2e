"""Torch's own fast paths, registered as implementations of our ops (no verification needed).

* ``torch_dequant``: dequantize the weight in the activation dtype (one pass), then cuBLAS.
* ``torch_dense``: the dense-equivalent path: the dense weight (dequantized, or the product of
  the low-rank factors) is made once, cached beside the weight, and every call is one cuBLAS
  GEMM: the dense layer's time, and its memory. ``auto`` falls back to it where nothing
  compressed is within 1.10x of the dense layer. Activations still go through the op's
  quantizer where the op has one (int8/fp8, act_bits=8): every path computes the op's
  definition (one elementwise pass more than the dense layer).
* ``torch_int4pack``: torch's int4 kernel (``_weight_int4pack_mm``), the weight converted to its
  layout once (cached): bits 4, act_bits 16, group size 32..256, N % 16, K % 32; on CUDA
  bfloat16 only.
* ``torch_int_mm``: ``torch._int_mm`` for int8 (cuBLASLt needs M > 16, K and N multiples of 8).
* ``torch_scaled_mm``: ``torch._scaled_mm`` with row-wise scales for fp8 (sm_89+, K and N
  multiples of 16).
* ``torch_two_gemm``: low rank as two cuBLAS GEMMs on the slices (what the reference computes;
  registered apart because auto never runs a reference on a GPU).
* ``torch_sdpa``: ``F.scaled_dot_product_attention`` with SAM's relative-position term (and any
  bias) as an additive mask (B, nH, Tq, Tk) in q's dtype. The op form must also return the
  log-sum-exp for its backward, which SDPA does not give, so it computes that from the scores;
  :func:`supernet_kernels.ops.attention` calls SDPA directly and needs no log-sum-exp. It is
  attention's dense-equivalent path: what the uncompressed model computes, done by torch.

The caches hold one converted tensor per (weight, dtype, slice) and are dropped with the weight
(a weak reference); a weight changed in place (its version counter moved) is converted again.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from .. import registry
from ..quant.packing import unpack
from ..quant.quantize import quantize_activations_fp8, quantize_activations_int8
from . import attention as _att
from . import lowrank as _lr
from . import quant as _q

# id(weight) -> (weak reference to it, {key: (stamp, value)}); keyed by id because a tensor's
# == is elementwise (a WeakKeyDictionary would compare tensors).
_CACHE: dict[int, tuple[weakref.ref, dict]] = {}


def _stamp(*tensors) -> tuple:
    out = []
    for t in tensors:
        try:
            version = t._version
        except RuntimeError:  # inference tensors keep no version counter
            version = -1
        out.append((t.data_ptr(), tuple(t.shape), tuple(t.stride()), version))
    return tuple(out)


def _cached(primary: torch.Tensor, key: tuple, depends: tuple, make):
    """``make()``, kept beside ``primary`` until it or a tensor in ``depends`` changes."""
    stamp = _stamp(primary, *depends)
    held = _CACHE.get(id(primary))
    slot = held[1] if held is not None and held[0]() is primary else None
    if slot is not None and key in slot and slot[key][0] == stamp:
        return slot[key][1]
    value = make()
    capturing = primary.is_cuda and torch.cuda.is_current_stream_capturing()
    if not capturing:  # a tensor made inside a CUDA graph capture lives in the graph's pool
        if slot is None:
            i = id(primary)
            slot = {}
            _CACHE[i] = (weakref.ref(primary, lambda _, i=i: _CACHE.pop(i, None)), slot)
        slot[key] = (stamp, value)
    return value


def clear_cache() -> None:
    _CACHE.clear()


def _linear(x, w, bias):
    return F.linear(x, w, bias)


# ------------------------------------------------------------------ quant_linear


def _dequantize_as(packed, scales, zeros, bits, group_size, k, dtype):
    """The weight (N, K) in ``dtype``: codes, zeros and scales in that dtype, one pass."""
    n = packed.shape[0]
    q = unpack(packed, bits, k).to(dtype).view(n, k // group_size, group_size)
    return ((q - zeros.to(dtype)[..., None]) * scales.to(dtype)[..., None]).reshape(n, k)


def _act8(x):
    """x through the per-token int8 quantizer, back in x's dtype (the op's act_bits=8)."""
    xq, xs = quantize_activations_int8(x)
    return (xq.to(torch.float32) * xs).to(x.dtype)


def _int4_supports(device, dtype, *, bits=4, act_bits=16, group_size=128, k=0, n=0, **_):
    if bits != 4 or act_bits != 16:
        return "torch's int4 kernel takes 4-bit weights and 16-bit activations"
    if group_size not in (32, 64, 128, 256):
        return f"torch's int4 kernel takes group sizes 32, 64, 128, 256, got {group_size}"
    if k % 32:
        return f"torch's int4 kernel needs in_features divisible by 32, got {k}"
    if n % 16:  # the CPU layout conversion demands it; the CUDA one 8 (kept to one rule)
        return f"torch's int4 kernel needs out_features divisible by 16, got {n}"
    if device.type == "cuda":
        if dtype != torch.bfloat16:
            return f"torch's CUDA int4 kernel takes bfloat16 activations, got {dtype}"
    elif device.type != "cpu":
        return f"torch's int4 kernel does not run on {device.type}"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"torch's int4 kernel takes float32/float16/bfloat16, got {dtype}"
    return None


def _inner_k_tiles(k: int) -> int:
    return 8 if k % 128 == 0 else 4 if k % 64 == 0 else 2


def _int4_weight(packed, scales, zeros, group_size, k, dtype, device_type):
    """(weight in torch's int4 layout, scales_and_zeros (K/g, N, 2)), made once.

    torch's kernel computes w = (q - 8) * scale + zero; ours is w = (q - z) * s, so its zero
    is (8 - z) * s."""

    def make():
        codes = unpack(packed, 4, k).to(torch.int32)  # (N, K) in 0..15
        if device_type == "cpu":
            w = torch._convert_weight_to_int4pack_for_cpu(codes, _inner_k_tiles(k))
        else:
            pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
            w = torch._convert_weight_to_int4pack(pairs, _inner_k_tiles(k))
        s = scales.to(torch.float32)
        sz = torch.stack([s, (8.0 - zeros.to(torch.float32)) * s], dim=-1)  # (N, K/g, 2)
        return w, sz.transpose(0, 1).contiguous().to(dtype)

    return _cached(packed, ("int4pack", dtype, group_size), (scales, zeros), make)


@registry.register(
    "quant_linear", "torch_int4pack", kernel=False, supports=_int4_supports, fallback=0
)
def _quant_int4pack(
    x, packed, scales, zeros, bits, group_size, in_features, act_bits=16, bias=None
):  # noqa: E501
    """torch's int4 weight-only kernel (_weight_int4pack_mm), weight converted once."""
    w, sz = _int4_weight(packed, scales, zeros, group_size, in_features, x.dtype, x.device.type)
    x2 = x.reshape(-1, in_features)
    if x.device.type == "cpu":
        y = torch._weight_int4pack_mm_for_cpu(x2.contiguous(), w, group_size, sz)
    else:
        y = torch._weight_int4pack_mm(x2.contiguous(), w, group_size, sz)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], packed.shape[0])


@registry.register("quant_linear", "torch_dequant", kernel=False)
def _quant_dequant(x, packed, scales, zeros, bits, group_size, in_features, act_bits=16, bias=None):  # noqa: E501
    """Dequantize in x's dtype (one pass), then cuBLAS."""
    w = _dequantize_as(packed, scales, zeros, bits, group_size, in_features, x.dtype)
    return _linear(_act8(x) if act_bits == 8 else x, w, bias)


@registry.register("quant_linear", "torch_dense", kernel=False, dense_equivalent=True, fallback=1)
def _quant_dense(x, packed, scales, zeros, bits, group_size, in_features, act_bits=16, bias=None):
    """The dense-equivalent path: the weight dequantized once (cached), then cuBLAS."""
    w = _cached(
        packed, ("dense", x.dtype), (scales, zeros),
        lambda: _q._dequantize(packed, scales, zeros, bits, group_size, in_features).to(x.dtype),
    )  # fmt: skip
    return _linear(_act8(x) if act_bits == 8 else x, w, bias)


# ------------------------------------------------------------------ int8_linear / fp8_linear


def _int_mm_supports(device, dtype, *, m=0, k=0, n=0, **_):
    if m <= 16 or k % 8 or n % 8:
        return f"torch._int_mm needs M > 16 and K, N multiples of 8 (M={m}, K={k}, N={n})"
    return None


@registry.register(
    "int8_linear", "torch_int_mm", kernel=False, supports=_int_mm_supports, fallback=0
)
def _int8_int_mm(x, weight, weight_scale, bias=None):
    """torch._int_mm (int8 x int8 -> int32 on cuBLASLt), scales applied after."""
    x2 = x.reshape(-1, weight.shape[1])
    xq, xs = quantize_activations_int8(x2)
    acc = torch._int_mm(xq.contiguous(), weight.t())
    y = acc.to(torch.float32) * xs.to(torch.float32) * weight_scale
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def _scaled_mm_supports(device, dtype, *, k=0, n=0, **_):
    if k % 16 or n % 16:
        return f"torch._scaled_mm needs K and N multiples of 16 (K={k}, N={n})"
    return None


@registry.register(
    "fp8_linear", "torch_scaled_mm", kernel=False, supports=_scaled_mm_supports,
    min_capability=(8, 9), fallback=0,
)  # fmt: skip
def _fp8_scaled_mm(x, weight, weight_scale, bias=None):
    """torch._scaled_mm with row-wise scales (fp8 tensor cores, sm_89+).

    Row-wise scaling writes bfloat16 (cuBLASLt); the fp8 inputs carry ~2^-4 relative error, so
    the bfloat16 rounding (2^-9) before the cast to x's dtype does not show."""
    x2 = x.reshape(-1, weight.shape[1])
    xq, xs = quantize_activations_fp8(x2)
    y = torch._scaled_mm(
        xq.contiguous(), weight.t(), scale_a=xs.to(torch.float32).reshape(-1, 1).contiguous(),
        scale_b=weight_scale.reshape(1, -1).contiguous(), out_dtype=torch.bfloat16,
    )  # fmt: skip
    y = y.to(x.dtype)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _raw8_dequant(quantize):
    def run(x, weight, weight_scale, bias=None):
        xq, xs = quantize(x)
        xd = (xq.to(torch.float32) * xs).to(x.dtype)
        w = (weight.to(torch.float32) * weight_scale[:, None]).to(x.dtype)
        return _linear(xd, w, bias)

    run.__doc__ = "Activations through the op's quantizer, the weight dequantized, then cuBLAS."
    return run


def _raw8_dense(quantize):
    def run(x, weight, weight_scale, bias=None):
        w = _cached(
            weight, ("dense", x.dtype), (weight_scale,),
            lambda: (weight.to(torch.float32) * weight_scale[:, None]).to(x.dtype),
        )  # fmt: skip
        xq, xs = quantize(x)
        return _linear((xq.to(torch.float32) * xs).to(x.dtype), w, bias)

    run.__doc__ = "The dense-equivalent path: the weight dequantized once (cached), then cuBLAS."
    return run


registry.register("int8_linear", "torch_dequant", kernel=False)(
    _raw8_dequant(quantize_activations_int8)
)
registry.register("int8_linear", "torch_dense", kernel=False, dense_equivalent=True, fallback=1)(
    _raw8_dense(quantize_activations_int8)
)
registry.register("fp8_linear", "torch_dequant", kernel=False)(
    _raw8_dequant(quantize_activations_fp8)
)
registry.register("fp8_linear", "torch_dense", kernel=False, dense_equivalent=True, fallback=1)(
    _raw8_dense(quantize_activations_fp8)
)


# ------------------------------------------------------------------ lowrank_linear


@registry.register("lowrank_linear", "torch_two_gemm", kernel=False)
def _lowrank_two_gemm(x, u, v, rank, out_features=None, bias=None):
    """Two cuBLAS GEMMs on the slices (the definition's own computation, as a GPU path)."""
    return _lr.lowrank_linear_reference(x, u, v, rank, out_features, bias)


@registry.register("lowrank_linear", "torch_dense", kernel=False, dense_equivalent=True, fallback=1)
def _lowrank_dense(x, u, v, rank, out_features=None, bias=None):
    """The dense-equivalent path: W = u[:n, :rank] @ v[:rank] made once (cached), one GEMM."""
    n = u.shape[0] if out_features is None else out_features

    def make():
        w = u[:n, :rank].to(torch.float32) @ v[:rank].to(torch.float32)
        return w.to(x.dtype)

    w = _cached(u, ("dense", x.dtype, n, rank), (v,), make)
    return _linear(x, w, bias[:n] if bias is not None else None)


# ------------------------------------------------------------------ attention


def sdpa_mask(q, rel_h, rel_w, bias):
    """SAM's decomposed rel-pos term and the additive bias as one (B, nH, Tq, Tk) mask in q's
    dtype (None without either)."""
    mask = None
    if rel_h is not None:
        B, nH, T, H = rel_h.shape
        W = rel_w.shape[-1]
        mask = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, nH, T, H * W)
    if bias is not None:
        B = q.shape[0]
        G = bias.shape[0]
        b = bias.unsqueeze(0).expand(B // G, *bias.shape).reshape(B, *bias.shape[1:])
        mask = b if mask is None else mask + b
    return None if mask is None else mask.to(q.dtype)


def sdpa_attention(q, k, v, rel_h, rel_w, scale, bias=None):
    """F.scaled_dot_product_attention with the additive mask (differentiable by autograd)."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=sdpa_mask(q, rel_h, rel_w, bias), scale=float(scale)
    )


@registry.register("attention", "torch_sdpa", kernel=False, fallback=0, dense_equivalent=True)
def _attention_sdpa(q, k, v, rel_h, rel_w, scale, bias=None):
    """torch's SDPA with the rel-pos term (and bias) as an additive mask."""
    out = sdpa_attention(q, k, v, rel_h, rel_w, scale, bias)
    acc = torch.promote_types(q.dtype, torch.float32)
    lse = torch.logsumexp(_att._scores(q, k, rel_h, rel_w, scale, bias, acc), dim=-1)
    return out, lse
