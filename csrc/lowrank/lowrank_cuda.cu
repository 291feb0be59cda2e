// Fused sliced low-rank GEMM kernel:
//   y[m, n] = sum_r (sum_k x[m, k] * v[r, k]) * u[n, r] + bias[n]
//
// *** STATUS: compiled for sm_80 / sm_90 but NOT YET RUN ON A REAL GPU. The tiling / index
// *** arithmetic is mirrored by a host emulation in tests/cpp/test_lowrank_plan.cpp; the
// *** device code itself (wmma usage, synchronisation) is only reviewed by hand so far.
//
// One kernel template, instantiated for float / __half / __nv_bfloat16:
//   grid.x : M tiles of kBlockM = 64 rows.   grid.y : N splits (see make_lowrank_plan).
//   Phase 1: t (64 x r_pad) = x_tile @ v[:R].T, K in chunks of 32 staged through smem.
//            fp16/bf16: wmma 16x16x16 tensor cores, fp32 accumulators, rounded to T into sT.
//            fp32: plain FMA (no TF32) with a 4 x 16 register tile per thread, stored as fp32.
//   Phase 2: for each 64-wide N tile of this split: y_tile = t @ u_tile.T (+ bias), r in chunks
//            of 32; t never leaves shared memory.
// Tails (M, N, K, R not multiples of the tiles) are handled by zero-filling smem on load and by
// bounds-checked stores; all global offsets use int64_t.
//
// Known performance limitations (correctness first): element-wise (non-vectorised) global loads
// because strides are arbitrary; no cp.async / double buffering; each N split recomputes t.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "lowrank_cuda.h"

namespace supernet_kernels {
namespace {

using namespace lowrank_tiling;

template <typename T>
struct LowRankKernelParams {
  const T* x;
  int64_t x_sm, x_sk;
  const T* v;
  int64_t v_sr, v_sk;
  const T* u;
  int64_t u_sn, u_sr;
  const T* bias;  // may be nullptr
  int64_t bias_s;
  T* y;
  int64_t y_sm, y_sn;
  int64_t M, K, N;
  int R, r_pad;
  int64_t n_per_split;
};

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Register budget (256 threads): phase-1 accumulators are 64 x 256 fp32 per block at R = 256,
// i.e. 64 registers per thread (8 wmma fragments of 8 floats per lane, or a 4 x 16 FMA tile).
// ptxas (CUDA 13.0, -O3): 128 registers for all three types on sm_90 (bf16: 8 B spill) and for
// fp32/fp16 on sm_80; bf16 on sm_80 takes 173 (1 block/SM). __launch_bounds__(256, 2) forces
// 128 everywhere but spills 12-36 B per thread, so it is not used (unmeasured trade-off).
template <typename T>
__global__ void __launch_bounds__(kThreads) lowrank_fused_kernel(const LowRankKernelParams<T> p) {
  constexpr bool kUseMma = !std::is_same<T, float>::value;
  const LowRankSmemLayout L = make_lowrank_smem_layout(p.r_pad, static_cast<int>(sizeof(T)));
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sT = reinterpret_cast<T*>(smem_raw + L.t_offset);
  T* sX = reinterpret_cast<T*>(smem_raw + L.stage_offset);
  T* sV = sX + kBlockM * L.ld_k;
  T* sU = reinterpret_cast<T*>(smem_raw + L.stage_offset);  // aliases sX/sV (phase 2 only)
  float* scratch = reinterpret_cast<float*>(smem_raw + L.scratch_offset);

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int r_pad = p.r_pad;
  const int ld_t = L.ld_t, ld_k = L.ld_k, ld_u = L.ld_u;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  int64_t n_begin, n_end;
  lowrank_split_range(p.n_per_split, p.N, static_cast<int64_t>(blockIdx.y), &n_begin, &n_end);
  if (n_begin >= n_end) return;  // never happens with make_lowrank_plan; block-uniform
  const T zero = from_f32<T>(0.f);

  // Phase-1 stage load: x[m0:m0+64, k0:k0+32] -> sX, v[0:r_pad, k0:k0+32] -> sV (zero-filled
  // outside [0,M) x [0,K) and [0,R) x [0,K)). Consecutive threads take consecutive k, so the
  // loads coalesce when stride_k == 1.
  auto load_stage1 = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < kBlockM * kBlockK / kThreads; ++i) {  // 8 per thread
      const int e = tid + i * kThreads;
      const int row = e / kBlockK, col = e % kBlockK;
      const int64_t m = m0 + row, k = k0 + col;
      T val = zero;
      if (m < p.M && k < p.K) val = p.x[m * p.x_sm + k * p.x_sk];
      sX[row * ld_k + col] = val;
    }
    // Partial unroll: a full 32x unroll hoists all 32 loads -> 200-224 registers (1 block/SM);
    // with 8x, ptxas fits the kernel in 128 registers (2 blocks/SM of 256 threads).
#pragma unroll 8
    for (int i = 0; i < kMaxRank * kBlockK / kThreads; ++i) {  // up to 32 per thread
      const int e = tid + i * kThreads;
      const int row = e / kBlockK, col = e % kBlockK;
      if (row < r_pad) {
        const int64_t k = k0 + col;
        T val = zero;
        if (row < p.R && k < p.K) val = p.v[static_cast<int64_t>(row) * p.v_sr + k * p.v_sk];
        sV[row * ld_k + col] = val;
      }
    }
  };

  // Phase-2 stage load: u[n0:n0+64, r0:r0+32] -> sU[n][r], zero outside [n0,n_end) x [0,R).
  auto load_stage2 = [&](int64_t n0, int r0) {
#pragma unroll
    for (int i = 0; i < kBlockN * kBlockR / kThreads; ++i) {  // 8 per thread
      const int e = tid + i * kThreads;
      const int row = e / kBlockR, col = e % kBlockR;
      const int64_t n = n0 + row;
      const int r = r0 + col;
      T val = zero;
      if (n < n_end && r < p.R) val = p.u[n * p.u_sn + static_cast<int64_t>(r) * p.u_sr];
      sU[row * ld_u + col] = val;
    }
  };

  if constexpr (kUseMma) {
    namespace wmma = nvcuda::wmma;
    using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
    using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
    using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
    float* wscratch = scratch + warp * 256;  // this warp's 16x16 fp32 scratch

    // ---- Phase 1: t = x_tile @ v^T. 4 (m) x r_pad/16 (r) fragments over 8 warps: warp w owns
    // m-fragment w % 4 and r-fragments j = w / 4 + 2 * i, i < 8 (active while j < r_pad / 16).
    constexpr int kFragsPerWarp = (kBlockM / 16) * (kMaxRank / 16) / kWarps;  // 8
    const int wm = warp % 4;
    const int wr = warp / 4;
    const int r_tiles = r_pad / 16;
    FragC acc[kFragsPerWarp];
#pragma unroll
    for (int i = 0; i < kFragsPerWarp; ++i) wmma::fill_fragment(acc[i], 0.f);

    for (int64_t k0 = 0; k0 < p.K; k0 += kBlockK) {
      load_stage1(k0);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kBlockK; kk += 16) {
        FragA a;
        wmma::load_matrix_sync(a, sX + (wm * 16) * ld_k + kk, ld_k);
#pragma unroll
        for (int i = 0; i < kFragsPerWarp; ++i) {
          const int j = wr + 2 * i;
          if (j < r_tiles) {  // warp-uniform
            FragB b;          // B = v^T (k x r); sV[r][k] is its column-major storage
            wmma::load_matrix_sync(b, sV + (j * 16) * ld_k + kk, ld_k);
            wmma::mma_sync(acc[i], a, b, acc[i]);
          }
        }
      }
      __syncthreads();  // stage buffers are overwritten by the next chunk / aliased by sU
    }
    // Round t to T into sT (like torch's first matmul output). Columns [R, r_pad) are exact
    // zeros because v rows >= R were zero-filled.
#pragma unroll
    for (int i = 0; i < kFragsPerWarp; ++i) {
      const int j = wr + 2 * i;
      if (j < r_tiles) {
        wmma::store_matrix_sync(wscratch, acc[i], 16, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          sT[(wm * 16 + e / 16) * ld_t + j * 16 + e % 16] = from_f32<T>(wscratch[e]);
        }
        __syncwarp();
      }
    }
    __syncthreads();  // sT complete

    // ---- Phase 2: y_tile (64 x 64) = t @ u_tile^T. Warp w: m-fragment w % 4, n-fragments
    // 2 * (w / 4) + {0, 1}.
    const int wn = 2 * (warp / 4);
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kBlockN) {
      FragC yacc[2];
      wmma::fill_fragment(yacc[0], 0.f);
      wmma::fill_fragment(yacc[1], 0.f);
      for (int r0 = 0; r0 < r_pad; r0 += kBlockR) {
        load_stage2(n0, r0);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kBlockR; kk += 16) {
          // r_pad is a multiple of 16, not of 32: skip the half chunk past r_pad (sT has only
          // ld_t = r_pad + 8 columns; reading further would hit the next row / padding).
          if (r0 + kk < r_pad) {
            FragA a;
            wmma::load_matrix_sync(a, sT + (wm * 16) * ld_t + r0 + kk, ld_t);
#pragma unroll
            for (int f = 0; f < 2; ++f) {
              FragB b;  // B = u^T (r x n); sU[n][r] is its column-major storage
              wmma::load_matrix_sync(b, sU + ((wn + f) * 16) * ld_u + kk, ld_u);
              wmma::mma_sync(yacc[f], a, b, yacc[f]);
            }
          }
        }
        __syncthreads();  // sU reused by the next chunk / tile
      }
      // Epilogue via the per-warp scratch: + bias (fp32), round, bounds-checked store.
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        wmma::store_matrix_sync(wscratch, yacc[f], 16, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          const int64_t m = m0 + wm * 16 + e / 16;
          const int64_t n = n0 + (wn + f) * 16 + e % 16;
          if (m < p.M && n < n_end) {
            float val = wscratch[e];
            if (p.bias != nullptr) val += to_f32<T>(p.bias[n * p.bias_s]);
            p.y[m * p.y_sm + n * p.y_sn] = from_f32<T>(val);
          }
        }
        __syncwarp();
      }
    }
  } else {
    // fp32: exact-fp32 FMA path (no TF32). Thread (tx, ty) = (tid % 16, tid / 16) owns rows
    // ty + 16 * i (i < 4) and columns tx + 16 * j of the current output tile.
    const int tx = tid % 16;
    const int ty = tid / 16;
    constexpr int kRows = kBlockM / 16;    // 4
    constexpr int kTCols = kMaxRank / 16;  // 16 (active while 16 * j < r_pad)
    constexpr int kYCols = kBlockN / 16;   // 4

    // ---- Phase 1
    float acc[kRows][kTCols];
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int j = 0; j < kTCols; ++j) acc[i][j] = 0.f;

    for (int64_t k0 = 0; k0 < p.K; k0 += kBlockK) {
      load_stage1(k0);
      __syncthreads();
#pragma unroll 4
      for (int kk = 0; kk < kBlockK; ++kk) {
        float a[kRows];
#pragma unroll
        for (int i = 0; i < kRows; ++i) a[i] = to_f32<T>(sX[(ty + 16 * i) * ld_k + kk]);
#pragma unroll
        for (int j = 0; j < kTCols; ++j) {
          if (16 * j < r_pad) {  // block-uniform
            const float b = to_f32<T>(sV[(tx + 16 * j) * ld_k + kk]);
#pragma unroll
            for (int i = 0; i < kRows; ++i) acc[i][j] = fmaf(a[i], b, acc[i][j]);
          }
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int j = 0; j < kTCols; ++j)
        if (16 * j < r_pad) sT[(ty + 16 * i) * ld_t + tx + 16 * j] = from_f32<T>(acc[i][j]);
    __syncthreads();

    // ---- Phase 2
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kBlockN) {
      float yacc[kRows][kYCols];
#pragma unroll
      for (int i = 0; i < kRows; ++i)
#pragma unroll
        for (int j = 0; j < kYCols; ++j) yacc[i][j] = 0.f;
      for (int r0 = 0; r0 < r_pad; r0 += kBlockR) {
        load_stage2(n0, r0);
        __syncthreads();
        // Stop at r_pad: sT column r_pad is uninitialised padding (0 * garbage could be NaN).
        const int kk_end = (r_pad - r0) < kBlockR ? (r_pad - r0) : kBlockR;
#pragma unroll 4
        for (int kk = 0; kk < kk_end; ++kk) {
          float a[kRows], b[kYCols];
#pragma unroll
          for (int i = 0; i < kRows; ++i) a[i] = to_f32<T>(sT[(ty + 16 * i) * ld_t + r0 + kk]);
#pragma unroll
          for (int j = 0; j < kYCols; ++j) b[j] = to_f32<T>(sU[(tx + 16 * j) * ld_u + kk]);
#pragma unroll
          for (int i = 0; i < kRows; ++i)
#pragma unroll
            for (int j = 0; j < kYCols; ++j) yacc[i][j] = fmaf(a[i], b[j], yacc[i][j]);
        }
        __syncthreads();
      }
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int64_t m = m0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < kYCols; ++j) {
          const int64_t n = n0 + tx + 16 * j;
          if (m < p.M && n < n_end) {
            float val = yacc[i][j];
            if (p.bias != nullptr) val += to_f32<T>(p.bias[n * p.bias_s]);
            p.y[m * p.y_sm + n * p.y_sn] = from_f32<T>(val);
          }
        }
      }
    }
  }
}

template <typename T>
cudaError_t launch_lowrank(const LowRankArgs& a, int num_sms, cudaStream_t stream) {
  const LowRankPlan plan = make_lowrank_plan(a.M, a.N, a.R, num_sms, static_cast<int>(sizeof(T)));
  if (plan.grid_x <= 0 || plan.grid_y <= 0) return cudaErrorInvalidValue;

  LowRankKernelParams<T> p;
  p.x = static_cast<const T*>(a.x);
  p.x_sm = a.x_stride_m;
  p.x_sk = a.x_stride_k;
  p.v = static_cast<const T*>(a.v);
  p.v_sr = a.v_stride_r;
  p.v_sk = a.v_stride_k;
  p.u = static_cast<const T*>(a.u);
  p.u_sn = a.u_stride_n;
  p.u_sr = a.u_stride_r;
  p.bias = static_cast<const T*>(a.bias);
  p.bias_s = a.bias_stride;
  p.y = static_cast<T*>(a.y);
  p.y_sm = a.y_stride_m;
  p.y_sn = a.y_stride_n;
  p.M = a.M;
  p.K = a.K;
  p.N = a.N;
  p.R = static_cast<int>(a.R);
  p.r_pad = plan.r_pad;
  p.n_per_split = plan.n_per_split;

  auto kernel = lowrank_fused_kernel<T>;
  if (plan.smem_bytes > kSmemDefaultLimit) {
    // Needed above 48 KB of dynamic smem; fails (and we return the error) if the device's
    // opt-in limit is smaller (e.g. fp32 with large R on sm_86/89).
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.smem_bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<dim3(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y)), kThreads,
           plan.smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t lowrank_linear_cuda(const LowRankArgs& args, int num_sms, cudaStream_t stream) {
  if (args.M < 0 || args.K < 0 || args.N < 0) return cudaErrorInvalidValue;
  if (args.R < 1 || args.R > kMaxFusedRank) return cudaErrorInvalidValue;
  if (args.dtype != ScalarKind::kFloat32 && args.dtype != ScalarKind::kFloat16 &&
      args.dtype != ScalarKind::kBFloat16) {
    return cudaErrorInvalidValue;
  }
  if (args.M == 0 || args.N == 0) return cudaSuccess;  // empty output: nothing to do
  if (args.y == nullptr || args.u == nullptr) return cudaErrorInvalidValue;
  if (args.K > 0 && (args.x == nullptr || args.v == nullptr)) return cudaErrorInvalidValue;
  if (lowrank_ceil_div(args.M, kBlockM) > 0x7fffffff) return cudaErrorInvalidValue;  // grid.x

  if (num_sms <= 0) {
    int dev = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev);
    if (err != cudaSuccess) return err;
  }
  switch (args.dtype) {
    case ScalarKind::kFloat32:
      return launch_lowrank<float>(args, num_sms, stream);
    case ScalarKind::kFloat16:
      return launch_lowrank<__half>(args, num_sms, stream);
    case ScalarKind::kBFloat16:
      return launch_lowrank<__nv_bfloat16>(args, num_sms, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace supernet_kernels
