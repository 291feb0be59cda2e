"""Triton kernels for the sliced low-rank GEMM  y = act(x @ v[:r].T @ u[:n, :r].T + bias[:n]).

``lowrank_linear`` picks one of three plans (``plan``) and launches it:

* ``persistent`` (M >= 4096): ``_lowrank_persistent_kernel``. A grid of at most two
  resident programs per SM walks the row tiles; for each it computes t = x[rows] @ v[:r].T into
  registers (a multi-stage pipelined loop over K), then streams u[:n, :r] tiles through a
  second pipelined loop, one wgmma and one output tile per step. t never reaches global
  memory and is never recomputed (the earlier kernel split N at M = 16384 and computed t
  twice), so the layer moves x, the factors and y once: at M = 16384, 768 -> 3072, r = 64 that
  is 126 MB, 42 us at 3.0 TB/s, against 11.7 us of tensor-core work.
* ``two_phase`` (smaller M): ``_lowrank_two_phase_kernel``, one launch, two phases. At
  M = 197 there are only 4 row tiles of 64; giving each of ~100 programs its own copy of t (the
  earlier plan) re-read x and v[:r] per program (25 MB from L2 against 1.6 MB of output).
  Here phase 1 splits the t = x v^T product along K over (row tile, K slice) work items whose
  fp32 partials are added into a small global scratch (M x r fp32: 100 KB at M = 197, r = 128)
  with atomics; each item then bumps its row tile's arrival counter. Phase 2 spreads the
  (row tile, column tile) output items over every program; an item waits for its row tile's
  counter, reads t from L2 and multiplies it by its u tile. Every program does all its phase-1
  work before it waits, and the grid is at most one program per SM, so all programs are
  resident together (or get an SM as soon as another kernel's block leaves): no deadlock. The
  last reader of a row tile zeroes its scratch rows and counters, so the next launch finds
  them clean without a memset launch. Under the CPU interpreter, which runs programs one after
  another, the phases are two launches of the same kernel (PHASE=1, then PHASE=2). The fp32
  atomics make t's summation order, and so its last bits, vary between runs.
* ``two_gemm`` for rank > MAX_FUSED_RANK: t as a register tile of BLOCK_M x r fp32 costs
  BLOCK_M*r*4 bytes, past the register file at r = 512; t goes through global memory.

Every tensor is read through its strides, so u[:n, :r], v[:r] and column slices of a wider v
are used in place, without copies. Offsets are computed in int64 (a 16384 x 3072 output
already has 50M elements). The epilogue applies an optional activation on the fp32 value
(the MLP block's fc1 + GELU in one launch).
"""

from __future__ import annotations

import dataclasses
import threading

import triton
import triton.language as tl

# The tile helpers are shared with the quantized-matmul kernels (one home, triton_common.py);
# they stay importable from here under their old names.
from .triton_common import (  # noqa: F401 - _tile_offsets: the old import path
    _dot,
    _load_tile,
    _round,
    _tile_offsets,
    dot_fp32,
    interp_bf16,
)

MAX_FUSED_RANK = 256
# Activations of the epilogue (the MLP block's fc1): name -> ACT constexpr.
ACTS = {"none": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}


@triton.jit
def _act(y, ACT: tl.constexpr):
    """The epilogue activation on fp32: 1 GELU (erf, torch's default), 2 GELU (tanh
    approximation, timm's GELUTanh / nn.GELU(approximate="tanh")), 3 ReLU."""
    if ACT == 1:
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACT == 2:
        # tanh(z) = 2 sigmoid(2z) - 1: no tanh in tl's core math on every backend.
        z = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        y = y * tl.sigmoid(2.0 * z)
    elif ACT == 3:
        y = tl.maximum(y, 0.0)
    return y


@triton.jit
def _epilogue_store(
    acc, b_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, stride_b, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, DOT_FP32: tl.constexpr, RNE_BF16: tl.constexpr,
):  # fmt: skip
    """y[rows, cols] = round(act(acc + bias[cols])).

    The bias goes in through the tensor cores, acc += ones(BLOCK_M, 16) @ B with B's first row
    the bias and the others 0 (exact: products by 1, fp32 sums). Loaded as a plain vector it
    takes the accumulator's layout, two columns per thread, and compiles to a 4-byte cp.async
    per thread and tile (sm_90 SASS); as a 16-row tile it is a 16-byte load like the others.
    """
    if HAS_BIAS:
        rows = tl.arange(0, 16)
        bt = tl.load(
            b_ptr + rows[:, None] * 0 + offs_n[None, :] * stride_b,
            mask=(rows == 0)[:, None] & mask_n[None, :],
            other=0.0,
        )
        ones = tl.full((acc.shape[0], 16), 1.0, dtype=tl.float32).to(bt.dtype)
        acc = _dot(ones, bt, acc, DOT_FP32)
    acc = _act(acc, ACT)
    tl.store(
        y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
        _round(acc, y_ptr.dtype.element_ty, RNE_BF16),
        mask=mask_m[:, None] & mask_n[None, :],
    )


@triton.jit
def _matmul_nt_acc(
    a_ptr, b_ptr, offs_m, offs_n, mask_m, mask_n, k_lo, k_hi,
    stride_am, stride_ak, stride_bn, stride_bk, acc,
    DOT_FP32: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
):  # fmt: skip
    """acc + a[offs_m, k_lo:k_hi] @ b[offs_n, k_lo:k_hi].T over BLOCK_K chunks (fp32
    accumulation, STAGES-deep cp.async pipeline); rows outside the masks load as 0."""
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
        offs_k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        mask_k = offs_k < k_hi
        at = _load_tile(a_ptr, offs_m, offs_k, stride_am, stride_ak, mask_m, mask_k)
        bt = _load_tile(b_ptr, offs_k, offs_n, stride_bk, stride_bn, mask_k, mask_n)
        acc = _dot(at, bt, acc, DOT_FP32)
    return acc


@triton.jit
def _lowrank_persistent_kernel(
    x_ptr, v_ptr, u_ptr, b_ptr, y_ptr,
    M, K, N, R,
    stride_xm, stride_xk, stride_vr, stride_vk, stride_un, stride_ur, stride_b,
    stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    STAGES: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    mask_r = offs_r < R
    for tile_m in range(pid, tl.cdiv(M, BLOCK_M), nprog):
        offs_m = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask_m = offs_m < M
        # t = x[rows] @ v[:R].T once per row tile. Rows of v past R load as 0, so the padded
        # columns of t are exactly 0 and add nothing below.
        acc = _matmul_nt_acc(
            x_ptr, v_ptr, offs_m, offs_r, mask_m, mask_r, 0, K,
            stride_xm, stride_xk, stride_vr, stride_vk,
            tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32), DOT_FP32, BLOCK_K, STAGES,
        )  # fmt: skip
        # Rounded to the input dtype before the second product, as the two-matmul reference.
        t = _round(acc, y_ptr.dtype.element_ty, RNE_BF16)
        # Stream u[:, :R] tile by tile: the loads of the next STAGES-1 tiles are in flight
        # while this tile's wgmma and store run; t stays in registers.
        for n0 in tl.range(0, N, BLOCK_N, num_stages=STAGES):
            offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            mask_n = offs_n < N
            ut = _load_tile(u_ptr, offs_r, offs_n, stride_ur, stride_un, mask_r, mask_n)
            y = _dot(t, ut, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32)
            _epilogue_store(
                y, b_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, stride_b, stride_ym,
                stride_yn, HAS_BIAS, ACT, DOT_FP32, RNE_BF16,
            )  # fmt: skip


@triton.jit
def _wait(cnt_ptr, target):
    """Spin until the counter reaches ``target`` (acquire: the writes published before each
    arrival are visible), then let every thread of the program past."""
    arrived = tl.atomic_add(cnt_ptr, 0, sem="acquire")
    while arrived < target:
        arrived = tl.atomic_add(cnt_ptr, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _t_partials(
    x_ptr, v_ptr, t_ptr, cnt_ptr, M, K, k_per_split, stride_xm, stride_xk, stride_vr, stride_vk,
    offs_r, mask_r, pid, nprog,
    K_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    """Phase 1 of the single-launch kernels: t = x v^T as m_tiles * K_SPLITS items (a row tile
    times a slice of K). Each item adds its partial into the fp32 scratch t (padded to whole
    tiles, zero on entry) and then bumps its row tile's arrival counter."""
    for item in range(pid, tl.cdiv(M, BLOCK_M) * K_SPLITS, nprog):
        tile_m = item // K_SPLITS
        k_lo = (item % K_SPLITS) * k_per_split
        k_hi = tl.minimum(k_lo + k_per_split, K)
        offs_m = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        part = _matmul_nt_acc(
            x_ptr, v_ptr, offs_m, offs_r, offs_m < M, mask_r, k_lo, k_hi,
            stride_xm, stride_xk, stride_vr, stride_vk,
            tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32), DOT_FP32, BLOCK_K, STAGES,
        )  # fmt: skip
        # Padded rows / columns of the partial are 0: the scratch is padded to whole tiles.
        tl.atomic_add(t_ptr + offs_m[:, None] * BLOCK_R + offs_r[None, :], part, sem="relaxed")
        tl.debug_barrier()  # every thread's partial is in before the arrival is published
        tl.atomic_add(cnt_ptr + tile_m, 1, sem="release")


@triton.jit
def _lowrank_two_phase_kernel(
    x_ptr, v_ptr, u_ptr, b_ptr, y_ptr, t_ptr, cnt_ptr,
    M, K, N, R, k_per_split,
    stride_xm, stride_xk, stride_vr, stride_vk, stride_un, stride_ur, stride_b,
    stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    PHASE: tl.constexpr,
    K_SPLITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    STAGES: tl.constexpr,
):  # fmt: skip
    """PHASE 3 (GPU): both phases in one launch. PHASE 1 / 2: one phase (the interpreter).

    t_ptr: fp32 scratch (m_tiles * BLOCK_M, BLOCK_R), all zero on entry and on exit.
    cnt_ptr: int32 (2 * m_tiles): arrivals of phase-1 items, then departures of phase-2 items,
    per row tile; zero on entry and on exit.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    m_tiles = tl.cdiv(M, BLOCK_M)
    n_tiles = tl.cdiv(N, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    mask_r = offs_r < R
    if PHASE % 2 == 1:
        _t_partials(
            x_ptr, v_ptr, t_ptr, cnt_ptr, M, K, k_per_split, stride_xm, stride_xk, stride_vr,
            stride_vk, offs_r, mask_r, pid, nprog, K_SPLITS, BLOCK_M, BLOCK_R, BLOCK_K, STAGES,
            DOT_FP32,
        )  # fmt: skip
    if PHASE >= 2:
        for item in range(pid, m_tiles * n_tiles, nprog):
            tile_m = item // n_tiles
            offs_m = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
            offs_n = ((item % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            mask_m = offs_m < M
            mask_n = offs_n < N
            _wait(cnt_ptr + tile_m, K_SPLITS)
            t_offs = offs_m[:, None] * BLOCK_R + offs_r[None, :]
            # .cg: from L2, where the atomics landed (L1 is not coherent across SMs).
            t = _round(tl.load(t_ptr + t_offs, cache_modifier=".cg"), y_ptr.dtype.element_ty,
                       RNE_BF16)  # fmt: skip
            ut = _load_tile(u_ptr, offs_r, offs_n, stride_ur, stride_un, mask_r, mask_n)
            y = _dot(t, ut, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32)
            _epilogue_store(
                y, b_ptr, y_ptr, offs_m, offs_n, mask_m, mask_n, stride_b, stride_ym,
                stride_yn, HAS_BIAS, ACT, DOT_FP32, RNE_BF16,
            )  # fmt: skip
            tl.debug_barrier()  # every thread has read t before the departure is counted
            left = tl.atomic_add(cnt_ptr + m_tiles + tile_m, 1, sem="acq_rel")
            if left == n_tiles - 1:  # the row tile's last reader cleans up for the next launch
                tl.store(t_ptr + t_offs, tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32))
                tl.atomic_xchg(cnt_ptr + tile_m, 0, sem="relaxed")
                tl.atomic_xchg(cnt_ptr + m_tiles + tile_m, 0, sem="relaxed")


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
    ACT: tl.constexpr = 0,
    STAGES: tl.constexpr = 3,
):  # fmt: skip
    """c = act(a @ b.T (+ bias)): a is (M, K), b is (N, K), any strides."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m, offs_n, mask_m, mask_n = _tile_offsets(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)
    acc = _matmul_nt_acc(
        a_ptr, b_ptr, offs_m, offs_n, mask_m, mask_n, 0, K,
        stride_am, stride_ak, stride_bn, stride_bk,
        tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32, BLOCK_K, STAGES,
    )  # fmt: skip
    _epilogue_store(
        acc, bias_ptr, c_ptr, offs_m, offs_n, mask_m, mask_n, stride_bias, stride_cm,
        stride_cn, HAS_BIAS, ACT, DOT_FP32, RNE_BF16,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Launch plans and launchers. Raw tensors in, output out; arguments are validated by the op.


def _device_info(x) -> tuple[str, int, bool]:
    """(GPU name for the tuning tables, SM count, interpreter?). Meta tensors plan for an H100
    (the sm_90 compile check and the census call the launchers on them)."""
    import torch

    if x.device.type == "cpu":
        return "cpu-interpreter", 4, True
    if x.device.type == "meta":
        return "meta-sm90", 132, False
    props = torch.cuda.get_device_properties(x.device)
    return props.name, props.multi_processor_count, False


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call runs: the kernel, its tiles and grid (the census prints these)."""

    kernel: str  # "persistent", "two_phase" or "two_gemm"
    block_m: int
    block_n: int
    block_k: int
    block_r: int
    num_warps: int
    stages: int
    grid: int  # programs (one dimension)
    k_splits: int = 1  # two_phase: K slices of the t product
    k_per_split: int = 0


# M from which the persistent kernel runs (row tiles of 64 fill at least half the SMs; each
# program keeps a whole row tile's t on chip). Below it, the two-phase kernel fills every SM.
PERSISTENT_MIN_M = 4096


def plan(
    m: int, k: int, n: int, rank: int, num_sms: int, interpret: bool, cfg=None, act: str = "none"
) -> Plan:
    """The launch plan of one call (``cfg``: a tuned LowRankConfig overriding the tiles;
    ``act``: the epilogue's activation).

    Not yet measured on a GPU: the tiles follow the register and shared-memory use of the
    sm_90 compile (no spills at ranks <= 128 with these tiles) and the wave counts.
    """
    r = max(16, triton.next_power_of_2(rank))
    if rank > MAX_FUSED_RANK:
        return Plan("two_gemm", 64, 64, 32, r, 4, 3, 0)
    if interpret:  # the CPU interpreter: small tiles keep the numpy work small
        bm, bn, bk, warps, stages = 16, 32, 32, 1, 1
        persistent = triton.cdiv(m, bm) >= num_sms
    else:
        persistent = m >= PERSISTENT_MIN_M
        if persistent:
            # 128-row tiles (two warpgroups) where they still give every SM a tile: at
            # M = 16384 that is 128 programs, one tile each; else 64-row tiles.
            bm = 128 if triton.cdiv(m, 128) >= num_sms and r <= 128 else 64
            warps = 8 if bm == 128 else 4
        else:
            bm, warps = 64, 4  # wgmma's smallest M per warpgroup
        # r = 128 with 128-wide output tiles needs 255 registers and spills (sm_90 compile):
        # t (64 x 128 fp32 and fp16) plus the output accumulator; 64-wide tiles fit.
        # An activation in the epilogue (the MLP block's fc1) at r = 64 needs more: 255
        # registers and a 24-72 byte spill with GELU at 128-wide tiles (census), none at 64.
        bn = 128 if r <= 32 or (r <= 64 and act == "none") else 64
        bk = 64
        stages = 3 if r <= 64 else 2
    if cfg is not None:
        bm, bn, bk, warps, stages = (
            cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages
        )  # fmt: skip
    m_tiles = max(1, triton.cdiv(m, bm))
    if persistent:
        # Two resident programs per SM for 64-row tiles (sm_90 compile: at most 244 registers x
        # 128 threads and 68 KB of shared memory each, so two fit): one's epilogue and t
        # product overlap the other's u stream and wgmma.
        per_sm = 2 if bm == 64 and not interpret else 1
        return Plan("persistent", bm, bn, bk, r, warps, stages, min(m_tiles, per_sm * num_sms))
    n_tiles = triton.cdiv(n, bn)
    chunks = triton.cdiv(k, bk)
    # Phase 1: K slices of whole BLOCK_K chunks, about one (row tile, slice) item per SM;
    # then enough programs for the larger phase (3072 -> 768 at M = 197: 24 output tiles but
    # 96 slices of t), at most one per SM (see the module doc: all programs resident).
    per = triton.cdiv(chunks, max(1, min(chunks, num_sms // m_tiles)))
    k_splits = triton.cdiv(chunks, per)
    grid = min(num_sms, m_tiles * max(n_tiles, k_splits))
    return Plan("two_phase", bm, bn, bk, r, warps, stages, grid, k_splits, per * bk)


class _Scratch:
    """Per (device, stream): the two-phase kernel's fp32 t scratch and counters, zero between
    launches (the kernel cleans up after itself). Grown, never shrunk.

    Per stream because two launches in flight at once must not share it. A CUDA-graph capture
    on a stream that has not run the kernel before allocates its own inside the graph (one
    memset node per replay); warming up on the capture stream first avoids that node.
    """

    def __init__(self):
        self._bufs: dict = {}
        self._lock = threading.Lock()

    def get(self, device, rows: int, block_r: int, m_tiles: int):
        import torch

        need_t, need_c = rows * block_r, 2 * m_tiles
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        key = (str(device), stream)
        with self._lock:
            t, c = self._bufs.get(key, (None, None))
            if t is None or t.numel() < need_t or c.numel() < need_c:
                # Zero-filled once; a graph capture gets its own (recorded with its memset,
                # in the graph's pool) rather than caching memory the graph owns.
                t = torch.zeros(max(need_t, t.numel() if t is not None else 0),
                                dtype=torch.float32, device=device)  # fmt: skip
                c = torch.zeros(max(need_c, c.numel() if c is not None else 0),
                                dtype=torch.int32, device=device)  # fmt: skip
                if not capturing:
                    self._bufs[key] = (t, c)
        return t[:need_t], c[:need_c]


SCRATCH = _Scratch()


def launch(x, u, v, rank: int, n: int, bias, p: Plan, act: str = "none"):
    """Run plan ``p``: y (M, n) = act(x @ v[:rank].T @ u[:n, :rank].T (+ bias[:n]))."""
    import torch

    m, k = x.shape
    if p.kernel == "two_gemm":
        return launch_two_gemm(x, u, v, rank, n, bias, x.device.type == "cpu", act)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    b = bias if bias is not None else y  # any pointer; never read when HAS_BIAS is False
    common = dict(
        HAS_BIAS=bias is not None,
        ACT=ACTS[act],
        DOT_FP32=dot_fp32(x),
        RNE_BF16=interp_bf16(x),
    )
    tiles = dict(
        BLOCK_M=p.block_m, BLOCK_N=p.block_n, BLOCK_K=p.block_k, BLOCK_R=p.block_r,
        STAGES=p.stages, num_warps=p.num_warps, num_stages=p.stages,
    )  # fmt: skip
    strides = (
        x.stride(0), x.stride(1), v.stride(0), v.stride(1), u.stride(0), u.stride(1),
        b.stride(0), y.stride(0), y.stride(1),
    )  # fmt: skip
    if p.kernel == "persistent":
        _lowrank_persistent_kernel[(p.grid,)](
            x, v, u, b, y, m, k, n, rank, *strides, **common, **tiles
        )
        return y
    m_tiles = triton.cdiv(m, p.block_m)
    t_buf, cnt = SCRATCH.get(x.device, m_tiles * p.block_m, p.block_r, m_tiles)
    phases = (1, 2) if x.device.type == "cpu" else (3,)  # the interpreter runs programs in turn
    for phase in phases:
        _lowrank_two_phase_kernel[(p.grid,)](
            x, v, u, b, y, t_buf, cnt, m, k, n, rank, p.k_per_split, *strides,
            **common, PHASE=phase, K_SPLITS=p.k_splits, **tiles,
        )  # fmt: skip
    return y


def lowrank_linear(x2, u, v, rank: int, n: int, bias, act: str = "none"):
    """y (M, n) = act(x2 @ v[:rank].T @ u[:n, :rank].T (+ bias[:n])): tuned tiles if the
    tables have them (or autotuning is on), else the heuristic plan."""
    from .. import tuning

    m, k = x2.shape
    gpu, num_sms, interpret = _device_info(x2)
    cfg = None
    if rank <= MAX_FUSED_RANK and not interpret and x2.device.type == "cuda":
        dtype = str(x2.dtype).removeprefix("torch.")
        tkey = tuning.key(dtype, m, k, n, rank)
        cfg = tuning.LOWRANK.get(gpu, tkey)
        if cfg is None and tuning.autotune_enabled():
            cfg = _autotune(x2, u, v, rank, n, bias, gpu, tkey, num_sms)
    p = plan(m, k, n, rank, num_sms, interpret, cfg, act)
    return launch(x2, u, v, rank, n, bias, p, act)


def _autotune(x2, u, v, rank, n, bias, gpu, tkey, num_sms):
    from .. import tuning

    m, k = x2.shape

    def run(cfg):
        launch(x2, u, v, rank, n, bias, plan(m, k, n, rank, num_sms, False, cfg))

    best, _ = tuning.autotune(run, tuning.candidates(m, rank))
    tuning.LOWRANK.put(gpu, tkey, best)
    return best


def launch_fused(x, u, v, rank: int, n: int, bias, cfg=None, n_splits: int | None = None):
    """Compatibility entry of the compile check and the census: exactly what
    ``lowrank_linear`` runs for this call (``cfg`` and ``n_splits`` of the earlier split
    kernel are ignored: no plan splits N, which computed t once per split)."""
    if rank > MAX_FUSED_RANK:
        raise ValueError(f"the fused kernels take rank <= {MAX_FUSED_RANK}, got {rank}")
    return lowrank_linear(x, u, v, rank, n, bias)


def gemm_nt(
    a, b, bias, block_m: int = 64, block_n: int = 64, block_k: int = 32, num_warps: int = 4,
    act: str = "none", stages: int = 3,
):  # fmt: skip
    """c = act(a @ b.T (+ bias)), a (M, K) and b (N, K) read through their strides."""
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
        DOT_FP32=dot_fp32(a),
        RNE_BF16=interp_bf16(a),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        ACT=ACTS[act],
        STAGES=stages,
        num_warps=num_warps,
        num_stages=stages,
    )  # fmt: skip
    return c


def dense_linear(x2, w, bias, act: str = "none"):
    """act(x2 @ w.T (+ bias)) with tiles for the plan's device (the MLP block's dense layers)."""
    interpret = x2.device.type == "cpu"
    tiles = (
        dict(block_m=16, block_n=32, block_k=32, num_warps=1, stages=1)
        if interpret
        else dict(block_m=64, block_n=128, block_k=64, num_warps=4, stages=3)
    )
    return gemm_nt(x2, w, bias, act=act, **tiles)


def launch_two_gemm(x, u, v, rank: int, n: int, bias, interpret: bool, act: str = "none"):
    """Large ranks: t = x @ v[:rank].T goes through global memory, then y = t @ u[:n, :rank].T."""
    tiles = dict(block_m=16, block_n=32, block_k=32, num_warps=1, stages=1) if interpret else {}
    t = gemm_nt(x, v[:rank], None, **tiles)
    b = bias[:n] if bias is not None else None
    return gemm_nt(t, u[:n, :rank], b, act=act, **tiles)


def predicted_us(m: int, k: int, n: int, rank: int, itemsize: int = 2) -> float:
    """Per-call roofline on the H100 figures of ANCHORS: 3.5 us + max(bytes / 3.0 TB/s, FLOPs /
    690 TFLOP/s), bytes = x, the active factors, bias and y once (t stays on chip / in L2)."""
    byts = (m * k + rank * k + n * rank + n + m * n) * itemsize
    flops = 2 * m * rank * (k + n)
    return 3.5 + max(byts / 3.0e12, flops / 690e12) * 1e6
