// Helpers shared by the torch bindings (csrc/*_bindings.cpp). Torch
// headers: include from the binding .cpp files only, never from a .cu file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "scalar_kind.h"

namespace supernet_kernels {

// The kernels' element type for a float32 / float16 / bfloat16 tensor; any other dtype fails
// with "<op> (cuda): <name> must be float32, float16 or bfloat16, got <dtype>".
inline ScalarKind scalar_kind(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return ScalarKind::kFloat32;
    case at::kHalf:
      return ScalarKind::kFloat16;
    case at::kBFloat16:
      return ScalarKind::kBFloat16;
    default:
      TORCH_CHECK(false, op, " (cuda): ", name, " must be float32, float16 or bfloat16, got ",
                  t.scalar_type());
  }
  return ScalarKind::kFloat32;  // unreachable
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& x, const char* op,
                              const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), op, " (cuda): ", name,
              " must be a CUDA tensor on x's device (", x.device(), "), got ", t.device());
}

// Bias (N) of x's dtype, made contiguous; returns nullptr when absent.
inline const void* checked_bias(const std::optional<at::Tensor>& bias, at::Tensor* holder,
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

}  // namespace supernet_kernels
