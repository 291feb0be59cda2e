// Quantized linear kernels (CUDA), torch-free API.
//   * quant_gemv_cuda: weight-only (A16) small-M GEMM with packed 2/3/4/8-bit weights,
//       y (M, N) = x (M, K) @ dequant(W)^T + bias, dequant(W)[n, k] = (q - zeros) * scales.
//   * quantize_rows_int8_cuda: per-token dynamic int8 activation quantization.
//   * int8_gemm_cuda: W8A8 tensor-core GEMM with int32 accumulation and fp32 epilogue.
// The packing format is described in quant_plan.h (same as supernet_kernels/quant/packing.py).
// NOTE: the kernels have only been compiled, never run on a real GPU yet (see quant_cuda.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../scalar_kind.h"
#include "quant_plan.h"

namespace supernet_kernels {

struct QuantGemvArgs {
  const void* x;  // (M, K) of `dtype`, element strides below (any layout)
  int64_t x_stride_m, x_stride_k;
  const int32_t* packed;  // (N, ceil(K / PER_WORD)) contiguous
  const float* scales;    // (N, K / G) contiguous
  const float* zeros;     // (N, K / G) contiguous
  const void* bias;       // (N) contiguous of `dtype`, or nullptr
  void* y;                // (M, N) contiguous of `dtype`
  int64_t M, N, K;
  int bits;            // 2, 3, 4 or 8
  int64_t group_size;  // G: divides K; see quant_group_size_ok
  ScalarKind dtype;
};

// Validates (cudaErrorInvalidValue for bits not in {2,3,4,8}, G not dividing K or violating
// quant_group_size_ok, M / N / K < 0, unknown dtype, null pointers where data is needed,
// grid.x overflow) and launches on `stream`; returns cudaGetLastError(). M == 0 or N == 0 is a
// no-op; K == 0 writes y = bias (or 0).
cudaError_t quant_gemv_cuda(const QuantGemvArgs& a, cudaStream_t stream);

struct QuantizeRowsInt8Args {
  const void* x;  // (M, K) of `dtype`, element strides
  int64_t x_stride_m, x_stride_k;
  int8_t* xq;      // (M, K) contiguous
  float* x_scale;  // (M)
  int64_t M, K;
  ScalarKind dtype;
};

// x_scale[m] = max_k |x[m, k]| / 127 (1 for an all-zero row, whose codes are then all 0);
// xq[m, k] = clamp(round_half_even(x[m, k] / x_scale[m]), -127, 127). Non-finite inputs are
// not special-cased (an inf makes the row's scale inf; NaN propagates through max as fmaxf
// does, i.e. it is ignored unless the whole row is NaN).
cudaError_t quantize_rows_int8_cuda(const QuantizeRowsInt8Args& a, cudaStream_t stream);

struct Int8GemmArgs {
  const int8_t* xq;      // (M, K) contiguous
  const float* x_scale;  // (M)
  const int8_t* w;       // (N, K) contiguous
  const float* w_scale;  // (N)
  const void* bias;      // (N) contiguous of `dtype`, or nullptr
  void* y;               // (M, N) contiguous of `dtype`
  int64_t M, N, K;
  ScalarKind dtype;  // output (and bias) element type
};

// y[m, n] = float(sum_k xq[m, k] * w[n, k]) * x_scale[m] * w_scale[n] + bias[n]; the sum is
// an exact int32 accumulation for K < 2^17 (|codes| <= 127; K >= 2^17 is rejected).
cudaError_t int8_gemm_cuda(const Int8GemmArgs& a, cudaStream_t stream);

}  // namespace supernet_kernels
