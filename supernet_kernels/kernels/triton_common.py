"""Small Triton helpers shared by the quantized-matmul and low-rank kernels: products,
rounding, tiles, the split over K reduced in one launch."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr):
    """acc + a @ b with fp32 accumulation.

    DOT_FP32 multiplies in exact fp32 ("ieee", not tf32): torch's fp32 matmul is not tf32, and
    Triton 3.8's CPU interpreter computes bf16 dots wrongly (max error 2.6e10 on a random
    16x16 bf16 product, measured), so under the interpreter bf16 tiles are widened first;
    bf16 products are exact in fp32, so the result is the same function.
    """
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _round(x, dtype: tl.constexpr, RNE_BF16: tl.constexpr):
    """fp32 -> dtype, rounding to nearest even.

    On GPUs Triton's conversion already rounds to nearest; Triton 3.8's CPU interpreter
    truncates fp32 -> bf16 (relative error 3.3e-3 vs 1.6e-3 for torch's rounding, measured
    on 4096 normal draws), so under the interpreter bf16 is rounded here by bit arithmetic.
    """
    if RNE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _load_tile(ptr, offs_r, offs_c, stride_r, stride_c, mask_r, mask_c):
    """The (rows, cols) tile ptr[offs_r[:, None] * stride_r + offs_c[None, :] * stride_c], zero
    outside mask_r x mask_c."""
    return tl.load(
        ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c,
        mask=mask_r[:, None] & mask_c[None, :],
        other=0.0,
    )


@triton.jit
def _tile_offsets(pid_m, pid_n, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """int64 row / column offsets of output tile (pid_m, pid_n) and their in-bounds masks."""
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    return offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def _store_tile(acc, y_ptrs, mask_y, b_ptrs, b_mask, HAS_BIAS: tl.constexpr,
                RNE_BF16: tl.constexpr):  # fmt: skip
    """y = acc (+ the bias, b_ptrs broadcasting over acc; b_mask None where all are valid)
    in y's dtype."""
    if HAS_BIAS:
        if b_mask is None:
            acc += tl.load(b_ptrs).to(tl.float32)
        else:
            acc += tl.load(b_ptrs, mask=b_mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, _round(acc, y_ptrs.dtype.element_ty, RNE_BF16), mask=mask_y)


@triton.jit
def _store_or_reduce(
    acc, y_ptrs, mask_y, b_ptrs, b_mask, part_ptr, mask_part, lock_ptr, tile_id, pid_k,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, RNE_BF16: tl.constexpr,
):  # fmt: skip
    """Write the fp32 tile acc (+ bias) to y; with K split over SPLIT_K programs (this one
    pid_k), reduce the split in this launch.

    Each program stores its partial (where mask_part) in part_ptr, SPLIT_K slabs of one tile
    per program of the grid's first two axes (tile_id: this tile's index among them), then
    takes a ticket from lock_ptr[tile_id]; the program that draws the last ticket sums the
    partials in the order p = 0, 1, ... (the same result whichever program finishes last), adds
    the bias, writes y and zeroes the ticket for the next launch (the launch after it on the
    stream starts once this one has ended, so the reset needs no ordering of its own).
    """
    R: tl.constexpr = acc.shape[0]
    C: tl.constexpr = acc.shape[1]
    if SPLIT_K > 1:
        tile = tile_id.to(tl.int64) * R * C + tl.arange(0, R)[:, None] * C
        tile += tl.arange(0, C)[None, :]
        tile_size = tl.num_programs(0) * tl.num_programs(1) * R * C
        tl.store(part_ptr + pid_k * tile_size + tile, acc, mask=mask_part)
        tl.debug_barrier()  # every lane's partial is written before the ticket is taken
        ticket = tl.atomic_add(lock_ptr + tile_id, 1, sem="acq_rel")
        if ticket == SPLIT_K - 1:
            acc = tl.zeros((R, C), dtype=tl.float32)
            for p in range(0, SPLIT_K):
                acc += tl.load(part_ptr + p * tile_size + tile, mask=mask_part, other=0.0,
                               cache_modifier=".cg")  # fmt: skip
            _store_tile(acc, y_ptrs, mask_y, b_ptrs, b_mask, HAS_BIAS, RNE_BF16)
            tl.atomic_xchg(lock_ptr + tile_id, 0, sem="relaxed")
    else:
        _store_tile(acc, y_ptrs, mask_y, b_ptrs, b_mask, HAS_BIAS, RNE_BF16)


def split_over_k(steps: int, tiles: int, num_sms: int, interpret: bool) -> tuple[int, int]:
    """(K steps per program, programs per output tile): as many steps per program as keep
    tiles * split >= 2 programs per SM (rounded down, so the rounding of the split never drops
    below the target); under the CPU interpreter two programs per tile, so that the reduction
    of ``_store_or_reduce`` is still exercised."""
    if interpret:
        per = max(1, triton.cdiv(steps, 2))
    else:
        per = max(1, min(steps, steps * tiles // (2 * num_sms)))
    return per, triton.cdiv(steps, per)


def split_partials(y, split: int, tiles: int, block: int):
    """The fp32 scratch of ``_store_or_reduce`` for ``tiles`` output tiles of ``block``
    elements each split over K ``split`` ways; y (any tensor, never read) where K is not split."""
    import torch

    if split == 1:
        return y
    return torch.empty((split, tiles * block), dtype=torch.float32, device=y.device)


def output_for(x, n: int):
    """(y, x): y (M, n) uninitialised in x's dtype on its device, and x with unit column
    stride (the kernels load K contiguously)."""
    import torch

    y = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
    return y, (x if x.stride(1) == 1 else x.contiguous())


def interp_bf16(x) -> bool:
    """bf16 under the CPU interpreter (see ``_round`` and ``_dot``)."""
    import torch

    return x.dtype == torch.bfloat16 and x.device.type == "cpu"


def dot_fp32(x) -> bool:
    import torch

    return x.dtype == torch.float32 or interp_bf16(x)
