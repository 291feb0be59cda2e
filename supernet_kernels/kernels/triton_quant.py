"""Triton kernels for quantized matmul.

Weight-only (A16) with 2, 3, 4 or 8 bits: ``_wq_matmul_kernel``, on the tile layout of
:func:`supernet_kernels.quant.packing.to_tiles` (made once per weight from sk-pack-v1 and
cached while the weight lives; 3 bits as a 2-bit and a 1-bit plane). One kernel for every M;
the dequantized weight is the MMA's row side, read from registers (wgmma A operand on sm_90),
x^T the column side from shared memory, with 16 (M <= 16), 64 or 128 columns. Codes become
exact ``q - z`` with one LOP3 and one packed HFMA2/HADD2 per pair (two of each at 3 bits;
magic-exponent trick, see ``_centered``). Up to 64 rows the group scale is applied once per
group to the fp32 tile; above, the weight is scaled in 16 bits before the MMA from the scale
pairs (``folds_scale``). K is split until there are two programs per SM, and the split is
reduced inside the same launch (last program per tile, by ticket). sm_90 compile, 4096x11008,
g128, fp16, SASS instructions per code in the main loop at M = 1 / 4096: 4-bit 2.45 / 2.72,
2-bit 1.84 / 2.40, 3-bit 3.12 / 3.91, 8-bit 2.48 / 3.83; 16-byte cp.async weight loads, no
spills.

``_quant_matmul_kernel`` serves the rest: 8-bit activations (A8) and plain int8 / float8
weights (W_RAW8), and group sizes the tile layout cannot take. BITS and PER_WORD are
compile-time constants: code k of row n is
``(packed[n, k // PER_WORD] >> (k % PER_WORD) * BITS) & (2**BITS - 1)``; each K tile lies
inside one quantization group (BLOCK_K divides the group size).

* A16: codes are dequantized in registers, ``(q - z) * s`` cast to x's dtype, and multiplied
  on the tensor cores with fp32 accumulation.
* A8: x is quantized per token to int8 codes, in the kernel's prologue up to
  FUSED_QUANT_MAX_M rows (one launch per call), by ``_quantize_rows_kernel`` before it above
  (two launches; see FUSED_QUANT_MAX_M for why). The tile product of the
  int8 activation codes and the weight codes runs on int8 tensor cores with int32
  accumulation (exact); the zero point comes out through the activation row sums:
  sum_k xq (q - z) s = s (sum_k xq q - z sum_k xq). 8-bit codes (0..255) are shifted by -128 to
  fit int8, with the zero point shifted to match. With one group across K the int32 sums run
  over all of K and the scales are applied once in the epilogue (INT_ACC). The per-token
  scale is applied at the end; a row holding NaN or inf has scale NaN and comes out NaN.
* W_RAW8: the weight is a plain 8-bit matrix, int8 (int8_linear) or float8 e4m3 (fp8_linear,
  sm_89+), with one float32 scale per row; int32 (int8) or fp32 (fp8) accumulation over all
  of K, the row and token scales applied in the epilogue.

Small M splits K across programs (SPLIT_K); both kernels reduce the split in the same launch
(the ticket counters are per (device, stream), or per call under graph capture; see _locks):
each program stores its fp32 partial tile and takes a ticket from a per-tile counter, and the
program with the last ticket sums the partials, adds the bias, writes y in its dtype and
resets the counter (no zero-filled buffer and cast kernel around the launch).
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from .triton_common import (
    _dot,
    _load_tile,
    _round,
    _store_or_reduce,
    _tile_offsets,
    dot_fp32,
    interp_bf16,
)


@triton.jit
def _round_half_even(v):
    """torch.round's rule (ties to even), built from floor so it behaves the same everywhere."""
    r = tl.floor(v + 0.5)
    tie = (r - v) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _fp8_rne(v, EMULATE: tl.constexpr):
    """Round fp32 to the nearest float8 e4m3 value (ties to even), still held in fp32.

    GPUs convert with this rounding in hardware. Triton 3.8's CPU interpreter does not carry a
    rounded-up mantissa into the exponent (124.3 became 64 instead of 128, measured), so under
    the interpreter the rounding is done here and the conversion that follows is exact:
    3 mantissa bits in the normal range, multiples of 2^-9 below 2^-6 (subnormals).
    """
    if EMULATE:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
        normal = bits.to(tl.float32, bitcast=True)
        sub = _round_half_even(v * 512.0) / 512.0
        v = tl.where(tl.abs(v) < 0.015625, sub, normal)
    return v


@triton.jit
def _row_scale(amax, FP8: tl.constexpr):
    """max|x| / qmax per row from the running |x| maxima (NaN kept): 1 for an all-zero row, NaN
    for a row holding NaN or inf, so that its output is NaN."""
    has_nan = amax == float("inf")
    scale = amax / (448.0 if FP8 else 127.0)
    return tl.where(scale == 0.0, 1.0, tl.where(has_nan, float("nan"), scale))


@triton.jit
def _act_codes(x, scale, FP8: tl.constexpr, EMULATE_FP8: tl.constexpr, QDT: tl.constexpr):
    """The per-token codes of x (any shape) for its row scale (broadcast to x): int8
    round_half_even(x / s) in [-127, 127] (0 in a NaN row), or float8 e4m3 x / s (rounded to
    nearest), as QDT. Exactly torch's quantize_activations_int8 / _fp8 (IEEE division)."""
    v = tl.math.div_rn(x.to(tl.float32), scale)
    # one return: Triton's compiler refuses returns of two types even under a constexpr branch
    if FP8:
        q = _fp8_rne(v, EMULATE_FP8).to(QDT)
    else:
        q = tl.minimum(tl.maximum(_round_half_even(v), -127.0), 127.0)
        q = tl.where(v != v, 0.0, q).to(tl.int8)  # a NaN row: codes 0, scale NaN
    return q


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr, K, stride_xm, stride_xk,
    FP8: tl.constexpr,
    EMULATE_FP8: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Per token: int8 with s = max|x| / 127 (1 for a zero row, NaN for a row holding NaN or
    inf) and q = round_half_even(x / s); or FP8 (e4m3) with s = max|x| / 448 and q = x / s
    rounded by the conversion (to nearest)."""
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_xm + offs * stride_xk, mask=offs < K, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)), propagate_nan=tl.PropagateNan.ALL)
    amax = tl.max(tl.where(amax != amax, float("inf"), amax), axis=0)  # NaN -> inf, then max
    scale = _row_scale(amax, FP8)
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_xm + offs * stride_xk, mask=offs < K, other=0.0)
        q = _act_codes(x, scale, FP8, EMULATE_FP8, q_ptr.dtype.element_ty)
        tl.store(q_ptr + row * K + offs, q, mask=offs < K)


@triton.jit
def _quant_matmul_kernel(
    x_ptr, xs_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, part_ptr, lock_ptr,
    M, N, K, G,
    stride_xm, stride_xk, stride_wn, stride_sn, stride_ym, stride_yn,
    BITS: tl.constexpr,
    PER_WORD: tl.constexpr,
    A8: tl.constexpr,
    W_RAW8: tl.constexpr,
    WORD_TILE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    INT_ACC: tl.constexpr,
    QUANT_X: tl.constexpr,
    EMULATE_FP8: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m, offs_n, mask_m, mask_n = _tile_offsets(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)
    if QUANT_X:
        # The per-token quantizer in the prologue (one launch per call): x arrives in its
        # float dtype; every program finds the row maxima of its BLOCK_M rows over all of K
        # (a pass over x, small at the M this runs at), then quantizes each x tile as it
        # loads it, with the same rule as _quantize_rows_kernel (exact codes).
        amax = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for q0 in range(0, K, BLOCK_K):
            offs_q = (q0 + tl.arange(0, BLOCK_K)).to(tl.int64)
            xa = _load_tile(x_ptr, offs_m, offs_q, stride_xm, stride_xk, mask_m, offs_q < K)
            amax = tl.maximum(amax, tl.abs(xa.to(tl.float32)), propagate_nan=tl.PropagateNan.ALL)
        amax = tl.max(tl.where(amax != amax, float("inf"), amax), axis=1)  # NaN -> inf, max
        x_scale = _row_scale(amax, QUANT_X == 2)
    # INT_ACC: one scale per output column for all of K (int8 weights; A8 with one group), so
    # the int32 tile products are summed exactly across K and scaled once in the epilogue
    # (scaling inside the loop kept an fp32 and an int32 tile live: 193 registers, measured)
    if INT_ACC:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        xsum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        offs_k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        mask_k = offs_k < K
        mask_w = mask_k[:, None] & mask_n[None, :]
        x = _load_tile(x_ptr, offs_m, offs_k, stride_xm, stride_xk, mask_m, mask_k)
        if QUANT_X:
            x = _act_codes(x, x_scale[:, None], QUANT_X == 2, EMULATE_FP8, w_ptr.dtype.element_ty)
        if W_RAW8:
            w = tl.load(
                w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None], mask=mask_w, other=0.0
            )
            acc = tl.dot(x, w, acc)  # int8: int32, exact; fp8: fp32
        else:
            if WORD_TILE:
                # Each word once: a (BLOCK_K / PER_WORD, BLOCK_N) tile, contiguous along K
                # (vector loads), unpacked to (BLOCK_K, BLOCK_N) by a broadcast shift. Loading
                # per code (below) reads every word PER_WORD times through an index that hides
                # the contiguity; the first H100 run measured 21 int8 TOP/s for W8A8 at
                # M = 4096 with it.
                WK: tl.constexpr = BLOCK_K // PER_WORD
                offs_w = (k0 // PER_WORD + tl.arange(0, WK)).to(tl.int64)
                words = tl.load(
                    w_ptr + offs_n[None, :] * stride_wn + offs_w[:, None],
                    mask=(offs_w * PER_WORD < K)[:, None] & mask_n[None, :],
                    other=0,
                )
                shifts = (tl.arange(0, PER_WORD) * BITS).to(tl.int32)
                q3 = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)
                q = tl.reshape(q3, (BLOCK_K, BLOCK_N))  # row w * PER_WORD + j = code k
            else:
                words = tl.load(
                    w_ptr + offs_n[None, :] * stride_wn + (offs_k // PER_WORD)[:, None],
                    mask=mask_w,
                    other=0,
                )
                shift = ((offs_k % PER_WORD) * BITS).to(tl.int32)
                q = (words >> shift[:, None]) & ((1 << BITS) - 1)  # [BLOCK_K, BLOCK_N]
            group = k0 // G
            s = tl.load(s_ptr + offs_n * stride_sn + group, mask=mask_n, other=0.0)
            z = tl.load(z_ptr + offs_n * stride_sn + group, mask=mask_n, other=0.0)
            if A8 and INT_ACC:
                OFFSET: tl.constexpr = 128 if BITS == 8 else 0
                acc = tl.dot(x, (q - OFFSET).to(tl.int8), acc)  # int32, exact
                xsum += tl.sum(x.to(tl.int32), axis=1)
            elif A8:
                OFFSET: tl.constexpr = 128 if BITS == 8 else 0
                part = tl.dot(x, (q - OFFSET).to(tl.int8))  # int32, exact
                xsum = tl.sum(x.to(tl.int32), axis=1)
                acc += (
                    part.to(tl.float32) - xsum.to(tl.float32)[:, None] * (z - OFFSET)[None, :]
                ) * s[None, :]
            else:
                w = _round((q.to(tl.float32) - z[None, :]) * s[None, :], x.dtype, RNE_BF16)
                acc = _dot(x, w, acc, DOT_FP32)
    if W_RAW8:
        s = tl.load(s_ptr + offs_n * stride_sn, mask=mask_n, other=0.0)
        acc = acc.to(tl.float32) * s[None, :]
    elif INT_ACC:
        OFFSET2: tl.constexpr = 128 if BITS == 8 else 0
        s = tl.load(s_ptr + offs_n * stride_sn, mask=mask_n, other=0.0)
        z = tl.load(z_ptr + offs_n * stride_sn, mask=mask_n, other=0.0)
        acc = acc.to(tl.float32) - xsum.to(tl.float32)[:, None] * (z - OFFSET2)[None, :]
        acc = acc * s[None, :]
    if QUANT_X:  # the per-token scale (NaN for a row holding NaN, so that row comes out NaN)
        acc = acc * x_scale[:, None]
    elif A8:
        xs = tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)
        acc = acc * xs[:, None]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    mask_y = mask_m[:, None] & mask_n[None, :]
    # split over K reduced in this launch (triton_common._store_or_reduce)
    _store_or_reduce(acc, y_ptrs, mask_y, b_ptr + offs_n[None, :], mask_n[None, :], part_ptr,
                     mask_y, lock_ptr, pid_m * tl.num_programs(1) + pid_n, pid_k, HAS_BIAS,
                     SPLIT_K, RNE_BF16)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Launchers. Arguments are validated by the op layer.


def _block_k(group_size: int, k: int, want: int) -> int:
    """Largest power of two <= want that divides the group (a tile never straddles groups);
    any tile works when the whole row is one group."""
    if group_size == k:
        return want
    bk = want
    while bk > 16 and group_size % bk:
        bk //= 2
    if group_size % bk:
        raise ValueError(f"group_size {group_size} must be a multiple of 16 for the Triton kernel")
    return bk


def default_config(m: int, n: int, k: int, group_size: int, num_sms: int, interpret: bool):
    from ..tuning import QuantConfig

    if interpret:  # the CPU interpreter: small tiles, but still exercise split-K
        bk = _block_k(group_size, k, 32)
        return QuantConfig(16, 32, bk, num_warps=1, num_stages=1, split_k=2 if m <= 16 else 1)
    if m <= 16:
        # GEMV-like: stream the weight once with as many programs as it takes to fill the GPU.
        bk = _block_k(group_size, k, 128)
        return QuantConfig(16, 64, bk, num_warps=4, num_stages=3, split_k=None)
    if m <= 64:
        return QuantConfig(
            32, 64, _block_k(group_size, k, 64), num_warps=4, num_stages=3, split_k=None
        )
    return QuantConfig(128, 128, _block_k(group_size, k, 64), num_warps=8, num_stages=3, split_k=1)


def _split_k(m: int, n: int, k: int, cfg, num_sms: int) -> int:
    if cfg.split_k is not None:
        return max(1, cfg.split_k)
    # max(1, ...): M = 0 or N = 0 has no tiles (a ZeroDivisionError on the first H100 run)
    tiles = max(1, triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n))
    k_tiles = triton.cdiv(k, cfg.block_k)
    return max(1, min(k_tiles, triton.cdiv(2 * num_sms, tiles)))


def _device_info(x):
    if x.device.type == "cpu":
        return "cpu-interpreter", 4, True
    props = torch.cuda.get_device_properties(x.device)
    return props.name, props.multi_processor_count, False


def _launch(
    x, *, xs, w, s, z, bias, n, k, group_size, bits, a8, w_raw8, out_dtype, word_tile=True,
    quant_x=0,
):  # fmt: skip
    from .. import tuning

    m = x.shape[0]
    gpu, num_sms, interpret = _device_info(x)
    dtype = str(out_dtype).removeprefix("torch.")
    mode = f"raw-{str(w.dtype).removeprefix('torch.')}" if w_raw8 else f"w{bits}a{8 if a8 else 16}"
    key = f"{dtype}:{mode}:m{tuning.m_bucket(m)}:k{k}:n{n}:g{group_size}"
    cfg = tuning.QUANT.get(gpu, key) or default_config(m, n, k, group_size, num_sms, interpret)
    if group_size != k and group_size % cfg.block_k:
        raise ValueError(
            f"tuned block_k {cfg.block_k} does not divide group_size {group_size} ({key})"
        )
    if m == 0 or n == 0:  # nothing to launch (and no tiles to split K over: 0 programs)
        return torch.empty((m, n), dtype=out_dtype, device=x.device)
    split = _split_k(m, n, k, cfg, num_sms)
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n), split)
    if split > 1:  # fp32 partial tiles, reduced by the last program of each tile
        part = torch.empty(split * grid[0] * grid[1] * cfg.block_m * cfg.block_n,
                           dtype=torch.float32, device=x.device)  # fmt: skip
        locks = _locks(x.device, grid[0] * grid[1])
    else:
        part = locks = y
    probe = y  # dtype flags follow the output
    _quant_matmul_kernel[grid](
        x, xs if xs is not None else y, w, s, z if z is not None else s,
        bias if bias is not None else y, y, part, locks,
        m, n, k, group_size,
        x.stride(0), x.stride(1), w.stride(0), s.stride(0), y.stride(0), y.stride(1),
        BITS=bits,
        PER_WORD=32 // bits,
        A8=a8,
        W_RAW8=w_raw8,
        # power-of-two codes per word (2, 4, 8 bits; 3-bit packs 10) and whole words per tile
        WORD_TILE=word_tile and (32 // bits) & (32 // bits - 1) == 0 and cfg.block_k >= 32 // bits,
        HAS_BIAS=bias is not None,
        SPLIT_K=split,
        DOT_FP32=dot_fp32(probe),
        RNE_BF16=interp_bf16(probe),
        INT_ACC=(w_raw8 and w.dtype == torch.int8) or (a8 and not w_raw8 and group_size == k),
        QUANT_X=quant_x,
        EMULATE_FP8=quant_x == 2 and x.device.type == "cpu",
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip
    return y


def quantize_rows(x, fp8: bool = False):
    """x (M, K) float -> (codes (M, K) int8 or float8_e4m3fn, contiguous; scales float32 (M,))."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn if fp8 else torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m:
        block = 32 if x.device.type == "cpu" else min(4096, triton.next_power_of_2(k))
        _quantize_rows_kernel[(m,)](
            x, q, s, k, x.stride(0), x.stride(1),
            FP8=fp8, EMULATE_FP8=fp8 and x.device.type == "cpu", BLOCK_K=block,
        )  # fmt: skip
    return q, s


# Up to this M the per-token activation quantizer runs in the matmul kernel's prologue (one
# launch per call); above it, as its own pass before (two launches). Fused, every program
# quantizes its rows of x again for each of the N / BLOCK_N column tiles, one IEEE division
# per element (the exact codes of the definition): at M <= 16 that is at most 16 x K elements
# per program beside a weight stream of BLOCK_N x K codes, while a second launch costs ~3.5 us
# of the graph-replayed call (H100 fixed cost); at M = 4096 (128-row tiles, N = 11008) it
# would quantize each element 86 times, about 3x the int8 MMA time of the tile (estimate from
# issue rates: 8192 divisions of ~10 instructions against 128x128x64 int8 MACs per K step).
FUSED_QUANT_MAX_M = 16


def quant_linear(x, packed, scales, zeros, bits, group_size, k, act_bits, bias):
    """y (M, N) for x (M, K) and a packed weight; see the module docstring."""
    a8 = act_bits == 8
    tile = None if a8 else tile_for(bits, group_size, k)
    if tile is not None and packed.shape[0] * packed_width_tiles(k, bits, tile) < 2**31:
        tiles = tiles_of(packed, bits, k, tile)
        return launch_tiled(
            x,
            tiles,
            scales.contiguous(),
            zeros.contiguous(),
            bias,
            packed.shape[0],
            k,
            group_size,
            bits,
            tile,
        )
    fuse = a8 and x.shape[0] <= FUSED_QUANT_MAX_M
    xq, xs = quantize_rows(x) if a8 and not fuse else (x, None)
    return _launch(
        xq, xs=xs, w=packed.contiguous(), s=scales.contiguous(), z=zeros.contiguous(), bias=bias,
        n=packed.shape[0], k=k, group_size=group_size, bits=bits, a8=a8, w_raw8=False,
        out_dtype=x.dtype, quant_x=1 if fuse else 0,
    )  # fmt: skip


def raw8_linear(x, weight, weight_scale, bias):
    """x quantized per token to the weight's 8-bit type (int8, or float8 e4m3 on sm_89+) times
    the plain 8-bit weight (N, K) with per-row float32 scales (N,)."""
    n, k = weight.shape
    fp8 = weight.dtype != torch.int8
    fuse = x.shape[0] <= FUSED_QUANT_MAX_M
    xq, xs = (x, None) if fuse else quantize_rows(x, fp8=fp8)
    return _launch(
        xq, xs=xs, w=weight.contiguous(), s=weight_scale.contiguous(), z=None, bias=bias,
        n=n, k=k, group_size=k, bits=8, a8=True, w_raw8=True, out_dtype=x.dtype,
        quant_x=(2 if fp8 else 1) if fuse else 0,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Weight-only kernels on the GPU tile layout (see quant.packing.to_tiles): 2, 4 and 8 bits.


@triton.jit
def _centered(h, hs, j: tl.constexpr, zc, BITS: tl.constexpr, DEQ: tl.constexpr,
              WDT: tl.constexpr, ASM: tl.constexpr):  # fmt: skip
    """q - z for sub-tile j of an int16 code tile h (R, E) (codes at bits [BITS*j, BITS*j +
    BITS) of each word), exact, in WDT (x's dtype): |q - z| <= 255 fits every float type.
    hs is h shifted right by the base of code j (see _base), zc = magic + z per row.

    The group scale is not applied here but to the fp32 MMA result of the whole group (the
    weight is the MMA's row side, so the scale is one per accumulator row): the tensor cores
    multiply exact integers by x, and the scale is applied once in fp32, which rounds less
    than the reference's weight dequantized in x's dtype.

    DEQ 0 (fp16): OR the code, left where it lies at bit offset r in hs, into the mantissa of
    1024.0 (0x6400): the bits read as 1024 + q * 2**r, exactly while r + BITS <= 10; then one
    packed FMA, f * 2**-r - (1024 * 2**-r + z), gives q - z exactly (power-of-two scaling and
    an integer result). So a pair of codes costs one LOP3 and one HFMA2 (HADD2 at r = 0), plus
    one SHF per word for each new base (2-bit: codes 0-4 from the word itself, 5-7 after one
    shift by 10; 4-bit: codes 0-1, then 2-3 after a shift by 8).
    DEQ 1 (bf16): the same with 128.0 (0x4300) and 7 mantissa bits (2 and 4 bits only).
    DEQ 2: fp32 with 2**23 (0x4B000000), for fp32 activations and 8-bit bf16.
    DEQ 3: DEQ 1 computed in fp32 (the CPU interpreter has no bf16 arithmetic).
    """
    if DEQ == 0 or DEQ == 1:
        MB: tl.constexpr = 10 if DEQ == 0 else 7
        R: tl.constexpr = BITS * (j % max(1, MB // BITS))  # bit offset of code j in hs
        if DEQ == 0:
            f = _codes(hs, R, BITS, 0x64006400, ASM).to(tl.float16, bitcast=True)
            base: tl.constexpr = 1024.0
        else:
            f = _codes(hs, R, min(BITS, 7), 0x43004300, ASM).to(tl.bfloat16, bitcast=True)
            base: tl.constexpr = 128.0
        if DEQ == 1 and BITS == 8:
            # 8 bits pass bf16's 7 mantissa bits: the low 7 read as 128 + lo (f above, from
            # the field masked to 7 bits), the top bit lands on the exponent's lowest bit and
            # reads as 128 or 256 (g); (g - 256) + f = q and q - z are exact (|.| <= 255).
            g = _codes(hs, 7, 1, 0x43004300, ASM).to(tl.bfloat16, bitcast=True)
            w = (f + (g - 256.0)) - zc[:, None]
        elif R == 0:
            w = f - zc[:, None]
        else:
            # zc + (base * 2**-R - base): integers, exact in 16 bits
            zr = zc + (base / (1 << R) - base)
            w = f * (1.0 / (1 << R)) - zr[:, None]  # one HFMA2 per pair
    elif DEQ == 2:
        q = _codes(h, BITS * j, BITS, 0, ASM)
        f = (q.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)
        w = (f - zc[:, None]).to(WDT)
    else:
        f = _codes(h, BITS * j, BITS, 0, ASM).to(tl.float32) + (0.0 if BITS == 8 else 128.0)
        w = (f - zc[:, None]).to(WDT)
    return w


@triton.jit
def _base(h, hs, j: tl.constexpr, BITS: tl.constexpr, DEQ: tl.constexpr, ASM: tl.constexpr):
    """h shifted right to the base of code j: a new base wherever the codes since the last
    one would pass the mantissa (10 bits fp16, 7 bf16); otherwise hs unchanged."""
    MB: tl.constexpr = 10 if DEQ == 0 else 7
    if (DEQ == 0 or DEQ == 1) and j % max(1, MB // BITS) == 0 and j > 0:
        if ASM:
            asm: tl.constexpr = f"shr.b32 $0, $1, {BITS * j};"
            hs = tl.inline_asm_elementwise(asm, "=r,r", [h], dtype=tl.int16, is_pure=True, pack=2)
        else:
            hs = h >> (BITS * j)
    return hs


@triton.jit
def _shifted(h, S: tl.constexpr, ASM: tl.constexpr):
    """Every int16 word of h shifted right by S (left by -S when S < 0). ASM: two words per
    32-bit shift; what crosses between the halves lands outside the fields read after it."""
    if S == 0:
        return h
    if ASM:
        asm: tl.constexpr = f"shr.b32 $0, $1, {S};" if S > 0 else f"shl.b32 $0, $1, {-S};"
        return tl.inline_asm_elementwise(asm, "=r,r", [h], dtype=tl.int16, is_pure=True, pack=2)
    return h >> S if S > 0 else h << (-S)


@triton.jit
def _centered3(hl, hh, j: tl.constexpr, zc, DEQ: tl.constexpr, WDT: tl.constexpr,
               ASM: tl.constexpr):  # fmt: skip
    """q - z for slice j of a 3-bit tile (quant.packing, sk-tiles3-v1), exact, in WDT: the low
    two bits from word tile hl (slice j % 8 at bits 2(j % 8)), the high bit from hh (bit j).

    DEQ 0 / 1: both fields ORed into the mantissa of the magic constant B (1024.0 fp16, 128.0
    bf16), the low field at bit a (F = B + lo 2**a), the high bit at bit b (H = B + hi 2**b),
    then two packed FMAs per pair: u = H * 4 * 2**-b - c, with c = 4B 2**-b + B 2**-a + z,
    gives 4 hi - B 2**-a - z, and w = F * 2**-a + u gives lo + 4 hi - z. Every value is an
    integer the 16-bit type holds exactly when b >= 3 (c < 2048 in fp16, < 256 in bf16), so
    the high bit is read at bits 3..MB-1: the word shifted left by 3 for the first MB - 3
    slices, then right in steps of MB - 3. So a pair of codes costs two LOP3 and two HFMA2
    (HADD2), and the shifts are shared by all the codes of a word.
    DEQ 2 / 3: q from plain integer fields, then as _centered.
    """
    J: tl.constexpr = j % 8
    if DEQ == 0 or DEQ == 1:
        MB: tl.constexpr = 10 if DEQ == 0 else 7
        MAGIC: tl.constexpr = 0x64006400 if DEQ == 0 else 0x43004300
        B: tl.constexpr = 1024.0 if DEQ == 0 else 128.0
        PER: tl.constexpr = MB // 2  # low fields per base: 5 (fp16), 3 (bf16)
        A: tl.constexpr = 2 * (J % PER)
        W: tl.constexpr = MB - 3  # high bits per base
        SB: tl.constexpr = (j // W) * W - 3
        HB: tl.constexpr = j - SB
        lo = _codes(_shifted(hl, 2 * PER * (J // PER), ASM), A, 2, MAGIC, ASM)
        hi = _codes(_shifted(hh, SB, ASM), HB, 1, MAGIC, ASM)
        if DEQ == 0:
            f = lo.to(tl.float16, bitcast=True)
            g = hi.to(tl.float16, bitcast=True)
        else:
            f = lo.to(tl.bfloat16, bitcast=True)
            g = hi.to(tl.bfloat16, bitcast=True)
        c = zc + (4.0 * B / (1 << HB) + B / (1 << A) - B)  # zc = B + z; integers, exact
        u = g * (4.0 / (1 << HB)) - c[:, None]
        if A == 0:
            w = f + u
        else:
            w = f * (1.0 / (1 << A)) + u
    else:
        lo = _codes(hl, 2 * J, 2, 0, False).to(tl.int32)
        hi = _codes(hh, j, 1, 0, False).to(tl.int32)
        f = (lo + 4 * hi).to(tl.float32) + (8388608.0 if DEQ == 2 else 128.0)
        w = (f - zc[:, None]).to(WDT)
    return w


@triton.jit
def _codes(h, R: tl.constexpr, BITS: tl.constexpr, MAGIC: tl.constexpr, ASM: tl.constexpr):
    """The BITS-wide field at bit R of every int16 word of h, left in place and ORed with
    MAGIC (exponent bits), as int16 bits; with MAGIC 0, the field shifted down to bit 0.

    ASM (GPUs): two int16 words share a 32-bit register, so one LOP3 ((a & mask) | magic)
    makes two codes. Written as PTX because Triton 3.8 lowers the same plain ops per 16-bit
    element (one LOP3 each for the AND and the OR) and repacks the halves with PRMT: 4.7 SASS
    instructions per 4-bit code in the main loop against 2.9 with this (sm_90 compile, M = 1,
    4096x11008, before the shift-free codes of _centered). The plain ops below compute the
    same function and are what the CPU interpreter checks.
    """
    MASK: tl.constexpr = ((1 << BITS) - 1) << R
    if ASM:
        MASK2: tl.constexpr = MASK | (MASK << 16)
        if MAGIC == 0 and R > 0:
            asm: tl.constexpr = (
                f"{{ .reg .b32 t; shr.b32 t, $1, {R}; and.b32 $0, t, {MASK2 >> R}; }}"
            )
        else:
            asm: tl.constexpr = f"lop3.b32 $0, $1, {MASK2}, {MAGIC}, 0xea;"
        return tl.inline_asm_elementwise(asm, "=r,r", [h], dtype=tl.int16, is_pure=True, pack=2)
    if MAGIC:
        return (h & MASK) | (MAGIC & 0xFFFF)
    return (h >> R) & ((1 << BITS) - 1)


@triton.jit
def _group_consts(s_ptr, z_ptr, rows, stride_sn, g, DEQ: tl.constexpr, BITS: tl.constexpr):
    """Per row of a tile: magic + z in the precision _centered works in, and the fp32 scale."""
    s = tl.load(s_ptr + rows * stride_sn + g)
    z = tl.load(z_ptr + rows * stride_sn + g)
    if DEQ == 0:
        zc = (z + 1024.0).to(tl.float16)
    elif DEQ == 1:  # 8 bits: z itself (128 + z may need 9 bits)
        zc = (z + (0.0 if BITS == 8 else 128.0)).to(tl.bfloat16)
    elif DEQ == 2:
        zc = z + 8388608.0
    else:
        zc = z + (0.0 if BITS == 8 else 128.0)
    return zc, s


@triton.jit
def _group_pair(p_ptr, rows, stride_sn, g, DEQ: tl.constexpr):
    """Per row of a tile, from its scale pair (quant.packing.fold_scales: one int32 per row and
    group): magic + z and the scale, both in the activation dtype (DEQ 0 float16, 1 bfloat16),
    or for DEQ 3 (bfloat16 under the CPU interpreter) the same bfloat16 numbers widened to fp32
    (exact: a bfloat16 is the top half of an fp32)."""
    v = tl.load(p_ptr + rows * stride_sn + g)
    if DEQ == 0:
        s = (v & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
        zc = (v >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    elif DEQ == 1:
        s = (v & 0xFFFF).to(tl.int16).to(tl.bfloat16, bitcast=True)
        zc = (v >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:
        s = (v << 16).to(tl.float32, bitcast=True)
        zc = ((v >> 16) << 16).to(tl.float32, bitcast=True)
    return zc, s


@triton.jit
def _scaled(w, s, DEQ: tl.constexpr, WDT: tl.constexpr, RNE_BF16: tl.constexpr):
    """(q - z) * s in the activation dtype: one packed HMUL2 per pair of codes, rounded once
    (q - z is exact). DEQ 3 multiplies in fp32 (exact: 8-bit by 8-bit significands) and rounds
    to bfloat16 to nearest even, as the GPU's bfloat16 multiply does."""
    if DEQ == 3:
        return _round(w.to(tl.float32) * s[:, None], WDT, RNE_BF16)
    return w * s[:, None]


@triton.jit
def _wq_matmul_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, part_ptr, lock_ptr,
    M, N, K, NG, TPG, k_split, stride_xm, stride_wn, stride_sn, stride_ym,
    BITS: tl.constexpr,
    DEQ: tl.constexpr,
    FOLD: tl.constexpr,
    EVEN_K: tl.constexpr,
    SPG: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    ASM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y^T tile (BLOCK_N, BLOCK_M) = W (BLOCK_N, K range) @ x^T: the dequantized weight is the
    MMA's row side, taken from registers (wgmma's A operand on sm_90; B, x^T, comes through
    shared memory), so at M = 1 the 16-wide column side wastes nothing of the weight stream.

    One program: BLOCK_N weight rows times BLOCK_M rows of x, over its k_split-wide share of
    K. Per K tile of BLOCK_K codes it loads (BLOCK_N, BLOCK_K / C) int16 words (C = 16 / BITS
    codes each), contiguous along K and unmasked (rows past N are clamped to N - 1, their
    outputs never stored), so every lane issues 16-byte loads. Word e holds the tile's codes
    e, E + e, 2E + e, ... (E = BLOCK_K / C), so shift j yields a contiguous (BLOCK_N, E)
    weight slice multiplied by x[:, k0 + jE : k0 + (j + 1)E], with no reshape between the load
    and the MMA.

    Split over K in one launch: each program stores its fp32 partial tile, then takes a ticket
    from a per-tile counter; the program that draws the last ticket sums the partials, adds the
    bias, writes y in its dtype and resets the counter to 0 for the next call.
    """
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    C: tl.constexpr = 16 if BITS == 3 else 16 // BITS  # K slices per tile
    E: tl.constexpr = BLOCK_K // C
    WT: tl.constexpr = 3 * E if BITS == 3 else E  # int16 words per row and tile
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M - pid_m * BLOCK_M
    offs_e = tl.arange(0, E)
    # 32-bit offsets inside the tile (the launcher keeps the weight under 2**31 words); the
    # tile's row base in 64 bits (x and y may pass 2**31 elements)
    x_ptr += pid_m.to(tl.int64) * BLOCK_M * stride_xm
    y_ptr += pid_m.to(tl.int64) * BLOCK_M * stride_ym
    # the tile layout's int16 words, passed as int32 pairs (strides in int16 words)
    w_rows = w_ptr.to(tl.pointer_type(tl.int16)) + rows[:, None] * stride_wn
    x_rows = x_ptr + offs_m[None, :] * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    t_lo = pid_k * (k_split // BLOCK_K)
    t_hi = tl.minimum(t_lo + k_split // BLOCK_K, tl.cdiv(K, BLOCK_K))
    for t in range(t_lo, t_hi):
        k0 = t * BLOCK_K
        h = tl.load(w_rows + (t * WT + offs_e)[None, :])
        if BITS == 3:  # the low bits of slices 8-15, then the high bits of all 16
            h2 = tl.load(w_rows + (t * WT + E + offs_e)[None, :])
            h3 = tl.load(w_rows + (t * WT + 2 * E + offs_e)[None, :])
        hs = h
        for j in tl.static_range(C):
            if j % SPG == 0:  # a new group: SPG slices of E codes share its scale
                # the group index without a division by a runtime group size (an integer
                # division took 12 instructions per K tile): several groups per tile, or
                # TPG tiles per group (1 at g128 with 128-code tiles: a constant)
                if SPG < C:  # (the padding past K reads the last group; x is 0 there)
                    g = tl.minimum(t * (C // SPG) + j // SPG, NG - 1)
                else:
                    g = t // TPG
                if FOLD:
                    zc, sc = _group_pair(s_ptr, rows, stride_sn, g, DEQ)
                else:
                    zc, sc = _group_consts(s_ptr, z_ptr, rows, stride_sn, g, DEQ, BITS)
                    part = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            if BITS == 3:
                w = _centered3(h if j < 8 else h2, h3, j, zc, DEQ, x_ptr.dtype.element_ty, ASM)
            else:
                hs = _base(h, hs, j, BITS, DEQ, ASM)
                w = _centered(h, hs, j, zc, BITS, DEQ, x_ptr.dtype.element_ty, ASM)
            if FOLD:
                w = _scaled(w, sc, DEQ, x_ptr.dtype.element_ty, RNE_BF16)
            offs_k = k0 + j * E + offs_e
            if EVEN_K:
                xt = tl.load(x_rows + offs_k[:, None], mask=mask_m[None, :], other=0.0)
            else:
                xt = tl.load(
                    x_rows + offs_k[:, None],
                    mask=mask_m[None, :] & (offs_k < K)[:, None],
                    other=0.0,
                )
            if FOLD:
                acc = _dot(w, xt, acc, DOT_FP32)
            else:
                part = _dot(w, xt, part, DOT_FP32)
                if j % SPG == SPG - 1:
                    acc += part * sc[:, None]
    mask_y = (offs_n < N)[:, None] & mask_m[None, :]
    y_ptrs = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
    # only the rows of x that exist are kept as partials: at M = 1, 1/16 of the tile
    _store_or_reduce(acc, y_ptrs, mask_y, b_ptr + rows[:, None], None, part_ptr,
                     mask_m[None, :], lock_ptr, pid_m * tl.num_programs(0) + pid_n, pid_k,
                     HAS_BIAS, SPLIT_K, RNE_BF16)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Launchers of the tile-layout kernels.

GEMV_MAX_M = 16  # x^T is the MMA's 16-wide side: up to 16 rows share one weight pass
_TILES: dict = {}  # id(packed) -> (weak reference to packed, key, tile layout)
_LOCKS: dict = {}  # (device, stream handle) -> int32 tickets, see _locks
_PAIRS: dict = {}  # (id(scales), id(zeros), bits, dtype) -> scale pairs, see scale_pairs_of


def tile_for(bits: int, group_size: int, k: int) -> int | None:
    """Codes per K tile of the tile layout for this weight, None where it does not apply
    (groups that are neither whole tiles nor whole MMA slices of one). 3 bits: 16 slices of
    at least 16 codes (the MMA's K), so tiles of 256."""
    from ..quant.packing import slices_per_tile

    if bits not in (2, 3, 4, 8):
        return None
    c = slices_per_tile(bits)
    for t in (256, 128) if bits == 2 else (256,) if bits == 3 else (128, 64, 32):
        if t % (16 * c):
            continue
        # one group per tile, or whole MMA slices of the tile per group
        if group_size == k or group_size % t == 0:
            return t
        if t % group_size == 0 and group_size % (t // c) == 0:
            return t
    return None


def packed_width_tiles(k: int, bits: int, tile: int) -> int:
    from ..quant.packing import tile_codes

    return tile_codes(k, bits, tile)[1]


def tiles_of(packed, bits: int, k: int, tile: int):
    """The tile layout of a packed weight, made on first use and kept while the weight lives
    (recomputed if the weight is modified in place). The codes are then held twice; QuantLinear
    holds the tile layout alone instead (nn.quant, op quant_linear_tiled)."""
    from ..quant.packing import to_tiles

    key = (packed._version, bits, k, tile)
    hit = _TILES.get(id(packed))
    if hit is not None and hit[0]() is packed and hit[1] == key:
        return hit[2]
    tiles = to_tiles(packed, bits, k, tile)
    ident = id(packed)
    ref = weakref.ref(packed, lambda _, i=ident: _TILES.pop(i, None))
    _TILES[ident] = (ref, key, tiles)
    return tiles


def _stream_key(device):
    """(device, stream handle, capturing) of the stream this call is enqueued on."""
    if device.type != "cuda":
        return (str(device), None, False)
    stream = torch.cuda.current_stream(device)
    return (str(device), stream.cuda_stream, torch.cuda.is_current_stream_capturing())


def _locks(device, n: int):
    """Zeroed int32 tickets for the split-K reduction; each call leaves them zero again.

    The counters are shared by every launch that gets them, so two launches that can run at
    the same time must never share one buffer: it would mix their tickets (a program of one
    call drawing the last ticket of the other and summing partials not yet written). Launches
    on one stream run one after the other, so one buffer per (device, stream) is safe and
    zeroed only once. Under CUDA graph capture a buffer is made per call, inside the graph's
    memory pool: the graph owns it, so two graphs (or the graph and eager calls on the capture
    stream) never share tickets, whichever streams they are replayed on; its zero fill is a
    memset node of the graph (no kernel launch), and replays leave it zero like any call.
    Work on a stream ends before the next work on it starts, so a buffer handed to a stream
    is free again as soon as the kernel that used it is enqueued.
    """
    dev, stream, capturing = _stream_key(device)
    if capturing:
        return torch.zeros(max(n, 1), dtype=torch.int32, device=device)
    key = (dev, stream)
    buf = _LOCKS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _LOCKS[key] = buf
    return buf


def tiled_config(
    m: int, n: int, k: int, tile: int, bits: int, num_sms: int, interpret: bool, dtype=None
):
    """(BLOCK_M, BLOCK_N, SPLIT_K, k_split, warps, stages).

    M <= 16: one 16-wide column tile; 2- and 3-bit rows of 256 (more codes per lane per
    iteration for the same loop overhead: 1.9 instead of 2.1 SASS instructions per code at 2
    bits, 3.1 instead of 3.5 at 3). Larger M: 64- or 128-wide column tiles (wgmma N), 8 warps
    and 256 rows (2, 3 and 4 bits) at 128. K is split until there are two programs per SM,
    the partial tiles reduced in the same launch.
    """
    if interpret:
        block_m, block_n, warps, stages = (16 if m <= GEMV_MAX_M else 32), 16, 1, 1
    elif m <= GEMV_MAX_M:
        # float32 x (no tensor cores: the dot runs on FMAs) spills at 256 rows: 1376 bytes at
        # 2 bits, 2572 at 3 (sm_90 compile, M = 1)
        wide = bits in (2, 3) and dtype != torch.float32
        block_m, block_n, warps, stages = 16, (256 if wide else 128), 4, 4
    elif dtype == torch.float32:
        # float32 x: the dot runs on FMAs (no tensor cores); the 16-bit tiles below spill there
        # (M = 197, sm_90 compile: 14 KB at 2 bits, 9.3 KB at 4) and ask for more shared
        # memory than a block may have (324 KB at 2 and 3 bits). 64 x 32, 2 stages: no
        # spills, 29-46 KB, 42-45 SASS instructions per code (159 before)
        block_m, block_n, warps, stages = 32, 64, 4, 2
    elif m <= 64:
        # 2- and 8-bit bf16 at 128 x 64 spill (255 registers, sm_90 compile); 3-bit at 128
        # rows: 3.9 SASS instructions per code against 5.1 at 64 (M = 48, fp16, no spills)
        block_m, block_n, warps, stages = 64, (128 if bits in (3, 4) else 64), 4, 3
    else:
        # the folded path (no second accumulator): 256 weight rows per program halve the
        # per-code share of the loop's fixed work (x^T staging, wgmma fences, addresses):
        # W4 3.69 -> 2.72 SASS instructions per code, W2 3.22 -> 2.40 (244-255 registers, no
        # spills); 8 bits spill at 256 (64 bytes) and keep 128. A block may have 227 KB of
        # shared memory on an H100 (232448 bytes): at 256 rows, 2 and 3 bits (tiles of 256
        # codes, x^T 64 KB per stage) take 228 and 244 KB with 3 stages, which the launch
        # refuses, so they keep 2 (146 and 154 KB; an iteration's MMAs take ~3 us at the
        # tensor peak, against ~1 us of memory latency: one tile in flight hides it)
        block_m, block_n = 128, (128 if bits == 8 else 256)
        warps, stages = 8, (2 if bits in (2, 3) else 3)
    tiles = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    k_tiles = triton.cdiv(k, tile)
    # K tiles per program: as many as keep tiles * splits >= 2 programs per SM (rounded down,
    # so the rounding of the split never drops below the target)
    if interpret:  # the CPU interpreter: still exercise the split-K reduction
        per = max(1, triton.cdiv(k_tiles, 2))
    else:
        per = max(1, min(k_tiles, k_tiles * tiles // (2 * num_sms)))
    split = triton.cdiv(k_tiles, per)
    return block_m, block_n, split, per * tile, warps, stages


def _slices_per_group(bits: int, group_size: int, k: int, tile: int) -> int:
    """Slices of tile // C codes that share one scale (all C when a group spans the tile)."""
    from ..quant.packing import slices_per_tile

    c = slices_per_tile(bits)
    return c if group_size == k or group_size >= tile else group_size * c // tile


def _deq_mode(dtype, bits: int, interpret: bool) -> int:
    if dtype == torch.float16:
        return 0
    if dtype == torch.bfloat16:
        return 3 if interpret else 1
    return 2


def scale_pairs_of(s, z, bits: int, dtype):
    """The scale pairs (quant.packing.fold_scales) of float32 scales and zero points for
    activations of ``dtype``, made on first use and kept while the scales live (recomputed if
    either is modified in place)."""
    from ..quant.packing import fold_scales

    key = (id(s), id(z), bits, dtype)
    version = (s._version, z._version)
    hit = _PAIRS.get(key)
    if hit is not None and hit[0]() is s and hit[1]() is z and hit[2] == version:
        return hit[3]
    pairs = fold_scales(s, z, bits, dtype)
    if _stream_key(s.device)[2]:
        # made during CUDA graph capture: the graph's pool owns it, so it is not kept for
        # eager calls (a forward before capture makes the one that is kept)
        return pairs
    ref_s = weakref.ref(s, lambda _, kk=key: _PAIRS.pop(kk, None))
    _PAIRS[key] = (ref_s, weakref.ref(z), version, pairs)
    return pairs


def folds_scale(m: int, dtype, interpret: bool) -> bool:
    """Whether the kernel scales the weight in 16 bits (FOLD: w = (q - z) * s by one HMUL2 per
    pair, from the scale pairs) rather than the fp32 MMA result of each group (acc += part * s,
    with the exact integers q - z in the MMA).

    The fp32 rescale costs BLOCK_M / G FFMAs per code (one per accumulator element per group)
    and a second accumulator; the 16-bit scale half an instruction per code, whatever BLOCK_M.
    sm_90 compile, 4096x11008 g128 fp16, SASS instructions per code in the main loop, exact /
    folded: M = 1 (BLOCK_M 16): W4 2.45 / 2.87, W2 1.84 / 2.34, W8 2.48 / 2.98, so up to 16
    rows the exact path stays (within the budgets of 3 and 2, and fp32 scales: no rounding of
    the weight at all); M = 48 (BLOCK_M 64): W4 2.85 / 2.92, W2 3.24 / 3.21, W8 3.88 / 3.97,
    even, so the exact path keeps 17-64 rows too (the more accurate one); M = 4096 (BLOCK_M
    128): W4 4.56 / 3.69 at 128-row tiles (2.72 at 256, which the exact path cannot hold: its
    second accumulator), W2 4.12 / 3.22 (2.44 at 256), W8 4.70 / 3.83. float32 activations
    keep the exact path (the scale would be a 32-bit multiply per code). Under the CPU
    interpreter the folded path runs above 16 rows, so the tests check both."""
    if dtype not in (torch.float16, torch.bfloat16):
        return False
    return m > GEMV_MAX_M if interpret else m > 64


def launch_tiled(x, tiles, s, z, bias, n: int, k: int, group_size: int, bits: int, tile: int):
    """y (M, N) = x @ W.T (+ bias) for a weight in the tile layout (see _wq_matmul_kernel)."""
    m = x.shape[0]
    _, num_sms, interpret = _device_info(x)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    if x.stride(1) != 1:
        x = x.contiguous()
    block_m, block_n, split, k_split, warps, stages = tiled_config(
        m, n, k, tile, bits, num_sms, interpret, x.dtype
    )
    fold = folds_scale(m, x.dtype, interpret)
    if fold:  # s_ptr: the scale pairs (magic + zero and scale per row and group)
        s = z = scale_pairs_of(s, z, bits, x.dtype)
    n_tiles, m_tiles = triton.cdiv(n, block_n), triton.cdiv(m, block_m)
    if split > 1:
        part = torch.empty((split, m_tiles * n_tiles * block_n * block_m), dtype=torch.float32,
                           device=x.device)  # fmt: skip
        locks = _locks(x.device, m_tiles * n_tiles)
    else:
        part = locks = y
    _wq_matmul_kernel[(n_tiles, m_tiles, split)](
        x, tiles.view(torch.int32), s, z, bias if bias is not None else y, y, part, locks,
        m, n, k, k // group_size, triton.cdiv(group_size, tile), k_split,
        x.stride(0), tiles.stride(0), s.stride(0), y.stride(0),
        BITS=bits,
        DEQ=_deq_mode(x.dtype, bits, interpret),
        FOLD=fold,
        EVEN_K=k % tile == 0,
        SPG=_slices_per_group(bits, group_size, k, tile),
        HAS_BIAS=bias is not None,
        SPLIT_K=split,
        DOT_FP32=dot_fp32(x),
        RNE_BF16=interp_bf16(x),
        ASM=not interpret,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=tile,
        num_warps=warps,
        num_stages=stages,
    )  # fmt: skip
    return y
