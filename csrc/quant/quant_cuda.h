// Quantized linear kernel (CUDA), torch-free API.
//   quant_gemv_cuda: weight-only (A16) GEMV / small-M GEMM on the layout of quant_plan.h,
//     y (M, N) = x (M, K) @ dequant(W)^T + bias, made for M <= 16 (larger M runs it once per
//     16 rows of x).
// NOTE: compiled for sm_80 / sm_90 but not yet run on a GPU (see quant_cuda.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common/scalar_kind.h"
#include "quant_plan.h"

namespace supernet_kernels {

struct QuantGemvArgs {
  const void* x;         // (M, >= k_pad) of `dtype`, unit column stride, row stride ldx elements,
  int64_t ldx;           //   16-byte aligned rows; columns K .. k_pad - 1 read as zeros
  const int32_t* codes;  // (ceil(N / 16), n_chunks * 128), the layout of quant_plan.h
  const float* params;   // (ceil(N / 16), groups, 8, 4)
  const void* bias;      // (N) contiguous of `dtype`, or nullptr
  void* y;               // (M, N) contiguous of `dtype`
  int64_t M, N, K;
  int bits;            // 2, 3, 4 or 8 (sk-pack-v1 bits; 3 is stored as 4)
  int64_t group_size;  // G (G == K: per-channel)
  ScalarKind dtype;
};

// Validates (cudaErrorInvalidValue where make_gemv_plan has no layout, for M / N / K < 0, an
// unknown dtype, null or misaligned pointers) and launches on `stream`; returns
// cudaGetLastError(). M == 0 or N == 0 is a no-op.
cudaError_t quant_gemv_cuda(const QuantGemvArgs& a, cudaStream_t stream);

}  // namespace supernet_kernels
