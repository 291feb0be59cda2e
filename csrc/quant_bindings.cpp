// Torch binding of the quantized linear kernels (csrc/quant/quant_cuda.{h,cu}).
//
// Registers private CUDA implementations into the supernet_kernels op library:
//   _quant_linear_cuda(Tensor x, Tensor packed, Tensor scales, Tensor zeros, int bits,
//                      int group_size, int in_features, Tensor? bias) -> Tensor
//   _int8_linear_cuda(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias) -> Tensor
// This file does not define PyInit__C (csrc/bindings.cpp does); it is linked into the same
// extension and its whole body is compiled only with SK_WITH_CUDA.
#ifdef SK_WITH_CUDA
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "binding_utils.h"
#include "quant/quant_cuda.h"

namespace supernet_kernels {
namespace {

void check_same_device(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), op, " (cuda): ", name,
              " must be a CUDA tensor on x's device (", x.device(), "), got ", t.device());
}

// Bias (N) of x's dtype, made contiguous; returns nullptr when absent.
const void* checked_bias(const std::optional<at::Tensor>& bias, at::Tensor* holder,
                         const at::Tensor& x, int64_t N, const char* op) {
  if (!bias.has_value()) return nullptr;
  const at::Tensor& b = *bias;
  TORCH_CHECK(b.dim() == 1 && b.size(0) == N, op, " (cuda): bias must be 1-D of size ", N, ", got ",
              b.sizes());
  check_same_device(b, x, op, "bias");
  TORCH_CHECK(b.scalar_type() == x.scalar_type(), op, " (cuda): bias must have x's dtype (",
              x.scalar_type(), "), got ", b.scalar_type());
  *holder = b.contiguous();
  return holder->data_ptr();
}

at::Tensor quant_linear_cuda_op(const at::Tensor& x, const at::Tensor& packed,
                                const at::Tensor& scales, const at::Tensor& zeros, int64_t bits,
                                int64_t group_size, int64_t in_features,
                                const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "quant_linear";
  TORCH_CHECK(x.dim() == 2, op, " (cuda): x must be 2-D (M, K), got ", x.sizes());
  TORCH_CHECK(x.is_cuda(), op, " (cuda): x must be a CUDA tensor, got ", x.device());
  const ScalarKind kind = scalar_kind(x, op, "x");
  TORCH_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, op,
              " (cuda): bits must be 2, 3, 4 or 8, got ", bits);
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(in_features == K, op, " (cuda): in_features (", in_features,
              ") must equal x.size(1) (", K, ")");
  TORCH_CHECK(K >= 1, op, " (cuda): in_features must be >= 1, got ", K);
  TORCH_CHECK(group_size >= 1 && K % group_size == 0, op, " (cuda): group_size (", group_size,
              ") must divide in_features (", K, ")");
  TORCH_CHECK(quant_group_size_ok(K, group_size, static_cast<int>(bits)), op,
              " (cuda): group_size ", group_size, " is not supported for ", bits,
              "-bit weights (need a multiple of ", quant_per_word(static_cast<int>(bits)),
              " codes, >= 10 for 3-bit, or group_size == in_features)");
  TORCH_CHECK(packed.dim() == 2, op, " (cuda): packed must be 2-D (N, words), got ",
              packed.sizes());
  check_same_device(packed, x, op, "packed");
  TORCH_CHECK(packed.scalar_type() == at::kInt, op, " (cuda): packed must be int32, got ",
              packed.scalar_type());
  const int64_t N = packed.size(0);
  const int64_t words = quant_words_per_row(K, static_cast<int>(bits));
  TORCH_CHECK(packed.size(1) == words, op, " (cuda): packed must have ceil(in_features / ",
              quant_per_word(static_cast<int>(bits)), ") = ", words, " columns for ", bits,
              "-bit weights, got ", packed.size(1));
  const int64_t groups = K / group_size;
  const auto check_group_param = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == groups, op, " (cuda): ", name,
                " must have shape (", N, ", ", groups, ") = (out_features, in_features / ",
                "group_size), got ", t.sizes());
    check_same_device(t, x, op, name);
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, " (cuda): ", name, " must be float32, got ",
                t.scalar_type());
  };
  check_group_param(scales, "scales");
  check_group_param(zeros, "zeros");

  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor packed_c = packed.contiguous();
  const at::Tensor scales_c = scales.contiguous();
  const at::Tensor zeros_c = zeros.contiguous();
  at::Tensor bias_c;
  const void* bias_ptr = checked_bias(bias, &bias_c, x, N, op);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;

  QuantGemvArgs a{};
  a.x = x.data_ptr();
  a.x_stride_m = x.stride(0);
  a.x_stride_k = x.stride(1);
  a.packed = packed_c.data_ptr<int32_t>();
  a.scales = scales_c.data_ptr<float>();
  a.zeros = zeros_c.data_ptr<float>();
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

at::Tensor int8_linear_cuda_op(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& weight_scale,
                               const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "int8_linear";
  TORCH_CHECK(x.dim() == 2, op, " (cuda): x must be 2-D (M, K), got ", x.sizes());
  TORCH_CHECK(x.is_cuda(), op, " (cuda): x must be a CUDA tensor, got ", x.device());
  const ScalarKind kind = scalar_kind(x, op, "x");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == K, op,
              " (cuda): weight must be 2-D (N, K) with K = x.size(1) = ", K, ", got ",
              weight.sizes());
  check_same_device(weight, x, op, "weight");
  TORCH_CHECK(weight.scalar_type() == at::kChar, op, " (cuda): weight must be int8, got ",
              weight.scalar_type());
  const int64_t N = weight.size(0);
  TORCH_CHECK(weight_scale.dim() == 1 && weight_scale.size(0) == N, op,
              " (cuda): weight_scale must be 1-D of size N = ", N, ", got ", weight_scale.sizes());
  check_same_device(weight_scale, x, op, "weight_scale");
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat, op,
              " (cuda): weight_scale must be float32, got ", weight_scale.scalar_type());
  TORCH_CHECK(K <= (int64_t{1} << 17), op, " (cuda): in_features must be <= 131072 for exact ",
              "int32 accumulation, got ", K);

  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor w_c = weight.contiguous();
  const at::Tensor ws_c = weight_scale.contiguous();
  at::Tensor bias_c;
  const void* bias_ptr = checked_bias(bias, &bias_c, x, N, op);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const int device = x.get_device();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();

  at::Tensor xq = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor x_scale = at::empty({M}, x.options().dtype(at::kFloat));
  QuantizeRowsInt8Args qa{};
  qa.x = x.data_ptr();
  qa.x_stride_m = x.stride(0);
  qa.x_stride_k = x.stride(1);
  qa.xq = xq.data_ptr<int8_t>();
  qa.x_scale = x_scale.data_ptr<float>();
  qa.M = M;
  qa.K = K;
  qa.dtype = kind;
  cudaError_t err = quantize_rows_int8_cuda(qa, stream);
  TORCH_CHECK(err == cudaSuccess, op, " (cuda): quantize launch failed: ", cudaGetErrorString(err));

  Int8GemmArgs ga{};
  ga.xq = xq.data_ptr<int8_t>();
  ga.x_scale = x_scale.data_ptr<float>();
  ga.w = w_c.data_ptr<int8_t>();
  ga.w_scale = ws_c.data_ptr<float>();
  ga.bias = bias_ptr;
  ga.y = y.data_ptr();
  ga.M = M;
  ga.N = N;
  ga.K = K;
  ga.dtype = kind;
  err = int8_gemm_cuda(ga, stream);
  TORCH_CHECK(err == cudaSuccess, op, " (cuda): GEMM launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(supernet_kernels, m) {
  m.def(
      "_quant_linear_cuda(Tensor x, Tensor packed, Tensor scales, Tensor zeros, int bits, "
      "int group_size, int in_features, Tensor? bias) -> Tensor");
  m.impl("_quant_linear_cuda", c10::DispatchKey::CUDA, TORCH_FN(quant_linear_cuda_op));
  m.def("_int8_linear_cuda(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias) -> Tensor");
  m.impl("_int8_linear_cuda", c10::DispatchKey::CUDA, TORCH_FN(int8_linear_cuda_op));
}

}  // namespace supernet_kernels
#endif  // SK_WITH_CUDA
