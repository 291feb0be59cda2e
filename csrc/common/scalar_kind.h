// The element type of a native kernel's float operands, shared by the CUDA sources and the
// torch bindings (csrc/common/binding_utils.h maps a tensor's dtype to it). Torch-free.
#pragma once

namespace supernet_kernels {

enum class ScalarKind : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace supernet_kernels
