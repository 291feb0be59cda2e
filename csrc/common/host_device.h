// Helpers compiled both by nvcc (for the kernels) and by the host compiler (plan headers, their
// C++ tests, the census's plan probe). Pure C++: no CUDA headers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SK_HD __host__ __device__ __forceinline__
#else
#define SK_HD inline
#endif

namespace supernet_kernels {

SK_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace supernet_kernels
