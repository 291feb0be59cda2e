"""Small Triton helpers shared by the quantized-matmul and low-rank kernels: products,
rounding, tiles."""

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


def interp_bf16(x) -> bool:
    """bf16 under the CPU interpreter (see ``_round`` and ``_dot``)."""
    import torch

    return x.dtype == torch.bfloat16 and x.device.type == "cpu"


def dot_fp32(x) -> bool:
    import torch

    return x.dtype == torch.float32 or interp_bf16(x)
