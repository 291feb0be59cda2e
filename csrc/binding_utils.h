// Helpers shared by the torch bindings (csrc/bindings.cpp, csrc/quant_bindings.cpp). Torch
// headers: include from the binding .cpp files only, never from a .cu file.
#pragma once

#include <ATen/core/Tensor.h>

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

}  // namespace supernet_kernels
