// Torch binding of the native kernels: schemas, argument checks and the Python module stub.
//
// The CUDA sources take raw pointers and sizes and never include torch headers (each torch
// include costs ~1.5 min of compile on 2 cores); all tensor handling lives here.
// The public ops (`supernet_kernels::lowrank_linear`, ...) are defined in Python with
// torch.library; this file only adds the private native implementations they dispatch to.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <Python.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#ifdef SK_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "binding_utils.h"
#include "lowrank/lowrank_cuda.h"
#endif

namespace supernet_kernels {
namespace {

std::vector<int64_t> cuda_arch_list() {
#if defined(SK_WITH_CUDA) && defined(SK_CUDA_ARCH_LIST)
  return {SK_CUDA_ARCH_LIST};
#else
  return {};
#endif
}

bool has_cuda_kernels() {
#ifdef SK_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int64_t max_fused_rank() {
#ifdef SK_WITH_CUDA
  return kMaxFusedRank;
#else
  return 0;
#endif
}

#ifdef SK_WITH_CUDA
int num_sms(int device) {
  // Cached per device: cudaDeviceGetAttribute is cheap but not free, and this sits on the
  // launch path of a kernel that takes microseconds at ViT-B batch 1.
  static int cache[64] = {0};
  if (device >= 0 && device < 64 && cache[device] > 0) return cache[device];
  int n = 0;
  cudaError_t err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
  TORCH_CHECK(err == cudaSuccess, "cudaDeviceGetAttribute failed: ", cudaGetErrorString(err));
  if (device >= 0 && device < 64) cache[device] = n;
  return n;
}

// x: (M, K); u: (N_max, R_max); v: (R_max, K). Reads u[:n, :rank] and v[:rank] in place.
at::Tensor lowrank_linear_cuda_op(const at::Tensor& x, const at::Tensor& u, const at::Tensor& v,
                                  int64_t rank, int64_t out_features,
                                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "lowrank_linear (cuda): x must be 2-D (M, K), got ", x.sizes());
  TORCH_CHECK(u.dim() == 2, "lowrank_linear (cuda): u must be 2-D (N_max, R_max), got ", u.sizes());
  TORCH_CHECK(v.dim() == 2, "lowrank_linear (cuda): v must be 2-D (R_max, K), got ", v.sizes());
  TORCH_CHECK(x.is_cuda() && u.is_cuda() && v.is_cuda(),
              "lowrank_linear (cuda): x, u and v must be CUDA tensors");
  TORCH_CHECK(u.device() == x.device() && v.device() == x.device(),
              "lowrank_linear (cuda): x, u and v must be on the same device");
  TORCH_CHECK(u.scalar_type() == x.scalar_type() && v.scalar_type() == x.scalar_type(),
              "lowrank_linear (cuda): x, u and v must share a dtype");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(v.size(1) == K, "lowrank_linear (cuda): v has ", v.size(1),
              " columns, expected K=", K);
  TORCH_CHECK(rank >= 1 && rank <= u.size(1) && rank <= v.size(0),
              "lowrank_linear (cuda): rank must be in 1..", std::min(u.size(1), v.size(0)),
              ", got ", rank);
  TORCH_CHECK(rank <= kMaxFusedRank,
              "lowrank_linear (cuda): the fused kernel takes rank <= ", kMaxFusedRank, ", got ",
              rank);
  TORCH_CHECK(out_features >= 1 && out_features <= u.size(0),
              "lowrank_linear (cuda): out_features must be in 1..", u.size(0), ", got ",
              out_features);
  const ScalarKind kind = scalar_kind(x, "lowrank_linear", "x");
  const void* bias_ptr = nullptr;
  int64_t bias_stride = 0;
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) >= out_features,
                "lowrank_linear (cuda): bias must be 1-D with at least ", out_features,
                " elements, got ", b.sizes());
    TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(),
                "lowrank_linear (cuda): bias must match x's device and dtype");
    bias_ptr = b.data_ptr();
    bias_stride = b.stride(0);
  }

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({M, out_features}, x.options());
  if (M == 0) return y;
  LowRankArgs args{};
  args.x = x.data_ptr();
  args.x_stride_m = x.stride(0);
  args.x_stride_k = x.stride(1);
  args.v = v.data_ptr();
  args.v_stride_r = v.stride(0);
  args.v_stride_k = v.stride(1);
  args.u = u.data_ptr();
  args.u_stride_n = u.stride(0);
  args.u_stride_r = u.stride(1);
  args.bias = bias_ptr;
  args.bias_stride = bias_stride;
  args.y = y.data_ptr();
  args.y_stride_m = y.stride(0);
  args.y_stride_n = y.stride(1);
  args.M = M;
  args.K = K;
  args.N = out_features;
  args.R = rank;
  args.dtype = kind;
  const int device = x.get_device();
  const cudaError_t err = supernet_kernels::lowrank_linear_cuda(
      args, num_sms(device), c10::cuda::getCurrentCUDAStream(device).stream());
  TORCH_CHECK(err == cudaSuccess,
              "lowrank_linear (cuda): kernel launch failed: ", cudaGetErrorString(err));
  return y;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(supernet_kernels, m) {
  // No tensor arguments: a catch-all kernel, so they run whatever the dispatch keys.
  m.def("_native_cuda_arch_list() -> int[]", TORCH_FN(cuda_arch_list));
  m.def("_native_has_cuda() -> bool", TORCH_FN(has_cuda_kernels));
  m.def("_native_max_fused_rank() -> int", TORCH_FN(max_fused_rank));
#ifdef SK_WITH_CUDA
  m.def(
      "_lowrank_linear_cuda(Tensor x, Tensor u, Tensor v, int rank, int out_features, "
      "Tensor? bias) -> Tensor");
  m.impl("_lowrank_linear_cuda", c10::DispatchKey::CUDA, TORCH_FN(lowrank_linear_cuda_op));
#endif
}

}  // namespace supernet_kernels

// `import supernet_kernels._C` loads this library, which runs the registrations above. The
// module itself is empty: everything is reached through torch.ops.supernet_kernels.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
