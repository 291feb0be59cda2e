"""Triton kernels for the sliced low-rank GEMM  y = x @ v[:r].T @ u[:n, :r].T + bias[:n].

Two paths:

* ``_lowrank_fused_kernel``: one launch. A program owns BLOCK_M rows of x, computes its
  (BLOCK_M x r) slice of t = x @ v[:r].T into registers, then streams over its share of the
  output columns, multiplying t by tiles of u. t never reaches global memory, so the layer
  moves x, the factors and y once: at M = 16384, K = 768, N = 3072 that is 126 MB against
  the 147 MB of the two-launch version plus one launch less (which matters at M = 197,
  where each launch is ~5 us of a ~10 us layer, see ANCHORS: unfused 10.6 us vs dense 7.6 us).
  The grid's second axis splits the output columns, each split recomputing its own t: at
  small M the M tiles alone leave most SMs idle, and recomputing t costs only K*r per row.
* two GEMMs (``_gemm_nt_kernel`` twice) for rank > MAX_FUSED_RANK: t as a BLOCK_M x r
  register tile (fp32 accumulator) costs BLOCK_M*r*4 bytes; at r = 512, BLOCK_M = 64 that is
  128 KB per program, past the 64K-register file of an SM, so it would spill. The boundary
  (256) is that register budget, not yet a GPU measurement: issue 5 measures it.

Every tensor is read through its strides, so u[:n, :r], v[:r] and column slices of a wider v
are used in place, without copies. Offsets are computed in int64 (a 16384 x 3072 output
already has 50M elements; larger ones pass 2^31).
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_FUSED_RANK = 256


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
def _matmul_nt_acc(
    a_ptr, b_ptr, offs_m, offs_n, mask_m, mask_n, K,
    stride_am, stride_ak, stride_bn, stride_bk, acc,
    DOT_FP32: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """acc + a[offs_m, :K] @ b[offs_n, :K].T over BLOCK_K chunks of K (fp32 accumulation);
    rows outside the masks load as 0."""
    for k0 in range(0, K, BLOCK_K):
        offs_k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        mask_k = offs_k < K
        at = _load_tile(a_ptr, offs_m, offs_k, stride_am, stride_ak, mask_m, mask_k)
        bt = _load_tile(b_ptr, offs_k, offs_n, stride_bk, stride_bn, mask_k, mask_n)
        acc = _dot(at, bt, acc, DOT_FP32)
    return acc


@triton.jit
def _lowrank_fused_kernel(
    x_ptr, v_ptr, u_ptr, b_ptr, y_ptr,
    M, K, N, R, n_per_split,
    stride_xm, stride_xk, stride_vr, stride_vk, stride_un, stride_ur, stride_b,
    stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    mask_m = offs_m < M
    mask_r = offs_r < R

    # Phase 1: t = x[rows] @ v[:R].T, fp32 accumulation. Rows of v past R load as 0, so the
    # padded columns of t are exactly 0 and add nothing in phase 2.
    acc = _matmul_nt_acc(
        x_ptr, v_ptr, offs_m, offs_r, mask_m, mask_r, K,
        stride_xm, stride_xk, stride_vr, stride_vk,
        tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32), DOT_FP32, BLOCK_K,
    )  # fmt: skip
    # Rounded to the input dtype before the second product, as the two-matmul reference does.
    t = _round(acc, y_ptr.dtype.element_ty, RNE_BF16)

    # Phase 2: this split's output columns, t @ u[cols, :R].T (+ bias).
    n_start = pid_s * n_per_split
    n_end = tl.minimum(n_start + n_per_split, N)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask_n = offs_n < n_end
        ut = _load_tile(u_ptr, offs_r, offs_n, stride_ur, stride_un, mask_r, mask_n)
        y = _dot(t, ut, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32)
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0.0)
            y += bias.to(tl.float32)[None, :]
        tl.store(
            y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
            _round(y, y_ptr.dtype.element_ty, RNE_BF16),
            mask=mask_m[:, None] & mask_n[None, :],
        )


@triton.jit
def _gemm_nt_kernel(
    a_ptr, b_ptr, bias_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk, stride_bias, stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """c = a @ b.T (+ bias): a is (M, K), b is (N, K), any strides."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m, offs_n, mask_m, mask_n = _tile_offsets(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)
    acc = _matmul_nt_acc(
        a_ptr, b_ptr, offs_m, offs_n, mask_m, mask_n, K,
        stride_am, stride_ak, stride_bn, stride_bk,
        tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32, BLOCK_K,
    )  # fmt: skip
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n * stride_bias, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    tl.store(
        c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn,
        _round(acc, c_ptr.dtype.element_ty, RNE_BF16),
        mask=mask_m[:, None] & mask_n[None, :],
    )


# --------------------------------------------------------------------------------------------
# Launchers. Raw tensors in, output out; arguments are validated by the op layer.


def _interp_bf16(x) -> bool:
    import torch

    return x.dtype == torch.bfloat16 and x.device.type == "cpu"


def _dot_fp32(x) -> bool:
    import torch

    return x.dtype == torch.float32 or _interp_bf16(x)


def launch_fused(x, u, v, rank: int, n: int, bias, cfg, n_splits: int):
    """y (M, n) = x (M, K) @ v[:rank].T @ u[:n, :rank].T (+ bias[:n]) in one launch."""
    import torch

    if rank > MAX_FUSED_RANK:
        raise ValueError(f"the fused kernel takes rank <= {MAX_FUSED_RANK}, got {rank}")
    m, k = x.shape
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    block_r = max(16, triton.next_power_of_2(rank))
    n_per_split = triton.cdiv(triton.cdiv(n, n_splits), cfg.block_n) * cfg.block_n
    grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, n_per_split))
    b = bias if bias is not None else y  # any pointer; never read when HAS_BIAS is False
    _lowrank_fused_kernel[grid](
        x, v, u, b, y,
        m, k, n, rank, n_per_split,
        x.stride(0), x.stride(1), v.stride(0), v.stride(1), u.stride(0), u.stride(1),
        b.stride(0), y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None,
        DOT_FP32=_dot_fp32(x),
        RNE_BF16=_interp_bf16(x),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        BLOCK_R=block_r,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )  # fmt: skip
    return y


def gemm_nt(
    a, b, bias, block_m: int = 64, block_n: int = 64, block_k: int = 32, num_warps: int = 4
):
    """c = a @ b.T (+ bias), a (M, K) and b (N, K) read through their strides."""
    import torch

    m, k = a.shape
    n = b.shape[0]
    c = torch.empty((m, n), dtype=a.dtype, device=a.device)
    if m == 0:
        return c
    bias_arg = bias if bias is not None else c
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _gemm_nt_kernel[grid](
        a, b, bias_arg, c,
        m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), bias_arg.stride(0),
        c.stride(0), c.stride(1),
        HAS_BIAS=bias is not None,
        DOT_FP32=_dot_fp32(a),
        RNE_BF16=_interp_bf16(a),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=num_warps,
    )  # fmt: skip
    return c


def launch_two_gemm(x, u, v, rank: int, n: int, bias, interpret: bool):
    """Large ranks: t = x @ v[:rank].T goes through global memory, then y = t @ u[:n, :rank].T."""
    tiles = dict(block_m=16, block_n=32, block_k=32, num_warps=1) if interpret else {}
    t = gemm_nt(x, v[:rank], None, **tiles)
    b = bias[:n] if bias is not None else None
    return gemm_nt(t, u[:n, :rank], b, **tiles)
