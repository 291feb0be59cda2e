// Weight-only quantized GEMV / small-M GEMM on the tensor cores (A16: 2/3/4/8-bit weights).
//
// *** STATUS: compiled for sm_80 / sm_90, NOT YET RUN ON A GPU. The layout arithmetic is
// *** shared with quant_plan.h and mirrored by tests/cpp/test_quant_plan.cpp (host emulation of
// *** this kernel's fragments, dequantization and reduction) and by the Python emulation in
// *** tests/test_quant_cuda_layout.py; the device code itself is only reviewed by hand.
//
// quant_gemv_kernel<KIND, LB, MH, SPAN> (layout and partition in quant_plan.h):
//   KIND: activation dtype (0 fp32, 1 fp16, 2 bf16), LB: layout bits (2, 4, 8; 3-bit weights
//   use 4), MH: 8-row halves of x per CTA (1 for M <= 8, else 2), SPAN: columns of one group
//   run (a group smaller than a chunk, else the chunk).
//   grid.x = row tiles of 16 weight rows, grid.y grid-strides over 16-row chunks of x. The 8
//   warps of a CTA split K (whole chunks each); each lane streams its 16-byte code chunks with
//   `stages` loads in flight, no shared memory in front of them: x comes through L1 with
//   16-byte loads (a lane's x columns are contiguous per span by construction of the layout).
//   Per mma step a lane dequantizes 8 codes into four packed pairs: one LOP3 puts a pair of
//   codes into the mantissas of a magic fp16 (1024) / bf16 (128) pair, one HFMA2 scales and
//   subtracts magic + z (the integer zero point: exact q - z), one mma.sync m16n8k16 (fp32
//   accumulation) multiplies them with x. At the end of each group's span the float32 scale
//   applies once, y += s * sum(x (q - z)), so scales keep their float32 values and the
//   tensor cores multiply exact small integers. fp32 activations are split into three bf16
//   parts (hi + mid + lo carry all 24 bits), each an mma against the exact bf16 codes, summed
//   per step in fp32.
//   Census (sm_90, fp16, M = 1, g128, main loop): 2.1 SASS instructions per 4-bit code, 1.7
//   per 2-bit code, 3.1 per 8-bit code; M = 16: 2.5, 2.0 and 3.6. No stack.
//   The 8 warps' partial sums are reduced through shared memory; bias and the cast to the
//   output dtype are fused. One launch per call; 32-bit offsets inside the launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "quant_cuda.h"

namespace supernet_kernels {
namespace {

template <int KIND>
struct ActT;
template <>
struct ActT<gemv::kKindF32> {
  using T = float;
};
template <>
struct ActT<gemv::kKindF16> {
  using T = __half;
};
template <>
struct ActT<gemv::kKindBF16> {
  using T = __nv_bfloat16;
};

// The codes' type in the mma: fp16 for fp16 x; bf16 for bf16 x and for fp32 x (split in bf16).
constexpr int dq_kind(int kind) {
  return kind == gemv::kKindF16 ? gemv::kKindF16 : gemv::kKindBF16;
}

struct GemvParams {
  const void* x;
  const int32_t* codes;
  const float* params;
  const void* bias;
  void* y;
  int64_t ldx;
  int M, N, n_chunks, groups, group_shift, m_chunks;
};

// (a & b) | c in one LOP3.
__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

template <int DQ>
__device__ __forceinline__ uint32_t add2(uint32_t a, uint32_t b) {
  uint32_t r;
  if constexpr (DQ == gemv::kKindF16) {
    asm("add.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  } else {  // add.bf16x2 needs sm_90; a fused multiply by 1.0 is the same on sm_80+
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(0x3F803F80u), "r"(b));
  }
  return r;
}

template <int DQ>
__device__ __forceinline__ uint32_t fma2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  if constexpr (DQ == gemv::kKindF16) {
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  } else {
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  }
  return r;
}

// Two floats rounded to a bf16 pair (a in the low half) in one F2FP; register-only, where
// taking the address of a __nv_bfloat162 sent it through the stack.
__device__ __forceinline__ uint32_t bf16x2_bits(float a, float b) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
  return r;
}

// A pair of floats in the mma's 16-bit type (a in the low half).
template <int DQ>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  if constexpr (DQ == gemv::kKindF16) {
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    return r;
  } else {
    return bf16x2_bits(a, b);
  }
}

// Pair position i of word w (both halves: rows of the same parity, so one zero point) as two
// exact values q - z in the mma's 16-bit type, z an integer (nz = -z). The magic route: one
// LOP3 puts the codes in the mantissas of a magic pair, one HFMA2 scales by 2^-offset and
// subtracts magic * 2^-offset + z (an exact small integer, made once per span).
template <int DQ, int LB>
__device__ __forceinline__ uint32_t dequant_pair(uint32_t w, int i, float nz, uint32_t nz2) {
  if constexpr (!gemv_magic_route(DQ, LB)) {
    // bf16 has 8 significant bits: 8-bit codes go through the fp32 magic 2^23 instead.
    const uint32_t lo = (w >> (8 * i)) & 0xFFu, hi = (w >> (16 + 8 * i)) & 0xFFu;
    const float bias = nz - 8388608.f;  // -(2^23 + z), exact
    return bf16x2_bits(__uint_as_float(0x4B000000u | lo) + bias,
                       __uint_as_float(0x4B000000u | hi) + bias);
  } else {
    const int sh = gemv_pair_shift(DQ, LB, i), off = gemv_pair_offset(DQ, LB, i);
    const uint32_t m = ((1u << LB) - 1u) << off;
    const uint32_t v = lop3_and_or(w >> sh, m | (m << 16), gemv_magic_or(DQ));
    // -(magic * 2^-off + z): exact small integers; one HADD2 per span and offset
    const uint32_t c = add2<DQ>(nz2, gemv_neg_magic(DQ, off));
    return fma2<DQ>(v, gemv_pow2_neg(DQ, off), c);
  }
}

// The A fragment of step s of a lane's chunk: pairs 4 s .. 4 s + 3; register r holds row
// g + 8 (r % 2), whose -z is nz[r % 2].
template <int DQ, int LB>
__device__ __forceinline__ void dequant_step(const uint4& c, int s, const float (&nz)[2],
                                             const uint32_t (&nz2)[2], uint32_t (&a)[4]) {
  constexpr int PPW = gemv_pairs_per_word(LB);
  const uint32_t words[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int pr = 4 * s + r;
    a[r] = dequant_pair<DQ, LB>(words[pr / PPW], pr % PPW, nz[r % 2], nz2[r % 2]);
  }
}

template <int DQ>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (DQ == gemv::kKindF16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Streamed weights: read once, kept out of L1 (which holds x for the CTA's other warps).
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// fp32 x (two elements) as hi + mid + lo bf16 pairs: each part takes the next 8 bits.
__device__ __forceinline__ void split3(float x0, float x1, uint32_t (&part)[3]) {
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    part[i] = bf16x2_bits(x0, x1);
    x0 -= __uint_as_float(part[i] << 16);
    x1 -= __uint_as_float(part[i] & 0xFFFF0000u);
  }
}

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return static_cast<float>(v);
  }
}
template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return v;
  }
}

template <int DQ>
__device__ __forceinline__ void mma16816_zero_c(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                uint32_t b1) {
  c[0] = c[1] = c[2] = c[3] = 0.f;  // folded into the mma's C operand (RZ)
  mma16816<DQ>(c, a, b0, b1);
}

template <int KIND, int LB, int MH, int SPAN>
__global__ void __launch_bounds__(gemv::kThreads, 1) quant_gemv_kernel(const GemvParams p) {
  using T = typename ActT<KIND>::T;
  constexpr int DQ = dq_kind(KIND);
  constexpr int SPC = gemv_steps_per_chunk(LB);
  constexpr int KC = gemv_chunk_k(LB);
  constexpr int SPK = KC / SPAN;  // spans (groups, where smaller than a chunk) per chunk
  constexpr int SPS = SPAN / 16;  // steps per span
  constexpr int EB = static_cast<int>(sizeof(T));
  constexpr int XL = gemv_x_loads_per_chunk(LB, EB);  // 16-byte x loads per chunk and half
  constexpr int XLS = XL / SPK;                       // ... per span
  constexpr int D = gemv_stages(LB, SPAN, EB, MH);
  static_assert(KC % SPAN == 0 && SPAN % 32 == 0 && XLS >= 1 && XL % SPK == 0, "layout");
  static_assert(SPC % SPS == 0, "whole spans per chunk");

  __shared__ float red[gemv::kWarps * MH * 4 * 32];

  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int g = lane / 4, t = lane % 4;
  const int rt = static_cast<int>(blockIdx.x);
  int64_t cb64, ce64;
  gemv_warp_chunks(p.n_chunks, warp, &cb64, &ce64);
  const int cb = static_cast<int>(cb64), ce = static_cast<int>(ce64);
  const uint4* __restrict__ wbase =
      reinterpret_cast<const uint4*>(p.codes) + rt * p.n_chunks * 32 + lane;
  const float4* __restrict__ pbase =
      reinterpret_cast<const float4*>(p.params) + rt * p.groups * 8 + g;

  struct Stage {
    uint4 w;
    float4 prm[SPK];  // {s, -z} of rows g and g + 8, per span
    uint4 x[MH][XL];
  };

  for (int mc = static_cast<int>(blockIdx.y); mc < p.m_chunks; mc += static_cast<int>(gridDim.y)) {
    const int m0 = mc * gemv::kMTile;
    const T* xr[MH];
#pragma unroll
    for (int mh = 0; mh < MH; ++mh) {
      // rows past M read row M - 1: the mma's columns are independent, and those are not stored
      const int m = min(m0 + g + 8 * mh, p.M - 1);
      xr[mh] = static_cast<const T*>(p.x) + m * p.ldx + t * (SPAN / 4) + cb * KC;
    }
    const uint4* wq = wbase + cb * 32;
    float yv[MH][4];
#pragma unroll
    for (int mh = 0; mh < MH; ++mh) {
#pragma unroll
      for (int q = 0; q < 4; ++q) yv[mh][q] = 0.f;
    }

    // Chunk cc = c + i (i < 2 D) is read at wq + 32 i, xr + KC i: a base per iteration plus
    // constant offsets.
    auto load = [&](Stage& s, int i, int cc) {
      s.w = ld_stream(wq + 32 * i);
#pragma unroll
      for (int j = 0; j < SPK; ++j) {
        const int grp = SPAN < KC ? cc * SPK + j : cc >> p.group_shift;
        s.prm[j] = __ldg(pbase + grp * 8);
      }
#pragma unroll
      for (int mh = 0; mh < MH; ++mh) {
#pragma unroll
        for (int j = 0; j < SPK; ++j) {
          const uint4* src = reinterpret_cast<const uint4*>(xr[mh] + i * KC + j * SPAN);
#pragma unroll
          for (int v = 0; v < XLS; ++v) s.x[mh][j * XLS + v] = __ldg(src + v);
        }
      }
    };
    // One chunk: per span, acc = sum over its columns of x (q - z), then y += s * acc in fp32.
    auto compute = [&](const Stage& s) {
#pragma unroll
      for (int j = 0; j < SPK; ++j) {
        const float nz[2] = {s.prm[j].y, s.prm[j].w};
        const uint32_t nz2[2] = {pack2<DQ>(nz[0], nz[0]), pack2<DQ>(nz[1], nz[1])};
        float acc[MH][4];
#pragma unroll
        for (int sp = 0; sp < SPS; ++sp) {
          uint32_t a[4];
          dequant_step<DQ, LB>(s.w, j * SPS + sp, nz, nz2, a);
          const int e0 = j * (SPAN / 4) + sp * 4;  // the step's first x element
#pragma unroll
          for (int mh = 0; mh < MH; ++mh) {
            const uint32_t* xw = reinterpret_cast<const uint32_t*>(&s.x[mh][0]);
            if constexpr (KIND != gemv::kKindF32) {
              const uint32_t b0 = xw[e0 / 2], b1 = xw[e0 / 2 + 1];
              if (sp == 0) {
                mma16816_zero_c<DQ>(acc[mh], a, b0, b1);
              } else {
                mma16816<DQ>(acc[mh], a, b0, b1);
              }
            } else {
              uint32_t lo[3], hi[3];
              split3(__uint_as_float(xw[e0]), __uint_as_float(xw[e0 + 1]), lo);
              split3(__uint_as_float(xw[e0 + 2]), __uint_as_float(xw[e0 + 3]), hi);
              // each step's three products summed in fp32 before joining the span's sum, so
              // the tensor cores' accumulation never runs over more than one step
              float tq[4];
              mma16816_zero_c<DQ>(tq, a, lo[0], hi[0]);
              mma16816<DQ>(tq, a, lo[1], hi[1]);
              mma16816<DQ>(tq, a, lo[2], hi[2]);
#pragma unroll
              for (int q = 0; q < 4; ++q) acc[mh][q] = sp == 0 ? tq[q] : acc[mh][q] + tq[q];
            }
          }
        }
#pragma unroll
        for (int mh = 0; mh < MH; ++mh) {
#pragma unroll
          for (int q = 0; q < 4; ++q)
            yv[mh][q] = fmaf(q < 2 ? s.prm[j].x : s.prm[j].z, acc[mh][q], yv[mh][q]);
        }
      }
    };

    Stage st[D];
#pragma unroll
    for (int d = 0; d < D; ++d) {
      if (cb + d < ce) load(st[d], d, cb + d);
    }
#pragma unroll 1
    for (int c = cb; c < ce; c += D) {
#pragma unroll
      for (int d = 0; d < D; ++d) {
        if (c + d < ce) {
          compute(st[d]);
          if (c + d + D < ce) load(st[d], d + D, c + d + D);
        }
      }
      wq += 32 * D;
#pragma unroll
      for (int mh = 0; mh < MH; ++mh) xr[mh] += KC * D;
    }

    // The warps' partial sums: C fragment (row g + 8 (q / 2), column 2 t + q % 2) of each half.
#pragma unroll
    for (int mh = 0; mh < MH; ++mh) {
#pragma unroll
      for (int q = 0; q < 4; ++q) red[((warp * MH + mh) * 4 + q) * 32 + lane] = yv[mh][q];
    }
    __syncthreads();
    const int tid = static_cast<int>(threadIdx.x);
    if (tid < MH * 4 * 32) {
      const int mhq = tid / 32, l = tid % 32;
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < gemv::kWarps; ++w) v += red[(w * MH * 4 + mhq) * 32 + l];
      const int q = mhq % 4;
      const int n = rt * gemv::kRowsPerTile + l / 4 + 8 * (q / 2);
      const int m = m0 + 8 * (mhq / 4) + 2 * (l % 4) + q % 2;
      if (n < p.N && m < p.M) {
        if (p.bias != nullptr) v += to_float(static_cast<const T*>(p.bias)[n]);
        static_cast<T*>(p.y)[static_cast<int64_t>(m) * p.N + n] = from_float<T>(v);
      }
    }
    __syncthreads();  // red is rewritten for the next chunk of x
  }
}

template <int KIND, int LB, int MH, int SPAN>
cudaError_t launch(const GemvParams& p, const GemvPlan& plan, cudaStream_t stream) {
  quant_gemv_kernel<KIND, LB, MH, SPAN>
      <<<dim3(static_cast<unsigned>(plan.n_tiles), static_cast<unsigned>(plan.grid_y)),
         gemv::kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <int KIND, int MH>
cudaError_t launch_span(const GemvParams& p, const GemvPlan& plan, cudaStream_t stream) {
  switch (plan.lb * 1000 + plan.span) {
    case 2032:
      return launch<KIND, 2, MH, 32>(p, plan, stream);
    case 2064:
      return launch<KIND, 2, MH, 64>(p, plan, stream);
    case 2128:
      return launch<KIND, 2, MH, 128>(p, plan, stream);
    case 4032:
      return launch<KIND, 4, MH, 32>(p, plan, stream);
    case 4064:
      return launch<KIND, 4, MH, 64>(p, plan, stream);
    case 8032:
      return launch<KIND, 8, MH, 32>(p, plan, stream);
  }
  return cudaErrorInvalidValue;
}

template <int KIND>
cudaError_t launch_kind(const GemvParams& p, const GemvPlan& plan, cudaStream_t stream) {
  return plan.mh == 1 ? launch_span<KIND, 1>(p, plan, stream)
                      : launch_span<KIND, 2>(p, plan, stream);
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

}  // namespace

cudaError_t quant_gemv_cuda(const QuantGemvArgs& a, cudaStream_t stream) {
  if (a.M < 0 || a.N < 0 || a.K <= 0) return cudaErrorInvalidValue;
  const int kind = static_cast<int>(a.dtype);
  if (kind != gemv::kKindF32 && kind != gemv::kKindF16 && kind != gemv::kKindBF16)
    return cudaErrorInvalidValue;
  const int eb = kind == gemv::kKindF32 ? 4 : 2;
  const GemvPlan plan = make_gemv_plan(a.M, a.N, a.K, a.bits, a.group_size, eb);
  if (!plan.ok || a.M >= (int64_t{1} << 31) || a.N >= (int64_t{1} << 31))
    return cudaErrorInvalidValue;
  if (a.M == 0 || a.N == 0) return cudaSuccess;
  if (a.x == nullptr || a.codes == nullptr || a.params == nullptr || a.y == nullptr)
    return cudaErrorInvalidValue;
  // 16-byte x loads: aligned rows, and each row readable up to k_pad
  if (!aligned16(a.x) || !aligned16(a.codes) || !aligned16(a.params) || (a.ldx * eb) % 16 != 0 ||
      a.ldx < plan.k_pad || (a.M - 1) * a.ldx + plan.k_pad >= (int64_t{1} << 31))
    return cudaErrorInvalidValue;
  GemvParams p;
  p.x = a.x;
  p.codes = a.codes;
  p.params = a.params;
  p.bias = a.bias;
  p.y = a.y;
  p.ldx = a.ldx;
  p.M = static_cast<int>(a.M);
  p.N = static_cast<int>(a.N);
  p.n_chunks = static_cast<int>(plan.n_chunks);
  p.groups = static_cast<int>(plan.groups);
  p.group_shift = plan.group_shift;
  p.m_chunks = static_cast<int>(plan.m_chunks);
  switch (kind) {
    case gemv::kKindF16:
      return launch_kind<gemv::kKindF16>(p, plan, stream);
    case gemv::kKindBF16:
      return launch_kind<gemv::kKindBF16>(p, plan, stream);
    default:
      return launch_kind<gemv::kKindF32>(p, plan, stream);
  }
}

}  // namespace supernet_kernels
