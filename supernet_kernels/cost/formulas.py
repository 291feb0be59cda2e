"""FLOP, byte and BitOPs formulas of our ops: the one home of these counts (the cost model,
the benchmarks and their reports all read them here).

Importing this module (done by ``import supernet_kernels.cost``, not by ``import
supernet_kernels``) teaches :class:`torch.utils.flop_counter.FlopCounterMode` to count:

* ``supernet_kernels::lowrank_linear``: ``2 * M * rank * (K + n)`` (x @ v[:rank].T is
  M x K x rank, then @ u[:n, :rank].T is M x rank x n), with M the number of rows of x.
* ``supernet_kernels::quant_linear``, ``int8_linear``, ``fp8_linear``: ``2 * M * N * K``, as a
  dense matmul of the same shape (the weight's bit width changes BitOPs, not MACs).
* ``supernet_kernels::attention`` (SAM attention with decomposed relative-position bias):
  q @ k^T plus attn @ v, as torch counts SDPA (adding the bias is not counted).
* ``aten::_scaled_dot_product_flash_attention_for_cpu``: the CPU kernel of
  ``F.scaled_dot_product_attention``, which torch's counter does not know (it would count
  attention as zero on CPU while counting it on CUDA and meta); same formula as torch's for the
  CUDA SDPA kernels (q @ k^T plus attn @ v).

FLOPs count a multiply-add as 2, as FlopCounterMode does; MACs = FLOPs / 2. Biases, the
dequantization of packed weights and activation quantization are not counted, as torch does not
count the bias of ``addmm``.

The byte formulas below count an op's minimal traffic: every operand read once and the output
written once, at the sizes the op's inputs have (sk-pack-v1 for packed weights). With
:func:`per_call_roofline_us` they give the per-call roofline the benchmarks report: the fixed
cost of one launch plus the larger of the bytes at the copy ceiling and the FLOPs at the
tensor-core peak (the constants are measured per GPU; benchmarks/census_model.py holds them).
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

# Make sure torch.ops.supernet_kernels.* exist (registering them is what ops/ does on import).
from .. import ops as _ops  # noqa: F401


def _rows(x_shape) -> int:
    return math.prod(x_shape[:-1])


def lowrank_linear_flop(
    x_shape, u_shape, v_shape, rank, out_features=None, bias=None, *, out_shape=None, **kwargs
) -> int:
    """2 * M * rank * (K + n) for ``lowrank_linear(x, u, v, rank, out_features, bias)``."""
    n = u_shape[0] if out_features is None else out_features
    return 2 * _rows(x_shape) * rank * (x_shape[-1] + n)


def quant_linear_flop(
    x_shape,
    packed_shape,
    scales_shape,
    zeros_shape,
    bits,
    group_size,
    in_features,
    act_bits=16,
    bias=None,
    *,
    out_shape=None,
    **kwargs,
) -> int:
    """2 * M * N * K for ``quant_linear``: a dense matmul of the unpacked weight's shape."""
    return 2 * _rows(x_shape) * packed_shape[0] * in_features


def raw8_linear_flop(x_shape, w_shape, scale_shape, bias=None, *, out_shape=None, **kwargs) -> int:
    """2 * M * N * K for ``int8_linear`` / ``fp8_linear`` with weight (N, K)."""
    return 2 * _rows(x_shape) * w_shape[0] * w_shape[1]


def cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """q @ k^T and attn @ v, as torch counts its CUDA SDPA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _register(packet, formula) -> None:
    if packet not in flop_registry:  # idempotent (module reloads, or torch adding it later)
        register_flop_formula(packet)(formula)


_sk = torch.ops.supernet_kernels
FORMULAS = {
    _sk.lowrank_linear: lowrank_linear_flop,
    _sk.quant_linear: quant_linear_flop,
    _sk.int8_linear: raw8_linear_flop,
    _sk.fp8_linear: raw8_linear_flop,
}
if hasattr(_sk, "attention"):
    FORMULAS[_sk.attention] = cpu_sdpa_flop  # (q, k, v, rel_h, rel_w, scale): same count
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa_flop

for _packet, _formula in FORMULAS.items():
    _register(_packet, _formula)


# --------------------------------------------------------------------------- benchmark counts
# Plain functions of shapes (keyword-only, so a bits / group mix-up cannot pass silently).


def matmul_flops(*, m: int, k: int, n: int) -> int:
    """2 * M * K * N: a dense (M, K) @ (K, N) matmul, multiply-add = 2."""
    return 2 * m * k * n


def dense_bytes(*, m: int, k: int, n: int, elem: int, bias: bool = False) -> int:
    """F.linear: weight + x read, y written (+ bias), all ``elem`` bytes per element."""
    return elem * (k * n + m * k + m * n + (n if bias else 0))


def lowrank_flops(*, m: int, k: int, n: int, rank: int) -> int:
    """The sliced low-rank linear: x @ v[:r].T then @ u[:n, :r].T (as lowrank_linear_flop)."""
    return 2 * m * rank * (k + n)


def lowrank_bytes(*, m: int, k: int, n: int, rank: int, elem: int, bias: bool) -> int:
    """x read, y written, the used slices of v and u, bias. The (M, r) intermediate is not
    counted: a fused kernel keeps it on chip."""
    return elem * (m * k + m * n + rank * k + n * rank + (n if bias else 0))


def lowrank_flops_ratio(*, k: int, n: int, rank: int) -> float:
    """Dense FLOPs / low-rank FLOPs: the best speedup a compute-bound kernel could get."""
    return k * n / (rank * (k + n))


def packed_width(k: int, bits: int) -> int:
    """int32 words per row in sk-pack-v1 (32 // bits codes per word; 3-bit: 10 per word)."""
    return -(-k // (32 // bits))


def quant_weight_bytes(*, k: int, n: int, bits: int, group_size: int) -> int:
    """sk-pack-v1: packed int32 codes + float32 scales and zeros (N x K/G each)."""
    return 4 * n * packed_width(k, bits) + 2 * 4 * n * (k // group_size)


def quant_bytes(*, m: int, k: int, n: int, bits: int, group_size: int, elem: int) -> int:
    """quant_linear: packed weight + scales/zeros + x read + y written. x counts at its own
    dtype for act_bits=8 too (the kernel quantizes it on the fly)."""
    return quant_weight_bytes(k=k, n=n, bits=bits, group_size=group_size) + elem * m * (k + n)


def int8_bytes(*, m: int, k: int, n: int, elem: int) -> int:
    """int8_linear: int8 weight + float32 per-channel scale + x + y."""
    return n * k + 4 * n + elem * m * (k + n)


def nominal_bytes(*, m: int, k: int, n: int, bits: int, group_size: int | None, elem: int) -> int:
    """A peer's weight at its nominal size (bits/8 per weight + fp16 scale and zero per group),
    x and y: what torch's int4, bitsandbytes and gemlite read and write."""
    meta = 2 * 2 * n * (k // group_size) if group_size else 0
    return n * k * bits // 8 + meta + elem * m * (k + n)


def bitops(*, m: int, k: int, n: int, w_bits: int, a_bits: int) -> int:
    """M * N * K multiply-adds at ``w_bits`` x ``a_bits``."""
    return m * n * k * w_bits * a_bits


def bitops_ratio(*, w_bits: int, a_bits: int) -> float:
    """fp16 BitOPs / these BitOPs: the speedup a bit-serial (BitOPs-bound) machine would give."""
    return 16 * 16 / (w_bits * a_bits)


def attention_flops(*, b: int, h: int, t: int, d: int, pass_: str = "fwd") -> int:
    """QK^T and PV: 4 B H T^2 d forward; backward 10 B H T^2 d (recomputed QK^T, dV, dP, dQ,
    dK: five T x T x d matmuls); "fwd_bwd" their sum. The bias's O(T^2) adds are not counted."""
    f = 4 * b * h * t * t * d
    return {"fwd": f, "bwd": f * 10 // 4, "fwd_bwd": f * 14 // 4}[pass_]


def attention_bytes(*, b: int, h: int, t: int, d: int, elem: int, rel: bool) -> int:
    """Fused attention: q, k, v read, o written (+ the decomposed rel-pos terms, T x grid
    each for rel_h and rel_w); the T x T scores stay on chip."""
    grid = math.isqrt(t)
    return elem * b * h * (4 * t * d + (2 * t * grid if rel else 0))


def raw8_gemm_bytes(*, m: int, k: int, n: int, out_elem: int) -> int:
    """A bare 8-bit GEMM (torch._int_mm, _scaled_mm) on pre-quantized x: both 8-bit operands
    read, the output written at ``out_elem`` bytes (4: int32)."""
    return n * k + m * k + out_elem * m * n


def nf4_bytes(*, m: int, k: int, n: int, elem: int, blocksize: int = 64) -> int:
    """bitsandbytes nf4: 4-bit codes, one fp32 absmax per ``blocksize`` weights, x and y."""
    return nominal_bytes(m=m, k=k, n=n, bits=4, group_size=None, elem=elem) + 4 * n * k // blocksize


def mlp_block_launches(
    variant: str, *, m: int, k: int, h: int, rank: int, elem: int = 2
) -> list[tuple[int, int]]:
    """(bytes, FLOPs) of each launch of the ViT MLP block fc2(GELU(fc1(x))), K -> H -> K:
    ``dense`` (fc1, GELU, fc2: three kernels, the hidden activations written and read twice),
    ``ours`` (the fused low-rank op, one launch: the hidden activations never leave the chip),
    ``ours_2launch`` (fc1 with GELU in its epilogue, then fc2), ``torch_lowrank`` (two GEMMs per
    linear and GELU between: five launches). Biases included."""
    x, hid, y, t = m * k * elem, m * h * elem, m * k * elem, m * rank * elem
    r = rank
    if variant == "dense":
        return [(x + h * k * elem + h * elem + hid, 2 * m * k * h), (2 * hid, 0),
                (hid + k * h * elem + k * elem + y, 2 * m * k * h)]  # fmt: skip
    if variant == "ours":
        return [(x + 2 * r * (k + h) * elem + (h + k) * elem + y, 4 * m * r * (k + h))]
    if variant == "ours_2launch":
        return [(x + r * (k + h) * elem + h * elem + hid, 2 * m * r * (k + h)),
                (hid + r * (k + h) * elem + k * elem + y, 2 * m * r * (k + h))]  # fmt: skip
    if variant == "torch_lowrank":
        return [(x + r * k * elem + t, 2 * m * r * k), (t + h * r * elem + hid, 2 * m * r * h),
                (2 * hid, 0), (hid + r * h * elem + t, 2 * m * r * h),
                (t + k * r * elem + y, 2 * m * r * k)]  # fmt: skip
    raise ValueError(f"variant must be dense, ours, ours_2launch or torch_lowrank, got {variant!r}")


def per_call_roofline_us(
    *, bytes_moved: float, flops: float, copy_bytes_per_s: float, peak_flops: float,
    launch_us: float, launches: int = 1,
) -> float:  # fmt: skip
    """The least time one call can take: each launch's fixed cost plus the larger of its bytes
    at the copy ceiling and its FLOPs at the tensor-core peak (the census's roofline)."""
    return launches * launch_us + 1e6 * max(bytes_moved / copy_bytes_per_s, flops / peak_flops)
