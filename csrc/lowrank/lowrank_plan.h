// Launch plan (tiling / split arithmetic) for the fused sliced low-rank GEMM
//   y[m, n] = sum_r (sum_k x[m, k] * v[r, k]) * u[n, r] + bias[n].
//
// Pure C++: no CUDA headers, so it is used both by the .cu launcher/kernel and by the CPU-only
// test (tests/cpp/test_lowrank_plan.cpp), which emulates the kernel's tiling loops on the host.
// Helpers that the kernel also calls on the device are marked SK_PLAN_HD.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define SK_PLAN_HD __host__ __device__ __forceinline__
#else
#define SK_PLAN_HD inline
#endif

namespace supernet_kernels {

namespace lowrank_tiling {
// One thread block owns kBlockM rows of x. It computes t = x_tile @ v[:R].T (kBlockM x r_pad)
// into shared memory (phase 1, K consumed in kBlockK chunks), then loops over the kBlockN-wide
// N tiles of its split computing y_tile = t @ u_tile.T (phase 2, r consumed in kBlockR chunks).
constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kBlockK = 32;    // phase-1 reduction chunk (over K)
constexpr int kBlockR = 32;    // phase-2 reduction chunk (over r)
constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRankAlign = 16;  // r_pad is a multiple of the 16-wide MMA fragment
// Maximum fused rank. Shared memory at R = 256 (r_pad = 256), see make_lowrank_smem_layout:
//   fp32 : t 64 x 257 x 4 B = 65,792 B + stage (64 + 256) x 33 x 4 B = 42,240 B
//          -> 108,032 B (105.5 KB): fits the per-block opt-in limit of sm_80 (163 KB, 1 block/SM)
//          and sm_90 (227 KB, 2 blocks/SM). sm_86/89 (99 KB opt-in) cannot run fp32 at R > 224:
//          cudaFuncSetAttribute then fails and the launcher returns that error.
//   fp16/bf16 : t 64 x 264 x 2 B = 33,792 B + stage 320 x 40 x 2 B = 25,600 B
//          + fp32 per-warp fragment scratch 8 x 16 x 16 x 4 B = 8,192 B -> 67,584 B (66 KB).
// R = 512 would still fit the fp32 budget (~207 KB) but the phase-1 accumulators would need
// 128 fp32 registers per thread at 256 threads (spills), so 256 is the limit.
constexpr int kMaxRank = 256;
// Max dynamic shared memory per block on sm_80 / sm_90 after cudaFuncSetAttribute opt-in.
constexpr size_t kSmemOptinLimitSm80 = 163 * 1024;
constexpr size_t kSmemOptinLimitSm90 = 227 * 1024;
constexpr size_t kSmemDefaultLimit = 48 * 1024;
// Grid.y is limited to 65535 by CUDA.
constexpr int64_t kMaxGridY = 65535;
}  // namespace lowrank_tiling

SK_PLAN_HD int64_t lowrank_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
SK_PLAN_HD size_t lowrank_align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Shared-memory layout of one block. Offsets are in bytes from the dynamic smem base, leading
// dimensions (ld_*) in elements of T. Regions:
//   [t_offset]       sT : kBlockM x ld_t  (t tile, stored as T = rounded like torch's 2 matmuls)
//   [stage_offset]   phase 1: sX kBlockM x ld_k followed by sV r_pad x ld_k (x / v K-chunks)
//                    phase 2: sU kBlockN x ld_u (u chunk, rows n, cols r) -- aliases sX/sV,
//                    phase 2 starts only after a __syncthreads() that ends phase 1.
//   [scratch_offset] fp32 per-warp 16x16 scratch for wmma accumulator -> T conversion (16-bit
//                    types only; the fp32 FMA path keeps its accumulators in registers).
// Padding: 16-bit types pad rows by 8 elements (16 B): wmma needs ldm % 8 == 0 and 32-byte
// aligned fragment pointers, and an odd multiple of 16 B row pitch avoids bank conflicts.
// fp32 pads by 1 element: row pitch 33 words -> the FMA path's column-strided reads hit 16
// distinct banks.
struct LowRankSmemLayout {
  int ld_t, ld_k, ld_u;
  size_t t_offset, stage_offset, scratch_offset, total_bytes;
};

SK_PLAN_HD int lowrank_smem_pad(int elem_bytes) { return elem_bytes == 4 ? 1 : 8; }

SK_PLAN_HD LowRankSmemLayout make_lowrank_smem_layout(int r_pad, int elem_bytes) {
  using namespace lowrank_tiling;
  const int pad = lowrank_smem_pad(elem_bytes);
  LowRankSmemLayout L;
  L.ld_t = r_pad + pad;
  L.ld_k = kBlockK + pad;
  L.ld_u = kBlockR + pad;
  const size_t eb = static_cast<size_t>(elem_bytes);
  const size_t t_bytes = static_cast<size_t>(kBlockM) * L.ld_t * eb;
  const size_t stage1 = static_cast<size_t>(kBlockM + r_pad) * L.ld_k * eb;
  const size_t stage2 = static_cast<size_t>(kBlockN) * L.ld_u * eb;
  const size_t stage = stage1 > stage2 ? stage1 : stage2;
  const size_t scratch = elem_bytes == 4 ? 0 : static_cast<size_t>(kWarps) * 16 * 16 * 4;
  L.t_offset = 0;
  L.stage_offset = lowrank_align_up(t_bytes, 128);
  L.scratch_offset = lowrank_align_up(L.stage_offset + stage, 128);
  L.total_bytes = lowrank_align_up(L.scratch_offset + scratch, 128);
  return L;
}

struct LowRankPlan {
  int block_m, block_n, r_pad, n_splits;
  int64_t n_per_split;  // multiple of block_n; split s owns n in [s*n_per_split, min(N,
                        // ...+n_per_split))
  int grid_x, grid_y;
  size_t smem_bytes;
};

// N range [*n_begin, *n_end) of split `split` (blockIdx.y). Splits are block_n-aligned, so every
// N tile belongs to exactly one split. Used by the kernel and the host emulation.
SK_PLAN_HD void lowrank_split_range(int64_t n_per_split, int64_t N, int64_t split, int64_t* n_begin,
                                    int64_t* n_end) {
  const int64_t b = split * n_per_split;
  const int64_t e = b + n_per_split;
  *n_begin = b < N ? b : N;
  *n_end = e < N ? e : N;
}

// Tiling / split choice. elem_bytes (4 = fp32, 2 = fp16/bf16) only affects smem_bytes; the
// default 4 gives the larger (fp32) layout, an upper bound for all dtypes.
//
// n_splits: grid.x = ceil(M / 64) blocks cover M. If that is fewer than 2 waves (2 * num_sms
// blocks), split N into n_splits = floor(2 * num_sms / grid_x) ranges (each split recomputes
// its own t tile: extra phase-1 work in exchange for filling the GPU at small M such as M = 197
// -> grid_x = 4). floor (not ceil) so that M already close to 2 waves (e.g. M = 16384 ->
// grid_x = 256 on 132 SMs) does not double the phase-1 work for a small occupancy gain.
// n_splits is clamped to the number of N tiles (each split >= one tile), then re-derived from
// the tiles per split so that no split is empty.
inline LowRankPlan make_lowrank_plan(int64_t M, int64_t N, int64_t R, int num_sms,
                                     int elem_bytes = 4) {
  using namespace lowrank_tiling;
  LowRankPlan p;
  p.block_m = kBlockM;
  p.block_n = kBlockN;
  const int64_t r = R < 1 ? 1 : R;
  p.r_pad = static_cast<int>(lowrank_ceil_div(r, kRankAlign) * kRankAlign);
  const int64_t gx = M > 0 ? lowrank_ceil_div(M, kBlockM) : 0;
  const int64_t n_tiles = N > 0 ? lowrank_ceil_div(N, kBlockN) : 0;
  int64_t splits = 0, tiles_per_split = 1;
  if (gx > 0 && n_tiles > 0) {
    const int64_t sms = num_sms > 0 ? num_sms : 1;
    splits = (2 * sms) / gx;
    if (splits < 1) splits = 1;
    if (splits > n_tiles) splits = n_tiles;
    if (splits > kMaxGridY) splits = kMaxGridY;
    tiles_per_split = lowrank_ceil_div(n_tiles, splits);
    splits = lowrank_ceil_div(n_tiles, tiles_per_split);
  }
  p.n_splits = static_cast<int>(splits);
  p.n_per_split = tiles_per_split * kBlockN;
  // Callers must reject M with ceil(M / 64) > INT32_MAX (the launcher does).
  p.grid_x = gx > 0x7fffffff ? 0x7fffffff : static_cast<int>(gx);
  p.grid_y = p.n_splits;
  p.smem_bytes = make_lowrank_smem_layout(p.r_pad, elem_bytes).total_bytes;
  return p;
}

}  // namespace supernet_kernels
