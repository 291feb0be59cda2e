// Torch binding of the quantized linear kernels (csrc/quant/quant_cuda.{h,cu}).
//
// Registers a private CUDA implementation into the supernet_kernels op library:
//   _quant_linear_cuda(Tensor x, Tensor codes, Tensor params, int bits, int group_size,
//                      int in_features, int out_features, Tensor? bias) -> Tensor
// on a weight in the sk-cuda-gemv-v1 layout (supernet_kernels/quant/cuda_layout.py, which the
// quant_linear op makes once per weight). There is no CUDA C++ int8 GEMM: the one this file
// bound (wmma on a 64x64 tile, byte loads, no pipeline) measured 111 us at M = 1 on the H100,
// against 27-64 us for torch's _int_mm / _scaled_mm, which serve int8_linear instead.
// This file does not define PyInit__C (csrc/bindings.cpp does); it is linked into the same
// extension and its whole body is compiled only with SK_WITH_CUDA.
#ifdef SK_WITH_CUDA
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "common/binding_utils.h"
#include "quant/quant_cuda.h"

namespace supernet_kernels {
namespace {

at::Tensor quant_linear_cuda_op(const at::Tensor& x, const at::Tensor& codes,
                                const at::Tensor& params, int64_t bits, int64_t group_size,
                                int64_t in_features, int64_t out_features,
                                const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "quant_linear";
  TORCH_CHECK(x.dim() == 2, op, " (cuda): x must be 2-D (M, K), got ", x.sizes());
  TORCH_CHECK(x.is_cuda(), op, " (cuda): x must be a CUDA tensor, got ", x.device());
  const ScalarKind kind = scalar_kind(x, op, "x");
  TORCH_CHECK(quant_bits_supported(static_cast<int>(bits)), op,
              " (cuda): bits must be 2, 3, 4 or 8, got ", bits);
  const int64_t M = x.size(0), K = x.size(1), N = out_features;
  TORCH_CHECK(in_features == K && K >= 1, op, " (cuda): in_features (", in_features,
              ") must equal x.size(1) (", K, ") and be >= 1");
  TORCH_CHECK(N >= 0, op, " (cuda): out_features must be >= 0, got ", N);
  const int eb = kind == ScalarKind::kFloat32 ? 4 : 2;
  const GemvPlan plan = make_gemv_plan(M, N, K, static_cast<int>(bits), group_size, eb);
  TORCH_CHECK(plan.ok, op, " (cuda): no CUDA layout for ", bits, "-bit weights of ", "in_features ",
              K, " with group_size ", group_size,
              " (see supernet_kernels/quant/cuda_layout.py), or the weight is too large for ",
              "32-bit offsets");
  const int64_t words = plan.n_chunks * 128;
  TORCH_CHECK(codes.dim() == 2 && codes.size(0) == plan.n_tiles && codes.size(1) == words &&
                  codes.scalar_type() == at::kInt,
              op, " (cuda): codes must be int32 of shape (", plan.n_tiles, ", ", words,
              ") (the sk-cuda-gemv-v1 layout), got ", codes.scalar_type(), " ", codes.sizes());
  check_same_device(codes, x, op, "codes");
  TORCH_CHECK(params.dim() == 4 && params.size(0) == plan.n_tiles &&
                  params.size(1) == plan.groups && params.size(2) == 8 && params.size(3) == 4 &&
                  params.scalar_type() == at::kFloat,
              op, " (cuda): params must be float32 of shape (", plan.n_tiles, ", ", plan.groups,
              ", 8, 4), got ", params.scalar_type(), " ", params.sizes());
  check_same_device(params, x, op, "params");

  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor codes_c = codes.contiguous();
  const at::Tensor params_c = params.contiguous();
  at::Tensor bias_c;
  const void* bias_ptr = checked_bias(bias, &bias_c, x, N, op);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;

  // The kernel reads x rows with 16-byte loads up to k_pad columns: x itself where it allows
  // that, else a zero-padded copy (K not a whole number of chunks, or unaligned rows).
  const int64_t row_align = 16 / eb;
  const bool direct = !plan.x_copy && x.stride(1) == 1 &&
                      (M == 1 || x.stride(0) % row_align == 0) &&
                      (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16) == 0;
  at::Tensor xs = x;
  int64_t ldx = M == 1 ? plan.k_pad : x.stride(0);
  if (!direct) {
    xs = at::zeros({M, plan.k_pad}, x.options());
    xs.narrow(1, 0, K).copy_(x);
    ldx = plan.k_pad;
  }
  QuantGemvArgs a{};
  a.x = xs.data_ptr();
  a.ldx = ldx;
  a.codes = codes_c.data_ptr<int32_t>();
  a.params = params_c.data_ptr<float>();
  a.bias = bias_ptr;
  a.y = y.data_ptr();
  a.M = M;
  a.N = N;
  a.K = K;
  a.bits = static_cast<int>(bits);
  a.group_size = group_size;
  a.dtype = kind;
  const int device = x.get_device();
  const cudaError_t err = quant_gemv_cuda(a, c10::cuda::getCurrentCUDAStream(device).stream());
  TORCH_CHECK(err == cudaSuccess, op, " (cuda): kernel launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(supernet_kernels, m) {
  m.def(
      "_quant_linear_cuda(Tensor x, Tensor codes, Tensor params, int bits, int group_size, "
      "int in_features, int out_features, Tensor? bias) -> Tensor");
  m.impl("_quant_linear_cuda", c10::DispatchKey::CUDA, TORCH_FN(quant_linear_cuda_op));
}

}  // namespace supernet_kernels
#endif  // SK_WITH_CUDA
