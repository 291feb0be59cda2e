// Quantized linear kernels: weight-only packed GEMV (A16, 2/3/4/8-bit) and W8A8 int8 GEMM.
//
// *** STATUS: compiled for sm_80 / sm_90 but NOT YET RUN ON A REAL GPU. The partition / tiling /
// *** unpacking arithmetic is shared with (quant_plan.h) and mirrored by a host emulation in
// *** tests/cpp/test_quant_plan.cpp; the device code itself (vector loads, shuffles, wmma,
// *** synchronisation) is only reviewed by hand so far. Performance is unmeasured.
//
// quant_gemv_kernel<BITS, MT> (partition in quant_plan.h, gemv_tiling):
//   grid.x = ceil(N / 16) blocks of 128 threads; each block owns 16 weight rows, 8 lanes per row,
//   every lane loads 16-byte chunks of 4 packed words (the 8 lanes cover one 128-byte line per
//   iteration, up to 4 chunks in flight per lane). grid.y grid-strides over M chunks of MT rows.
//   x[m0:m0+MT, stage] is staged in shared memory as fp32 (converted once from fp16 / bf16 /
//   fp32, any strides), K consumed in stages of SW words. Codes are dequantized in registers
//   (w = q * s + (-z * s), fp32), accumulated in fp32 (MT accumulators per lane), reduced over
//   the 8 lanes with __shfl_xor_sync. The element type of x / y / bias is a runtime switch used
//   only in staging and in the epilogue, so only BITS and MT are template parameters:
//   BITS in {2, 3, 4, 8} x MT in {1, 4, 8, 16} = 16 instantiations (+1 quantizer, +1 GEMM).
// int8_gemm_kernel: 64 x 64 block tile, K chunks of 64, 4 warps each 2 x 2 wmma s8 16x16x16
//   fragments (int32 accumulators), shared memory in a panel layout (see quant_plan.h);
//   zero-filled tails in M, N and K. No multi-stage pipelining (correctness first).
// All global offsets are int64_t.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "quant_cuda.h"

namespace supernet_kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// Runtime element type helpers (ScalarKind as int to keep the params POD and small)
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float load_as_float(const void* base, int64_t idx, int kind) {
  if (kind == static_cast<int>(ScalarKind::kFloat16)) {
    return __half2float(static_cast<const __half*>(base)[idx]);
  }
  if (kind == static_cast<int>(ScalarKind::kBFloat16)) {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[idx]);
  }
  return static_cast<const float*>(base)[idx];
}

__device__ __forceinline__ void store_from_float(void* base, int64_t idx, float v, int kind) {
  if (kind == static_cast<int>(ScalarKind::kFloat16)) {
    static_cast<__half*>(base)[idx] = __float2half_rn(v);
  } else if (kind == static_cast<int>(ScalarKind::kBFloat16)) {
    static_cast<__nv_bfloat16*>(base)[idx] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(base)[idx] = v;
  }
}

// Exact uint -> float for q < 2^23: the bit pattern 0x4B000000 | q is the float 2^23 + q.
__device__ __forceinline__ float code_to_float(uint32_t q) {
  return __uint_as_float(0x4B000000u | q) - 8388608.f;
}

// ---------------------------------------------------------------------------------------------
// Weight-only GEMV
// ---------------------------------------------------------------------------------------------
struct GemvParams {
  const void* x;
  int64_t x_sm, x_sk;
  const uint32_t* packed;
  const float* scales;
  const float* zeros;
  const void* bias;
  void* y;
  int64_t M, N, K;
  int64_t W;  // words per row
  int64_t G, num_groups;
  int g_shift;
  int64_t num_stages, m_chunks;
  int kind;
  int vec;  // 16-byte loads allowed (W % 4 == 0 and packed 16-byte aligned)
};

template <int BITS, int MT>
__global__ void __launch_bounds__(gemv_tiling::kThreads) quant_gemv_kernel(const GemvParams p) {
  using namespace gemv_tiling;
  constexpr int PW = quant_per_word(BITS);
  constexpr int SW = gemv_stage_words(MT, BITS);
  constexpr int CP = gemv_chunk_pitch(BITS);
  constexpr int RP = gemv_row_pitch(MT, BITS);
  constexpr int SC = SW * PW;  // codes per stage
  constexpr int ITERS = SW / kWordsPerIter;
  constexpr int U = ITERS < 4 ? ITERS : 4;   // 16-byte chunks in flight per lane
  constexpr int VW = (PW % 4 == 0) ? 4 : 2;  // smem x read width (3-bit words start 8B-aligned)
  static_assert(SW % kWordsPerIter == 0 && ITERS % U == 0, "stage must be whole iterations");
  static_assert(PW % VW == 0, "x read width must divide PER_WORD");
  static_assert(CP % 4 == 0 && RP % 4 == 0, "16-byte aligned chunk / row pitch");

  extern __shared__ __align__(16) float xs[];  // MT x RP floats

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int j = lane % kLanesPerRow;  // lane within the row group
  const int64_t n =
      static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp * kRowsPerWarp + lane / kLanesPerRow;
  const bool row_valid = n < p.N;
  const int64_t n_safe = row_valid ? n : 0;
  const uint32_t* __restrict__ wrow = p.packed + n_safe * p.W;
  const float* __restrict__ srow = p.scales + n_safe * p.num_groups;
  const float* __restrict__ zrow = p.zeros + n_safe * p.num_groups;

  for (int64_t mc = blockIdx.y; mc < p.m_chunks; mc += gridDim.y) {
    const int64_t m0 = mc * MT;
    float acc[MT];
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) acc[mi] = 0.f;

    for (int64_t stage = 0; stage < p.num_stages; ++stage) {
      const int64_t k0 = stage * SC;
      __syncthreads();  // the previous stage's (or M chunk's) reads of xs are done
      // Stage x[m0 : m0 + MT, k0 : k0 + SC] -> xs (fp32, zero outside [0, M) x [0, K)).
      // Consecutive threads take consecutive k: coalesced when x_sk == 1.
      for (int e = tid; e < MT * SC; e += kThreads) {
        const int mi = e / SC;
        const int kk = e - mi * SC;
        const int64_t m = m0 + mi, k = k0 + kk;
        float v = 0.f;
        if (m < p.M && k < p.K) v = load_as_float(p.x, m * p.x_sm + k * p.x_sk, p.kind);
        xs[gemv_xs_index(MT, BITS, mi, kk)] = v;
      }
      __syncthreads();
      if (!row_valid) continue;  // no barrier below until the next stage

#pragma unroll 1
      for (int it0 = 0; it0 < ITERS; it0 += U) {
        // Issue all U chunk loads first (independent loads in flight), then consume them.
        uint32_t wv[U][4];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t w = gemv_lane_word(MT, BITS, stage, it0 + u, j);
          if (p.vec) {
            uint4 c = make_uint4(0u, 0u, 0u, 0u);
            if (w < p.W) c = __ldg(reinterpret_cast<const uint4*>(wrow + w));  // W % 4 == 0
            wv[u][0] = c.x;
            wv[u][1] = c.y;
            wv[u][2] = c.z;
            wv[u][3] = c.w;
          } else {
#pragma unroll
            for (int v = 0; v < 4; ++v) wv[u][v] = (w + v < p.W) ? __ldg(wrow + w + v) : 0u;
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int it = it0 + u;
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            const int64_t w = gemv_lane_word(MT, BITS, stage, it, j) + v;
            if (w >= p.W) continue;
            const uint32_t word = wv[u][v];
            const int64_t kw = w * PW;  // first code of the word
            const int64_t g0 = quant_group_of(kw, p.G, p.g_shift, p.num_groups);
            const float s0 = __ldg(srow + g0);
            const float nzs0 = -__ldg(zrow + g0) * s0;
            float qf[PW], dq[PW];
#pragma unroll
            for (int i = 0; i < PW; ++i) {
              qf[i] = code_to_float(quant_unpack(word, i, BITS));
              dq[i] = fmaf(qf[i], s0, nzs0);
            }
            if (BITS == 3 && p.num_groups > 1) {
              // A 10-code word may cross one group boundary at code b (G >= 10).
              const int64_t b = (g0 + 1) * p.G - kw;
              if (b < PW) {
                const int64_t g1 = g0 + 1 < p.num_groups ? g0 + 1 : p.num_groups - 1;
                const float s1 = __ldg(srow + g1);
                const float nzs1 = -__ldg(zrow + g1) * s1;
#pragma unroll
                for (int i = 0; i < PW; ++i)
                  if (i >= b) dq[i] = fmaf(qf[i], s1, nzs1);
              }
            }
            if (kw + PW > p.K) {  // partial last word: codes k >= K contribute nothing
              const int64_t nvalid = p.K - kw;
#pragma unroll
              for (int i = 0; i < PW; ++i)
                if (i >= nvalid) dq[i] = 0.f;
            }
            const int base = (it * kLanesPerRow + j) * CP + v * PW;
#pragma unroll
            for (int mi = 0; mi < MT; ++mi) {
              const float* xr = xs + mi * RP + base;
#pragma unroll
              for (int i = 0; i < PW; i += VW) {
                if constexpr (VW == 4) {
                  const float4 xv = *reinterpret_cast<const float4*>(xr + i);
                  acc[mi] = fmaf(dq[i], xv.x, acc[mi]);
                  acc[mi] = fmaf(dq[i + 1], xv.y, acc[mi]);
                  acc[mi] = fmaf(dq[i + 2], xv.z, acc[mi]);
                  acc[mi] = fmaf(dq[i + 3], xv.w, acc[mi]);
                } else {
                  const float2 xv = *reinterpret_cast<const float2*>(xr + i);
                  acc[mi] = fmaf(dq[i], xv.x, acc[mi]);
                  acc[mi] = fmaf(dq[i + 1], xv.y, acc[mi]);
                }
              }
            }
          }
        }
      }
    }

    // Reduce over the 8 lanes of the row group (xor offsets < 8 stay inside the group); all 32
    // lanes take part (invalid rows hold zeros).
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
      float v = acc[mi];
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      acc[mi] = v;
    }
    if (row_valid) {
      const float b = p.bias != nullptr ? load_as_float(p.bias, n, p.kind) : 0.f;
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        const int64_t m = m0 + mi;
        if ((mi % kLanesPerRow) == j && m < p.M)
          store_from_float(p.y, m * p.N + n, acc[mi] + b, p.kind);
      }
    }
  }
}

template <int BITS, int MT>
cudaError_t launch_gemv_mt(const GemvParams& p, const GemvPlan& plan, cudaStream_t stream) {
  static_assert(gemv_smem_floats(MT, BITS) * sizeof(float) <= 48 * 1024, "static 48 KB budget");
  quant_gemv_kernel<BITS, MT>
      <<<dim3(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y)),
         gemv_tiling::kThreads, plan.smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

template <int BITS>
cudaError_t launch_gemv_bits(const GemvParams& p, const GemvPlan& plan, cudaStream_t stream) {
  switch (plan.mt) {
    case 1:
      return launch_gemv_mt<BITS, 1>(p, plan, stream);
    case 4:
      return launch_gemv_mt<BITS, 4>(p, plan, stream);
    case 8:
      return launch_gemv_mt<BITS, 8>(p, plan, stream);
    case 16:
      return launch_gemv_mt<BITS, 16>(p, plan, stream);
  }
  return cudaErrorInvalidValue;
}

// y = bias (or 0) when K == 0 (no weights to read).
__global__ void fill_bias_kernel(void* y, const void* bias, int64_t M, int64_t N, int kind) {
  const int64_t total = M * N;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float b = bias != nullptr ? load_as_float(bias, e % N, kind) : 0.f;
    store_from_float(y, e, b, kind);
  }
}

bool valid_kind(ScalarKind k) {
  return k == ScalarKind::kFloat32 || k == ScalarKind::kFloat16 || k == ScalarKind::kBFloat16;
}

// ---------------------------------------------------------------------------------------------
// Per-token int8 quantizer: one 256-thread block per row (grid-stride over rows).
// ---------------------------------------------------------------------------------------------
constexpr int kQuantThreads = 256;

__global__ void __launch_bounds__(kQuantThreads)
    quantize_rows_int8_kernel(const void* x, int64_t x_sm, int64_t x_sk, int8_t* xq, float* xscale,
                              int64_t M, int64_t K, int kind) {
  __shared__ float red[kQuantThreads / 32];
  __shared__ float row_scale;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    float amax = 0.f;
    for (int64_t k = tid; k < K; k += kQuantThreads) {
      amax = fmaxf(amax, fabsf(load_as_float(x, m * x_sm + k * x_sk, kind)));
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (tid % 32 == 0) red[tid / 32] = amax;
    __syncthreads();
    if (tid == 0) {
      float a = red[0];
      for (int i = 1; i < kQuantThreads / 32; ++i) a = fmaxf(a, red[i]);
      const float s = quant_int8_row_scale(a);
      row_scale = s;
      xscale[m] = s;
    }
    __syncthreads();
    const float s = row_scale;
    for (int64_t k = tid; k < K; k += kQuantThreads) {
      const float v = load_as_float(x, m * x_sm + k * x_sk, kind);
      xq[m * K + k] = static_cast<int8_t>(quant_int8_code(v, s));
    }
    __syncthreads();  // red / row_scale are rewritten for the next row
  }
}

// ---------------------------------------------------------------------------------------------
// int8 GEMM (wmma s8 16x16x16 -> s32), tiling in quant_plan.h (int8_gemm_tiling).
// ---------------------------------------------------------------------------------------------
struct Int8GemmParams {
  const int8_t* xq;
  const float* x_scale;
  const int8_t* w;
  const float* w_scale;
  const void* bias;
  void* y;
  int64_t M, N, K;
  int64_t m_tiles;
  int kind;
  int vec_a, vec_b;  // 16-byte global loads allowed (K % 16 == 0 and 16-byte aligned base)
};

// Copies the 16-byte chunk src[row, k : k + 16] of a (rows, K) int8 matrix (zero outside) to dst
// (16-byte aligned shared memory).
__device__ __forceinline__ void load_int8_chunk(const int8_t* __restrict__ src, int64_t rows,
                                                int64_t K, int64_t row, int64_t k, bool vec,
                                                signed char* dst) {
  int4 c = make_int4(0, 0, 0, 0);
  if (row < rows) {
    const int8_t* s = src + row * K + k;
    if (vec && k + 16 <= K) {
      c = __ldg(reinterpret_cast<const int4*>(s));
    } else if (k < K) {
      uint32_t wd[4] = {0u, 0u, 0u, 0u};
#pragma unroll
      for (int b = 0; b < 16; ++b) {
        if (k + b < K)
          wd[b / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(s[b])) << (8 * (b % 4));
      }
      c = make_int4(static_cast<int>(wd[0]), static_cast<int>(wd[1]), static_cast<int>(wd[2]),
                    static_cast<int>(wd[3]));
    }
  }
  *reinterpret_cast<int4*>(dst) = c;
}

__global__ void __launch_bounds__(int8_gemm_tiling::kThreads)
    int8_gemm_kernel(const Int8GemmParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 720
  __trap();  // int8 wmma needs sm_72+; the launcher is only built for sm_80+
#else
  using namespace int8_gemm_tiling;
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(128) signed char sA[kPanels * kBlockM * kFrag];
  __shared__ __align__(128) signed char sB[kPanels * kBlockN * kFrag];
  __shared__ __align__(128) int sC[kWarps][kFrag * kFrag];

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int wm = warp / 2;  // warp's 32-row half of the tile
  const int wn = warp % 2;  // warp's 32-column half
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBlockN;
  int* scratch = sC[warp];

  for (int64_t mt = blockIdx.y; mt < p.m_tiles; mt += gridDim.y) {
    const int64_t m0 = mt * kBlockM;
    wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int jn = 0; jn < 2; ++jn) wmma::fill_fragment(acc[i][jn], 0);

    for (int64_t k0 = 0; k0 < p.K; k0 += kBlockK) {
#pragma unroll
      for (int s = tid; s < kBlockM * kBlockK / kChunk; s += kThreads) {  // 2 slots per thread
        int row, kc;
        int8_copy_slot(s, &row, &kc);
        load_int8_chunk(p.xq, p.M, p.K, m0 + row, k0 + kc * kChunk, p.vec_a != 0,
                        sA + int8_panel_index(kBlockM, row, kc * kChunk));
        load_int8_chunk(p.w, p.N, p.K, n0 + row, k0 + kc * kChunk, p.vec_b != 0,
                        sB + int8_panel_index(kBlockN, row, kc * kChunk));
      }
      __syncthreads();
#pragma unroll
      for (int pnl = 0; pnl < kPanels; ++pnl) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> b[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          // A panel: [row][16] row-major; B = w^T (k x n): sB panel [n][16] is column-major.
          wmma::load_matrix_sync(
              a[i], sA + int8_panel_index(kBlockM, wm * kWarpM + i * 16, pnl * 16), kFrag);
          wmma::load_matrix_sync(
              b[i], sB + int8_panel_index(kBlockN, wn * kWarpN + i * 16, pnl * 16), kFrag);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int jn = 0; jn < 2; ++jn) wmma::mma_sync(acc[i][jn], a[i], b[jn], acc[i][jn]);
      }
      __syncthreads();  // sA / sB are overwritten by the next chunk
    }

    // Epilogue through the per-warp 16x16 int32 scratch: float(acc) * x_scale * w_scale + bias.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int jn = 0; jn < 2; ++jn) {
        wmma::store_matrix_sync(scratch, acc[i][jn], kFrag, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < kFrag * kFrag; e += 32) {
          const int64_t m = m0 + wm * kWarpM + i * 16 + e / kFrag;
          const int64_t n = n0 + wn * kWarpN + jn * 16 + e % kFrag;
          if (m < p.M && n < p.N) {
            float v = static_cast<float>(scratch[e]) * __ldg(p.x_scale + m) * __ldg(p.w_scale + n);
            if (p.bias != nullptr) v += load_as_float(p.bias, n, p.kind);
            store_from_float(p.y, m * p.N + n, v, p.kind);
          }
        }
        __syncwarp();
      }
    }
  }
#endif
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

}  // namespace

cudaError_t quant_gemv_cuda(const QuantGemvArgs& a, cudaStream_t stream) {
  if (!quant_bits_supported(a.bits)) return cudaErrorInvalidValue;
  if (a.M < 0 || a.N < 0 || a.K < 0 || !valid_kind(a.dtype)) return cudaErrorInvalidValue;
  if (a.K > 0 && !quant_group_size_ok(a.K, a.group_size, a.bits)) return cudaErrorInvalidValue;
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  if (a.y == nullptr) return cudaErrorInvalidValue;
  const int kind = static_cast<int>(a.dtype);
  if (a.K == 0) {
    const int64_t total = a.M * a.N;
    const int64_t blocks64 = quant_ceil_div(total, 256);
    const unsigned blocks = static_cast<unsigned>(blocks64 < 65535 ? blocks64 : 65535);
    fill_bias_kernel<<<blocks, 256, 0, stream>>>(a.y, a.bias, a.M, a.N, kind);
    return cudaGetLastError();
  }
  if (a.x == nullptr || a.packed == nullptr || a.scales == nullptr || a.zeros == nullptr) {
    return cudaErrorInvalidValue;
  }
  const GemvPlan plan = make_gemv_plan(a.M, a.N, a.K, a.bits);
  if (plan.grid_x > 0x7fffffff || plan.grid_y < 1) return cudaErrorInvalidValue;

  GemvParams p;
  p.x = a.x;
  p.x_sm = a.x_stride_m;
  p.x_sk = a.x_stride_k;
  p.packed = reinterpret_cast<const uint32_t*>(a.packed);
  p.scales = a.scales;
  p.zeros = a.zeros;
  p.bias = a.bias;
  p.y = a.y;
  p.M = a.M;
  p.N = a.N;
  p.K = a.K;
  p.W = plan.words_per_row;
  p.G = a.group_size;
  p.num_groups = a.K / a.group_size;
  p.g_shift = quant_group_shift(a.group_size);
  p.num_stages = plan.num_stages;
  p.m_chunks = plan.m_chunks;
  p.kind = kind;
  p.vec = (p.W % gemv_tiling::kVecWords == 0 && aligned16(a.packed)) ? 1 : 0;

  switch (a.bits) {
    case 2:
      return launch_gemv_bits<2>(p, plan, stream);
    case 3:
      return launch_gemv_bits<3>(p, plan, stream);
    case 4:
      return launch_gemv_bits<4>(p, plan, stream);
    case 8:
      return launch_gemv_bits<8>(p, plan, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t quantize_rows_int8_cuda(const QuantizeRowsInt8Args& a, cudaStream_t stream) {
  if (a.M < 0 || a.K < 0 || !valid_kind(a.dtype)) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  if (a.x_scale == nullptr || (a.K > 0 && (a.x == nullptr || a.xq == nullptr))) {
    return cudaErrorInvalidValue;
  }
  const unsigned blocks = static_cast<unsigned>(a.M < 0x7fffffff ? a.M : 0x7fffffff);
  quantize_rows_int8_kernel<<<blocks, kQuantThreads, 0, stream>>>(
      a.x, a.x_stride_m, a.x_stride_k, a.xq, a.x_scale, a.M, a.K, static_cast<int>(a.dtype));
  return cudaGetLastError();
}

cudaError_t int8_gemm_cuda(const Int8GemmArgs& a, cudaStream_t stream) {
  using namespace int8_gemm_tiling;
  if (a.M < 0 || a.N < 0 || a.K < 0 || !valid_kind(a.dtype)) return cudaErrorInvalidValue;
  // int32 accumulation is exact while K * 127 * 127 < 2^31 (K <= 2^17).
  if (a.K > (int64_t{1} << 17)) return cudaErrorInvalidValue;
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  if (a.y == nullptr || a.x_scale == nullptr || a.w_scale == nullptr) return cudaErrorInvalidValue;
  if (a.K > 0 && (a.xq == nullptr || a.w == nullptr)) return cudaErrorInvalidValue;
  const int64_t n_tiles = quant_ceil_div(a.N, kBlockN);
  const int64_t m_tiles = quant_ceil_div(a.M, kBlockM);
  if (n_tiles > 0x7fffffff) return cudaErrorInvalidValue;
  Int8GemmParams p;
  p.xq = a.xq;
  p.x_scale = a.x_scale;
  p.w = a.w;
  p.w_scale = a.w_scale;
  p.bias = a.bias;
  p.y = a.y;
  p.M = a.M;
  p.N = a.N;
  p.K = a.K;
  p.m_tiles = m_tiles;
  p.kind = static_cast<int>(a.dtype);
  p.vec_a = (a.K % 16 == 0 && aligned16(a.xq)) ? 1 : 0;
  p.vec_b = (a.K % 16 == 0 && aligned16(a.w)) ? 1 : 0;
  const unsigned gy = static_cast<unsigned>(m_tiles < kMaxGridY ? m_tiles : kMaxGridY);
  int8_gemm_kernel<<<dim3(static_cast<unsigned>(n_tiles), gy), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace supernet_kernels
