// Fused sliced low-rank GEMM (CUDA), torch-free API.
//   y[m, n] = sum_r (sum_k x[m, k] * v[r, k]) * u[n, r] + bias[n]
// for m < M, n < N, r < R, k < K. All operands are strided (element strides, any layout); only
// v[:R, :K] and u[:N, :R] are read. The M x R intermediate t stays in shared memory.
// NOTE: the kernel has only been compiled, never run on a real GPU yet (see lowrank_cuda.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "lowrank_plan.h"

namespace supernet_kernels {

enum class ScalarKind : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct LowRankArgs {
  const void* x;  // (M, K)
  int64_t x_stride_m, x_stride_k;
  const void* v;  // (>= R, K)
  int64_t v_stride_r, v_stride_k;
  const void* u;  // (>= N, >= R)
  int64_t u_stride_n, u_stride_r;
  const void* bias;  // (N) or nullptr
  int64_t bias_stride;
  void* y;  // (M, N)
  int64_t y_stride_m, y_stride_n;
  int64_t M, K, N, R;
  ScalarKind dtype;  // all of x, v, u, bias, y share this element type
};

// Largest supported rank. 256 fits the shared-memory budget on sm_80+ with a 64-row block:
// 108,032 B for fp32 / 67,584 B for fp16/bf16 per block (byte counts in lowrank_plan.h).
constexpr int kMaxFusedRank = 256;
static_assert(kMaxFusedRank == lowrank_tiling::kMaxRank, "keep in sync with lowrank_plan.h");

// Validates the arguments (cudaErrorInvalidValue for M, K, N < 0, R < 1, R > kMaxFusedRank,
// unknown dtype, null y / u (or x / v when K > 0), or M too large for grid.x), then launches one
// fused kernel on `stream` and returns cudaGetLastError(). M == 0 or N == 0 is a no-op that
// returns cudaSuccess. num_sms <= 0 means "query the current device".
cudaError_t lowrank_linear_cuda(const LowRankArgs& args, int num_sms, cudaStream_t stream);

}  // namespace supernet_kernels
