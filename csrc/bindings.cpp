// Torch binding of the native build: what it reports about itself, and the Python module stub.
//
// The CUDA sources take raw pointers and sizes and never include torch headers (each torch
// include costs ~1.5 min of compile on 2 cores); all tensor handling lives here.
// The public ops (`supernet_kernels::lowrank_linear`, ...) are defined in Python with
// torch.library; this file only adds what the native build reports about itself (the
// quantized kernels' ops are in quant_bindings.cpp). The low-rank GEMM has no CUDA C++ kernel:
// the one it had lost to torch's two cuBLAS GEMMs at all 18 shapes measured on the H100
// (3-70x, benchmarks/results/h100_run1/lowrank.jsonl) and the Triton kernels replaced it.
#include <Python.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

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

}  // namespace

TORCH_LIBRARY_FRAGMENT(supernet_kernels, m) {
  // No tensor arguments: a catch-all kernel, so they run whatever the dispatch keys.
  m.def("_native_cuda_arch_list() -> int[]", TORCH_FN(cuda_arch_list));
  m.def("_native_has_cuda() -> bool", TORCH_FN(has_cuda_kernels));
}

}  // namespace supernet_kernels

// `import supernet_kernels._C` loads this library, which runs the registrations above. The
// module itself is empty: everything is reached through torch.ops.supernet_kernels.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
