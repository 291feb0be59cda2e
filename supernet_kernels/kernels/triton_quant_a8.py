"""Triton kernel for quantized matmul with 8-bit activations (A8), in one launch per call.

Serves ``quant_linear`` with ``act_bits=8`` (2/3/4/8-bit packed weights, int8 activations),
``int8_linear`` (plain int8 weight) and ``fp8_linear`` (plain float8 e4m3 weight, e4m3
activations): ``_a8_matmul_kernel``, one launch, two phases.

Phase 1, the per-token quantizer. x (M, K) in its float dtype is cut into items of QROWS rows;
programs take items from a global counter (one atomic per item) until none is left, and per
item find each row's max |x| (scale max / 127, or / 448 for e4m3; 1 for a zero row, NaN for a
row holding NaN or inf), write the codes to a scratch (M padded to whole row tiles, K padded
to whole K steps, zeros in the K padding) with the exact rule of
``quantize_activations_int8`` / ``_fp8`` (IEEE division, ties to even), and, for weights with
a zero point, each group's sum of codes. Each finished item bumps its row tile's arrival
counter. Every program takes items before it waits on any counter, so it only ever waits on
items a running program holds: no deadlock whatever the grid and residency, and the CPU
interpreter (one program after another) runs it as it is (the first program quantizes all).

Why a phase of its own: x is read twice (max, codes) by one program, not once per output tile.
The alternative with no scratch, each program finding its rows' maxima and quantizing x as it
loads it in the main loop, compiled for sm_90 and read by the census (W4A8 g128, 4096x11008):
M = 4096 3301 us predicted (20.3 SASS instructions per code, 208 bytes of spills) against
323 us here; int8_linear M = 4096 2929 us against 272 us; at M = 1 18.1 us against 12.8 us
for W4A8 (int8_linear equal, memory-bound). A quantizer launch of its own adds the ~3.5 us
fixed cost of a graph-replayed launch (H100) to every call and writes and rereads the same
scratch.

Phase 2, the product. y^T tile (BLOCK_N, BLOCK_M) = W tile @ xq^T: the weight is the MMA's row
side (wgmma's register operand on sm_90), the activation codes (16-byte loads from the
scratch, no masks) the column side, so at M <= 16 the 16-wide column side wastes nothing of
the weight stream. Packed weights come in the A8 layout (``to_a8_tiles``: the tile layout of
``quant.packing.to_tiles`` with bytes for its int16 words; 3-bit codes held as 4-bit codes),
made once per weight and cached: shift j of a loaded (BLOCK_N, E) byte tile, masked, is an
int8 tile of codes for K range [jE, (j + 1)E) of the tile (one AND per four codes, one shift
per four codes for j > 0), multiplied as it is on int8 tensor cores with int32 accumulation
(8-bit codes are shifted by -128 into int8 with one XOR, the zero point shifted to match).
With one group across K (per-channel; int8_linear) the int32 sums run over all of K; otherwise
each group's int32 partial is scaled once (acc += part * s), the scales of a step's 4 groups
coming with one load per row. The zero point is taken out once in the epilogue:
sum_k xq (q - z) s = sum_g s_g P_g - sum_g (s z)_g X_g, X_g the group's code sums from phase
1, the second term (BLOCK_N, groups) x (groups, BLOCK_M) products in tf32x3 on the tensor
cores (about fp32's precision). The token scale is applied last (NaN rows come out NaN).
fp8: e4m3 codes on fp8 wgmma with fp32 accumulation.

Small M splits K over programs; the split is reduced in the same launch (fp32 partials, a
ticket per output tile, the last program sums, adds the bias and writes y:
``triton_common._store_or_reduce``). The counters (items, programs done, row tiles, tickets) come zeroed from
``triton_quant._locks`` and the last program to finish zeroes them again.
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from .triton_common import (
    _store_or_reduce,
    interp_bf16,
    output_for,
    split_over_k,
    split_partials,
)
from .triton_lowrank import _wait
from .triton_quant import _act_codes, _device_info, _locks, _row_scale

# --------------------------------------------------------------------------------------------
# Kernel


@triton.jit
def _quantize_item(
    x_ptr, xq_ptr, xs_ptr, xsum_ptr, row0, M, K, KP, G, NG, NGP, stride_xm,
    FP8: tl.constexpr, EMULATE_FP8: tl.constexpr, SUMS: tl.constexpr,
    QROWS: tl.constexpr, QK: tl.constexpr, PADK: tl.constexpr,
):  # fmt: skip
    """Codes, scales and group code sums of rows [row0, row0 + QROWS) (scratch rows exist
    past M: they get scale 1 and codes 0)."""
    rows = (row0 + tl.arange(0, QROWS)).to(tl.int64)
    mask_r = rows < M
    x_rows = x_ptr + rows[:, None] * stride_xm
    q_rows = xq_ptr + rows[:, None] * KP
    offs_q = tl.arange(0, QK)
    amax = tl.zeros((QROWS, QK), dtype=tl.float32)
    for k0 in range(0, K, QK):
        mask = mask_r[:, None] & (k0 + offs_q < K)[None, :]
        x = tl.load(x_rows + (k0 + offs_q)[None, :], mask=mask, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)), propagate_nan=tl.PropagateNan.ALL)
    amax = tl.max(tl.where(amax != amax, float("inf"), amax), axis=1)  # NaN -> inf, then max
    scale = _row_scale(amax, FP8)
    tl.store(xs_ptr + rows, scale)
    # per group, in chunks of QK (a chunk never straddles two groups)
    for g in range(0, NG):
        gsum = tl.zeros((QROWS,), dtype=tl.int32)
        for c0 in range(0, G, QK):
            offs = g * G + c0 + offs_q
            mask = (c0 + offs_q < G) & (offs < K)
            x = tl.load(x_rows + offs[None, :], mask=mask_r[:, None] & mask[None, :], other=0.0)
            q = _act_codes(x, scale[:, None], FP8, EMULATE_FP8, xq_ptr.dtype.element_ty)
            tl.store(q_rows + offs[None, :], q, mask=mask[None, :])
            if SUMS:
                gsum += tl.sum(q.to(tl.int32), axis=1)
        if SUMS:
            tl.store(xsum_ptr + rows * NGP + g, gsum.to(tl.float32))
    if SUMS:  # the padding groups of the sums (read unmasked by the epilogue) hold 0
        offs_g = NG + tl.arange(0, 64)
        tl.store(xsum_ptr + rows[:, None] * NGP + offs_g[None, :],
                 tl.zeros((QROWS, 64), dtype=tl.float32), mask=(offs_g < NGP)[None, :])  # fmt: skip
    # the K padding of the scratch (to whole K tiles) holds code 0
    offs = K + tl.arange(0, PADK)
    zero = tl.zeros((QROWS, PADK), dtype=xq_ptr.dtype.element_ty)
    tl.store(q_rows + offs[None, :], zero, mask=(offs < KP)[None, :])


@triton.jit
def _w_codes(b, j: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """Slice j of a byte tile of the A8 layout as int8 codes (8 bits: q - 128, one XOR).

    ASM (GPUs): four bytes share a 32-bit register, so one AND (after one SHF for j > 0)
    makes four codes. Written as PTX because Triton lowers 8-bit integer ops per byte and
    repacks them with PRMT. The plain ops compute the same function and are what the CPU
    interpreter checks.
    """
    MASK: tl.constexpr = (1 << BITS) - 1
    if ASM:
        if BITS == 8:
            asm: tl.constexpr = "xor.b32 $0, $1, 0x80808080;"
        elif j == 0:
            asm: tl.constexpr = f"and.b32 $0, $1, {MASK * 0x01010101};"
        else:
            asm: tl.constexpr = (
                f"{{ .reg .b32 t; shr.b32 t, $1, {BITS * j}; and.b32 $0, t, {MASK * 0x01010101}; }}"
            )
        return tl.inline_asm_elementwise(asm, "=r,r", [b], dtype=tl.int8, is_pure=True, pack=4)
    if BITS == 8:
        return b ^ -128  # q - 128 == q ^ 0x80 in 8 bits
    return ((b.to(tl.uint8, bitcast=True) >> (BITS * j)) & MASK).to(tl.int8)


@triton.jit
def _pick(s, i: tl.constexpr):
    """Column i of a (R, 4) register tile, by two halving splits (no data movement where a
    thread holds a row's 4 values, as the 16-byte loads leave them)."""
    a, b = tl.split(tl.reshape(s, (s.shape[0], 2, 2)))
    s = b if (i % 2) == 1 else a
    a, b = tl.split(s)
    return b if (i // 2) == 1 else a


@triton.jit
def _first_half(s):
    """Columns [0, C / 2) of a (R, C) register tile."""
    a, b = tl.split(tl.permute(tl.reshape(s, (s.shape[0], 2, s.shape[1] // 2)), (0, 2, 1)))
    return a


@triton.jit
def _a8_matmul_kernel(
    x_ptr, xq_ptr, xs_ptr, xsum_ptr, w_ptr, s_ptr, sb_ptr, z_ptr, zb_ptr, b_ptr, y_ptr,
    part_ptr, cnt_ptr, M, N, K, KP, NG, NGP, k_split, stride_xm, stride_wn, stride_sn, stride_ym,
    G: tl.constexpr,
    T: tl.constexpr,
    BITS: tl.constexpr,
    ASM: tl.constexpr,
    W_RAW8: tl.constexpr,
    FP8: tl.constexpr,
    EMULATE_FP8: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    INT_ACC: tl.constexpr,
    EVEN_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    RNE_BF16: tl.constexpr,
    QROWS: tl.constexpr,
    QK: tl.constexpr,
    PADK: tl.constexpr,
    GC: tl.constexpr,
    SWIN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """See the module docstring. cnt_ptr (int32, zero on entry and exit): [0] phase-1 items
    taken, [1] programs done, [2, 2 + m_tiles) phase-1 items finished per row tile, then one
    split-K ticket per output tile."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    m_tiles = tl.cdiv(M, BLOCK_M)
    # ---- phase 1: take quantizer items until none is left
    n_items = tl.cdiv(M, QROWS)
    item = tl.atomic_add(cnt_ptr, 1, sem="relaxed")
    while item < n_items:
        _quantize_item(
            x_ptr, xq_ptr, xs_ptr, xsum_ptr, item * QROWS, M, K, KP, G, NG, NGP, stride_xm,
            FP8, EMULATE_FP8, HAS_ZERO, QROWS, QK, PADK,
        )  # fmt: skip
        tl.debug_barrier()  # every thread's codes are written before the arrival is published
        tl.atomic_add(cnt_ptr + 2 + item * QROWS // BLOCK_M, 1, sem="release")
        item = tl.atomic_add(cnt_ptr, 1, sem="relaxed")
    # ---- phase 2: this program's output tile, once its rows are quantized
    _wait(cnt_ptr + 2 + pid_m, tl.cdiv(tl.minimum(BLOCK_M, M - pid_m * BLOCK_M), QROWS))
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1)  # rows past N read row N - 1; never stored
    offs_m = tl.arange(0, BLOCK_M)
    m0 = pid_m.to(tl.int64) * BLOCK_M
    # the scratch has whole row tiles and K tiles: unmasked, contiguous 16-byte loads
    xq_cols = xq_ptr + (m0 + offs_m)[None, :] * KP
    t_lo = pid_k * (k_split // BLOCK_K)
    t_hi = tl.minimum(t_lo + k_split // BLOCK_K, tl.cdiv(K, BLOCK_K))
    if INT_ACC or FP8:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32 if FP8 else tl.int32)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if W_RAW8:
        offs_k = tl.arange(0, BLOCK_K)
        w_rows = w_ptr + rows[:, None] * stride_wn
        for t in range(t_lo, t_hi):
            k0 = t * BLOCK_K
            if EVEN_K:
                w = tl.load(w_rows + (k0 + offs_k)[None, :])
            else:
                w = tl.load(w_rows + (k0 + offs_k)[None, :], mask=(k0 + offs_k < K)[None, :],
                            other=0.0)  # fmt: skip
            xt = tl.load(xq_cols + (k0 + offs_k)[:, None])
            acc = tl.dot(w, xt, acc)  # int8: int32, exact; fp8: fp32
    else:
        # one iteration: BLOCK_K codes = U tiles of the layout (T codes each) = GPI groups
        CB: tl.constexpr = 8 // BITS
        E: tl.constexpr = T // CB
        U: tl.constexpr = BLOCK_K // T
        GPI: tl.constexpr = 4  # groups per step (k_step: T / G <= CB <= 4 as G >= E)
        offs_e = tl.arange(0, E)
        w_rows = w_ptr + rows[:, None] * stride_wn
        sb_rows = sb_ptr + rows[:, None] * NGP
        for t in range(t_lo, t_hi):
            k0 = t * BLOCK_K
            if not INT_ACC:
                # the iteration's GPI group scales of each row: one 16-byte run per row (the
                # scales regrouped once per weight, see _blocks). With more threads than rows
                # (64 x 128 tiles, 8 warps) that run is split over two threads, 8-byte loads;
                # a window of 2 GPI groups (this step's and the next's, which the next step
                # reads again, from L1 or L2) gives each thread 16 bytes, and the unused half
                # is dropped in registers (sm_90 compile, 4096x11008 g128, M = 197 and 4096,
                # W2-W8: LDG.64 -> LDG.128, 2-4 more registers (195-208, no spills), 2 KB more
                # shared memory for the layout change, the same SASS instructions per code
                # and predicted times, e.g. W4A8 1.94, 23.18 us at M = 197)
                if SWIN > GPI:
                    sblk = _first_half(tl.load(sb_rows + (t * GPI + tl.arange(0, SWIN))[None, :]))
                else:
                    sblk = tl.load(sb_rows + (t * GPI + tl.arange(0, GPI))[None, :])
            for u in tl.static_range(U):
                h = tl.load(w_rows + ((t * U + u) * E + offs_e)[None, :])
                for j in tl.static_range(CB):
                    w = _w_codes(h, j, BITS, ASM)
                    xt = tl.load(xq_cols + (k0 + u * T + j * E + offs_e)[:, None])
                    if INT_ACC:
                        acc = tl.dot(w, xt, acc)  # int32 over all of K, exact
                    else:
                        if (u * T + j * E) % G == 0:
                            part = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
                        part = tl.dot(w, xt, part)  # int32 over the group, exact
                        if (u * T + j * E + E) % G == 0:  # the group's last slice
                            sc = _pick(sblk, (u * T + j * E) // G)
                            acc += part.to(tl.float32) * sc[:, None]
    # ---- epilogue: weight scales, zero point, token scales
    offs_mm = m0 + offs_m
    if INT_ACC:
        s = tl.load(s_ptr + rows * stride_sn)
        accf = acc.to(tl.float32)
        if HAS_ZERO:
            # z * (code sum of the row), taken out once: by the program holding K's first
            # tile (the sums cover all of K)
            OFF: tl.constexpr = 128.0 if BITS == 8 else 0.0
            z = tl.load(z_ptr + rows * stride_sn) - OFF
            xsum = tl.load(xsum_ptr + offs_mm * NGP)
            accf -= tl.where(pid_k == 0, z[:, None] * xsum[None, :], 0.0)
        acc = accf * s[:, None]
    elif FP8:
        s = tl.load(s_ptr + rows * stride_sn)
        acc = acc * s[:, None]
    elif HAS_ZERO:
        # sum over this program's groups of (s z)_g X_g: (BLOCK_N, GC) @ (GC, BLOCK_M) products
        # on the tensor cores (tf32x3: about fp32's precision), once per output tile. s z is
        # regrouped once per weight like the scales (zero_blocks; 8 bits: z - 128) and the
        # sums are padded with zeros, so the loads are unmasked 16-byte runs; the groups of a
        # chunk past this program's are zeroed in registers.
        g_lo = t_lo * (BLOCK_K // G)
        g_hi = t_hi * (BLOCK_K // G)
        offs_c = tl.arange(0, GC)
        # not pipelined: pipelined, this once-per-tile loop took more instructions than the
        # main loop and spilled 320 bytes (W2A8 K = 11008, M = 1, sm_90 compile)
        for g0 in tl.range(g_lo, g_hi, GC, num_stages=1):
            sz = tl.load(zb_ptr + rows[:, None] * NGP + (g0 + offs_c)[None, :])
            sz = tl.where((g0 + offs_c < g_hi)[None, :], sz, 0.0)
            xg = tl.load(xsum_ptr + offs_mm[None, :] * NGP + (g0 + offs_c)[:, None])
            acc -= tl.dot(sz, xg, input_precision="tf32x3")
    xs = tl.load(xs_ptr + offs_mm)
    acc = acc * xs[None, :]  # NaN for a row holding NaN or inf
    # ---- store, or reduce the split over K in this launch (tickets after the row counters)
    mask_m = offs_m < M - pid_m * BLOCK_M
    mask_y = (offs_n < N)[:, None] & mask_m[None, :]
    y_ptrs = y_ptr + (m0 + offs_m)[None, :] * stride_ym + offs_n[:, None]
    _store_or_reduce(
        acc, y_ptrs, mask_y, b_ptr + rows[:, None], None, part_ptr, mask_m[None, :],
        cnt_ptr + 2 + m_tiles, pid_m * tl.num_programs(0) + pid_n, pid_k,
        HAS_BIAS, SPLIT_K, RNE_BF16,
    )  # fmt: skip
    # ---- the last program to finish zeroes the counters for the next launch
    tl.debug_barrier()
    nprog = tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2)
    done = tl.atomic_add(cnt_ptr + 1, 1, sem="acq_rel")
    if done == nprog - 1:
        for f0 in range(0, m_tiles, 128):
            offs_f = f0 + tl.arange(0, 128)
            tl.store(cnt_ptr + 2 + offs_f, tl.zeros((128,), dtype=tl.int32), mask=offs_f < m_tiles)
        tl.atomic_xchg(cnt_ptr, 0, sem="relaxed")
        tl.atomic_xchg(cnt_ptr + 1, 0, sem="relaxed")


# --------------------------------------------------------------------------------------------
# The weight in the tile layout

_CACHE: dict = {}  # (what, id(tensor)) -> (weak reference to tensor, key, derived tensor)


def _cached(what: str, t: torch.Tensor, key: tuple, make):
    """make(), kept while ``t`` lives and is not modified in place (its version is in the key)."""
    ident = (what, id(t))
    key = (t._version, *key)
    hit = _CACHE.get(ident)
    if hit is not None and hit[0]() is t and hit[1] == key:
        return hit[2]
    out = make()
    ref = weakref.ref(t, lambda _, i=ident: _CACHE.pop(i, None))
    _CACHE[ident] = (ref, key, out)
    return out


def tile_for(bits: int, group_size: int, k: int) -> int | None:
    """Codes per K tile of the A8 layout for this weight, None where its groups do not fit.

    Each shift of a byte tile is one MMA of E = T / CB codes along K (CB = 8 / bits codes a
    byte). E = 128 where the groups allow (T = 512, 256, 128 at 2, 4, 8 bits), else 64 or 32
    (int8 MMAs take 32 along K): at M <= 16 the column side of x codes for one MMA is then
    E x 16 bytes, 16 bytes a thread at 128 threads (LDGSTS.64 at E = 64, sm_90 compile). A group
    spans whole tiles, or whole E-slices of one tile. 3-bit codes are held as 4-bit codes.
    """
    b = 4 if bits == 3 else bits
    if b not in (2, 4, 8):
        return None
    cb = 8 // b
    for e in (128, 64, 32):
        t = cb * e
        if group_size == k or group_size % t == 0 or (t % group_size == 0 and group_size % e == 0):
            return t
    return None


def k_step(tile: int, group_size: int, k: int) -> int:
    """Codes per main-loop iteration: one tile per channel; else whole tiles holding at least
    four groups, whose scales then come with one 16-byte load per row."""
    # a group holds at least one E-slice of a tile (E = tile / CB >= tile / 4): tile / G <= 4,
    # so the step is always exactly 4 groups
    return tile if group_size == k else 4 * group_size


def to_a8_tiles(packed, bits: int, k: int, tile: int, kpad: int) -> torch.Tensor:
    """sk-pack-v1 words (N, W) -> the A8 layout: int8 (N, kpad / CB), rows padded with code 0
    to kpad codes (whole main-loop steps).

    Bytes, CB = 8 / bits codes each (3 bits: as 4-bit codes). In the K tile starting at code
    t, byte e (0 <= e < E = tile / CB) holds codes t + j*E + e for j = 0..CB-1 at bits
    [bits*j, bits*j + bits): the tile layout of ``quant.packing.to_tiles`` with bytes for its
    int16 words. Four bytes of a register then unpack to four int8 MMA operands with one AND
    (and one shift), where int16 words cost a byte permute per code (sm_90 compile, W4A8,
    M = 4096: 76 PRMT per 64 codes in the main loop on the int16 layout).
    """
    from ..quant.packing import unpack

    b = 4 if bits == 3 else bits
    cb = 8 // b
    n = packed.shape[0]
    codes = unpack(packed, bits, k).to(torch.int32)
    codes = torch.nn.functional.pad(codes, (0, kpad - k)).view(n, -1, cb, tile // cb)
    shifts = (torch.arange(cb, device=packed.device, dtype=torch.int32) * b).view(1, 1, cb, 1)
    words = (codes << shifts).sum(2)  # disjoint bit fields: the sum is an OR; < 256
    return torch.where(words >= 128, words - 256, words).to(torch.int8).reshape(n, kpad // cb)


def tiles_of(packed, bits: int, k: int, tile: int, kpad: int):
    """The A8 layout of a packed weight, made on first use and kept while the weight lives."""
    return _cached("tiles", packed, (bits, k, tile, kpad),
                   lambda: to_a8_tiles(packed, bits, k, tile, kpad))  # fmt: skip


def _blocks(what: str, t, width: int, values, *also):
    """values() (N, groups) as (N, width) fp32, zero-padded: a step's 4 groups are one aligned
    16-byte run of a row. Kept while ``t`` lives and it and ``also`` are not modified."""

    def make():
        v = values()
        out = torch.zeros((v.shape[0], width), dtype=torch.float32, device=v.device)
        out[:, : v.shape[1]] = v
        return out

    return _cached(what, t, (width, *(a._version for a in also), *(id(a) for a in also)), make)


# --------------------------------------------------------------------------------------------
# Launch

GEMV_MAX_M = 16  # up to 16 rows of x share one weight pass (the MMA's 16-wide column side)


def a8_config(m: int, n: int, k: int, step: int, bits: int, per_channel: bool, num_sms: int,
              interpret: bool):  # fmt: skip
    """(BLOCK_M, BLOCK_N, SPLIT_K, k_split, QROWS, QK, warps, stages).

    M <= 16: 16-wide column tiles, 128 weight rows, 4 warps. M > 64 with one group across K:
    128 x 128, 8 warps (int32 sums over all of K). Otherwise 64 x 128 with 8 warps: each
    group's int32 partial is scaled into fp32 (one I2F and one FFMA per accumulator element
    per group), 1 instruction per code at 64 columns against 2 at 128 (sm_90 compile, W4A8
    M = 4096: 3.9 SASS instructions per code at 128 x 128, 2.0 here); with 4 warps the same
    tile needs 255 registers and spills 472 bytes. K is split until there are two programs
    per SM, reduced in the same launch. Quantizer items of 8 rows by 512-wide K chunks: 4096
    elements, 32 per thread at 4 warps.

    Pipeline stages (the weight tile and the x codes of one step each): 2 to 4, within 64 KB
    at M <= 16 (two CTAs per SM; 4 x 64 KB at W8 left one, 226 KB); above, one CTA per SM
    (registers): 160 KB for the 128 x 128 int32 tiles (4 stages of 32 KB: the census's
    latency term at int8 M = 4096 predicts 272 us, 541 us at 2 stages), 96 KB for the grouped
    tiles, whose 512-code steps are 48-96 KB (a third stage adds pipeline bookkeeping to the
    main loop, 2.0 -> 2.03 SASS instructions per 2-bit code, and little else: they are
    issue-bound).
    """
    if interpret:  # small tiles; several quantizer items and a split over K still exercised
        block_m, block_n, warps, qrows, qk = (16 if m <= GEMV_MAX_M else 32), 16, 1, 4, 32
    elif m <= GEMV_MAX_M:
        block_m, block_n, warps, qrows, qk = 16, 128, 4, 8, 512
    elif per_channel and m > 64:
        block_m, block_n, warps, qrows, qk = 128, 128, 8, 8, 512
    else:
        block_m, block_n, warps, qrows, qk = 64, 128, 8, 8, 512
    stage = block_n * step * bits // 8 + step * block_m
    budget = (64 if m <= GEMV_MAX_M else 160 if block_m == 128 else 96) * 1024
    stages = 1 if interpret else max(2, min(4, budget // stage))
    tiles = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    per, split = split_over_k(triton.cdiv(k, step), tiles, num_sms, interpret)
    return block_m, block_n, split, per * step, qrows, qk, warps, stages


def _launch(x, w, s, z, bias, n: int, k: int, group_size: int, bits: int, tile: int, step: int,
            fp8: bool):  # fmt: skip
    m = x.shape[0]
    _, num_sms, interpret = _device_info(x)
    y, x = output_for(x, n)
    if m == 0 or n == 0:
        return y
    groups = k // group_size
    code_bits = 8 if bits in (0, 8) else 4 if bits == 3 else bits
    block_m, block_n, split, k_split, qrows, qk, warps, stages = a8_config(
        m, n, k, step, code_bits, groups == 1, num_sms, interpret
    )
    n_tiles, m_tiles = triton.cdiv(n, block_n), triton.cdiv(m, block_m)
    steps = triton.cdiv(k, step)
    kp = steps * step
    raw = bits == 0
    has_zero = z is not None
    qdt = torch.float8_e4m3fn if fp8 else torch.int8
    xq = torch.empty((m_tiles * block_m, kp), dtype=qdt, device=x.device)
    xs = torch.empty((m_tiles * block_m,), dtype=torch.float32, device=x.device)
    # group scales, s * z and code sums per row: a step's 4 groups a 16-byte run; padded past
    # the last step by one epilogue chunk (read unmasked), which also holds the last step's
    # window of 8 scales
    ngp = triton.cdiv(steps * 4, 16) * 16 + 16 if groups > 1 else 1
    xsum = torch.empty((m_tiles * block_m, ngp) if has_zero else (1,), dtype=torch.float32,
                       device=x.device)  # fmt: skip
    cnt = _locks(x.device, 2 + m_tiles + (m_tiles * n_tiles if split > 1 else 0))
    part = split_partials(y, split, m_tiles * n_tiles, block_n * block_m)
    sb = _blocks("scales", s, ngp, lambda: s) if groups > 1 else s
    # scales read per step: the step's 4 groups, or a window of 8 where the tile has fewer
    # rows than threads (see the kernel's main loop); the CPU interpreter takes the window
    # above 16 rows, so the tests check both
    swin = 8 if (m > GEMV_MAX_M if interpret else block_n < warps * 32) else 4
    zb = s
    if groups > 1 and has_zero:
        off = 128.0 if bits == 8 else 0.0
        zb = _blocks("sz", z, ngp, lambda: s * (z - off), s)
    _a8_matmul_kernel[(n_tiles, m_tiles, split)](
        x, xq, xs, xsum, w, s, sb, z if has_zero else s, zb,
        bias if bias is not None else y, y, part, cnt,
        m, n, k, kp, groups, ngp, k_split, x.stride(0), w.stride(0), s.stride(0), y.stride(0),
        G=group_size,
        T=tile,
        BITS=8 if raw else (4 if bits == 3 else bits),
        ASM=not interpret,
        W_RAW8=raw,
        FP8=fp8,
        EMULATE_FP8=fp8 and interpret,
        HAS_ZERO=has_zero,
        INT_ACC=not fp8 and groups == 1,
        EVEN_K=k % step == 0,
        HAS_BIAS=bias is not None,
        SPLIT_K=split,
        RNE_BF16=interp_bf16(x),
        QROWS=qrows,
        QK=qk,
        PADK=triton.next_power_of_2(step),  # >= the K padding (steps of 4 groups of 96: 384)
        GC=16,
        SWIN=swin,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=step,
        num_warps=warps,
        num_stages=stages,
    )  # fmt: skip
    return y


def quant_linear(x, packed, scales, zeros, bits, group_size, k, bias):
    """y (M, N) = per-token int8 x times a packed 2/3/4/8-bit weight (act_bits=8); None where
    the weight's groups do not fit this kernel (see :func:`tile_for`)."""
    tile = tile_for(bits, group_size, k)
    if tile is None:
        return None
    n = packed.shape[0]
    step = k_step(tile, group_size, k)
    kpad = triton.cdiv(k, step) * step
    if n * kpad >= 2**31:
        return None  # 32-bit offsets inside the weight
    tiles = tiles_of(packed, bits, k, tile, kpad)
    return _launch(x, tiles, scales.contiguous(), zeros.contiguous(), bias, n, k, group_size,
                   bits, tile, step, fp8=False)  # fmt: skip


def quant_linear_a8(x, packed, scales, zeros, bits, group_size, k, act_bits, bias):
    """quant_linear's Triton path for act_bits=8 (the op layer's entry): this kernel, or the
    generic ``_quant_matmul_kernel`` for groups it cannot take (not a multiple of 32, or
    neither a multiple nor a divisor of the K tile: see :func:`tile_for`)."""
    if act_bits != 8:
        raise ValueError(f"quant_linear_a8: act_bits must be 8, got {act_bits!r}")
    y = quant_linear(x, packed, scales, zeros, bits, group_size, k, bias)
    if y is None:
        from . import triton_quant as tq

        y = tq.quant_linear(x, packed, scales, zeros, bits, group_size, k, 8, bias)
    return y


RAW8_TILE = 128  # codes per K step of a plain 8-bit weight: 8 16-byte loads per row


def raw8_linear(x, weight, weight_scale, bias):
    """x quantized per token to the weight's 8-bit type (int8, or float8 e4m3 on sm_89+) times
    the plain 8-bit weight (N, K) with per-row float32 scales (N,)."""
    n, k = weight.shape
    fp8 = weight.dtype != torch.int8
    return _launch(x, weight.contiguous(), weight_scale.contiguous(), None, bias, n, k, k, 0,
                   RAW8_TILE, RAW8_TILE, fp8=fp8)  # fmt: skip
