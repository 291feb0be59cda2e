"""The low-rank MLP block in one Triton launch:  y = act(x v1^T u1^T + b1) v2^T u2^T + b2.

With both linears low-rank, everything between x and y is narrow except the hidden
activations h (M x H): t1 = x v1[:r1]^T is M x r1, t2 = h v2[:r2, :H]^T is M x r2. The kernel
never writes h: it runs three phases in one launch, each spread over every SM, with the same
in-kernel hand-off as the two-phase low-rank kernel (see triton_lowrank's module doc):

A. (row tile, K slice) items: partial t1 sums, added into an fp32 scratch with atomics; each
   item then bumps its row tile's first counter.
B. (row tile, hidden chunk) items: wait for the row tile's t1, then h_chunk = act(t1 u1_chunk^T
   + b1_chunk) (on chip, rounded to the input dtype as the unfused block rounds h), and its
   partial t2 += h_chunk v2[:, chunk]^T, added into a second scratch; bump the second counter.
C. (row tile, output tile) items: wait for the row tile's t2, y_tile = t2 u2_tile^T + b2.

Every program finishes its phase-A items before it waits, and its phase-B items before its
phase-C items; B waits only on A and C only on B, and all programs are resident (grid <= SMs),
so no wait can deadlock. The last phase-C reader of a row tile zeroes its scratch rows and
counters for the next launch. At one ViT-B image (M = 197, 768 -> 3072 -> 768, ranks <= 128)
the block moves x, the four factors and y (~1.6 MB) in one launch, against two launches and
two passes over h (1.2 MB each) for fc1 then fc2, and three launches on 9.4 MB of weights for
the dense block. The fp32 atomics make t1's and t2's summation order, and their last bits,
vary between runs. Under the CPU interpreter, which runs programs in turn, the phases are
three launches of the same kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import dot_fp32, interp_bf16
from .triton_lowrank import (
    ACTS,
    SCRATCH,
    _act,
    _device_info,
    _dot,
    _epilogue_store,
    _load_tile,
    _round,
    _t_partials,
    _wait,
)

# Beyond this many rows the hidden chunks alone fill the GPU several times over and the two
# launches (fc1 + activation, then fc2) lose little; the scratch (M x (r1 + r2) fp32) grows.
MAX_FUSED_M = 4096
MAX_RANK = 128


@triton.jit
def _lowrank_mlp_kernel(
    x_ptr, v1_ptr, u1_ptr, b1_ptr, v2_ptr, u2_ptr, b2_ptr, y_ptr, t1_ptr, t2_ptr, cnt_ptr,
    M, K, H, N, R1, R2, k_per_split,
    stride_xm, stride_xk, stride_v1r, stride_v1k, stride_u1h, stride_u1r, stride_b1,
    stride_v2r, stride_v2h, stride_u2n, stride_u2r, stride_b2, stride_ym, stride_yn,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    ACT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    PHASES: tl.constexpr,
    K_SPLITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R1: tl.constexpr,
    BLOCK_R2: tl.constexpr,
    STAGES: tl.constexpr,
):  # fmt: skip
    """PHASES: bit 1 phase A, 2 phase B, 4 phase C (7 on a GPU).

    t1_ptr (m_tiles * BLOCK_M, BLOCK_R1) and t2_ptr (m_tiles * BLOCK_M, BLOCK_R2) fp32 and
    cnt_ptr (3 * m_tiles) int32 are zero on entry and on exit.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    dtype = y_ptr.dtype.element_ty
    m_tiles = tl.cdiv(M, BLOCK_M)
    h_chunks = tl.cdiv(H, BLOCK_H)
    n_tiles = tl.cdiv(N, BLOCK_N)
    offs_r1 = tl.arange(0, BLOCK_R1).to(tl.int64)
    offs_r2 = tl.arange(0, BLOCK_R2).to(tl.int64)
    mask_r1 = offs_r1 < R1
    mask_r2 = offs_r2 < R2
    if PHASES % 2 == 1:
        _t_partials(
            x_ptr, v1_ptr, t1_ptr, cnt_ptr, M, K, k_per_split, stride_xm, stride_xk, stride_v1r,
            stride_v1k, offs_r1, mask_r1, pid, nprog, K_SPLITS, BLOCK_M, BLOCK_R1, BLOCK_K,
            STAGES, DOT_FP32,
        )  # fmt: skip
    if (PHASES // 2) % 2 == 1:
        for item in range(pid, m_tiles * h_chunks, nprog):
            tile_m = item // h_chunks
            offs_m = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
            offs_h = ((item % h_chunks) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
            mask_h = offs_h < H
            _wait(cnt_ptr + tile_m, K_SPLITS)
            t1_offs = offs_m[:, None] * BLOCK_R1 + offs_r1[None, :]
            t1 = _round(tl.load(t1_ptr + t1_offs, cache_modifier=".cg"), dtype, RNE_BF16)
            u1t = _load_tile(u1_ptr, offs_r1, offs_h, stride_u1r, stride_u1h, mask_r1, mask_h)
            h = _dot(t1, u1t, tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32), DOT_FP32)
            if HAS_B1:
                rows = tl.arange(0, 16)
                bt = tl.load(
                    b1_ptr + rows[:, None] * 0 + offs_h[None, :] * stride_b1,
                    mask=(rows == 0)[:, None] & mask_h[None, :],
                    other=0.0,
                )
                ones = tl.full((BLOCK_M, 16), 1.0, dtype=tl.float32).to(bt.dtype)
                h = _dot(ones, bt, h, DOT_FP32)
            # Columns of the chunk past H are 0 (u1 rows masked, bias masked) and act(0) = 0
            # for every ACT; v2's masked columns make them add nothing anyway.
            h = _round(_act(h, ACT), dtype, RNE_BF16)
            v2t = _load_tile(v2_ptr, offs_h, offs_r2, stride_v2h, stride_v2r, mask_h, mask_r2)
            part = _dot(h, v2t, tl.zeros((BLOCK_M, BLOCK_R2), dtype=tl.float32), DOT_FP32)
            t2_offs = offs_m[:, None] * BLOCK_R2 + offs_r2[None, :]
            tl.atomic_add(t2_ptr + t2_offs, part, sem="relaxed")
            tl.debug_barrier()
            tl.atomic_add(cnt_ptr + m_tiles + tile_m, 1, sem="release")
    if PHASES >= 4:
        for item in range(pid, m_tiles * n_tiles, nprog):
            tile_m = item // n_tiles
            offs_m = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
            offs_n = ((item % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            mask_m = offs_m < M
            mask_n = offs_n < N
            _wait(cnt_ptr + m_tiles + tile_m, h_chunks)
            t2_offs = offs_m[:, None] * BLOCK_R2 + offs_r2[None, :]
            t2 = _round(tl.load(t2_ptr + t2_offs, cache_modifier=".cg"), dtype, RNE_BF16)
            u2t = _load_tile(u2_ptr, offs_r2, offs_n, stride_u2r, stride_u2n, mask_r2, mask_n)
            y = _dot(t2, u2t, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32)
            _epilogue_store(
                y, b2_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, stride_b2, stride_ym,
                stride_yn, HAS_B2, 0, DOT_FP32, RNE_BF16,
            )  # fmt: skip
            tl.debug_barrier()
            left = tl.atomic_add(cnt_ptr + 2 * m_tiles + tile_m, 1, sem="acq_rel")
            if left == n_tiles - 1:  # the row tile's last reader cleans up for the next launch
                t1_offs = offs_m[:, None] * BLOCK_R1 + offs_r1[None, :]
                tl.store(t1_ptr + t1_offs, tl.zeros((BLOCK_M, BLOCK_R1), dtype=tl.float32))
                tl.store(t2_ptr + t2_offs, tl.zeros((BLOCK_M, BLOCK_R2), dtype=tl.float32))
                tl.atomic_xchg(cnt_ptr + tile_m, 0, sem="relaxed")
                tl.atomic_xchg(cnt_ptr + m_tiles + tile_m, 0, sem="relaxed")
                tl.atomic_xchg(cnt_ptr + 2 * m_tiles + tile_m, 0, sem="relaxed")


def fits(m: int, rank1: int, rank2: int) -> bool:
    """Whether the one-launch kernel takes this block (else: two launches)."""
    return m <= MAX_FUSED_M and max(rank1, rank2) <= MAX_RANK


def plan(m: int, k: int, h: int, n: int, rank1: int, rank2: int, num_sms: int, interpret: bool):
    """Tiles and grid: (bm, bh, bn, bk, br1, br2, warps, stages, grid, k_splits, k_per_split).

    64-row tiles (one wgmma warpgroup); 64-wide hidden chunks keep the phase-B registers (t1,
    the h tile, the t2 partial) within budget at ranks 128.
    """
    br1 = max(16, triton.next_power_of_2(rank1))
    br2 = max(16, triton.next_power_of_2(rank2))
    if interpret:
        bm, bh, bn, bk, warps, stages = 16, 32, 32, 32, 1, 1
    else:
        bm, bh, bn, bk, warps, stages = 64, 64, 64 if br2 > 64 else 128, 64, 4, 2
    m_tiles = max(1, triton.cdiv(m, bm))
    chunks = triton.cdiv(k, bk)
    per = triton.cdiv(chunks, max(1, min(chunks, num_sms // m_tiles)))
    k_splits = triton.cdiv(chunks, per)
    work = m_tiles * max(k_splits, triton.cdiv(h, bh), triton.cdiv(n, bn))
    return bm, bh, bn, bk, br1, br2, warps, stages, min(num_sms, work), k_splits, per * bk


def lowrank_mlp(x2, u1, v1, rank1: int, b1, u2, v2, rank2: int, b2, hidden: int, n: int, act):
    """y (M, n) = act(x2 v1[:r1]^T u1[:hidden, :r1]^T + b1) v2[:r2, :hidden]^T u2[:n, :r2]^T
    + b2, in one launch (three under the interpreter)."""
    import torch

    m, k = x2.shape
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    if m == 0:
        return y
    _, num_sms, interpret = _device_info(x2)
    bm, bh, bn, bk, br1, br2, warps, stages, grid, k_splits, k_per = plan(
        m, k, hidden, n, rank1, rank2, num_sms, interpret
    )
    m_tiles = triton.cdiv(m, bm)
    rows = m_tiles * bm
    t, cnt = SCRATCH.get(x2.device, rows, br1 + br2, 2 * m_tiles)
    t1, t2 = t[: rows * br1], t[rows * br1 :]
    b1_ = b1 if b1 is not None else y
    b2_ = b2 if b2 is not None else y
    phases = (1, 2, 4) if x2.device.type == "cpu" else (7,)
    for ph in phases:
        _lowrank_mlp_kernel[(grid,)](
            x2, v1, u1, b1_, v2, u2, b2_, y, t1, t2, cnt,
            m, k, hidden, n, rank1, rank2, k_per,
            x2.stride(0), x2.stride(1), v1.stride(0), v1.stride(1), u1.stride(0), u1.stride(1),
            b1_.stride(0), v2.stride(0), v2.stride(1), u2.stride(0), u2.stride(1), b2_.stride(0),
            y.stride(0), y.stride(1),
            HAS_B1=b1 is not None, HAS_B2=b2 is not None, ACT=ACTS[act],
            DOT_FP32=dot_fp32(x2), RNE_BF16=interp_bf16(x2), PHASES=ph, K_SPLITS=k_splits,
            BLOCK_M=bm, BLOCK_H=bh, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R1=br1, BLOCK_R2=br2,
            STAGES=stages, num_warps=warps, num_stages=stages,
        )  # fmt: skip
    return y
