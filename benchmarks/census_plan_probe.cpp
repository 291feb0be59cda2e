// Launch plans of the extension's CUDA kernels, from the project's own plan headers (pure C++),
// so the census's occupancy, waves and trip counts use exactly the grids and shared memory the
// launchers compute. Reads one call per line on stdin:
//   quant_linear M K N BITS | int8_linear M K N
// and prints one JSON object per kernel launch of that call (in launch order). Built by
// benchmarks/census.py with the host compiler; mirrors the launchers in csrc/*/*_cuda.cu.
#include <cstdio>
#include <iostream>
#include <string>

#include "quant/quant_plan.h"

using namespace supernet_kernels;

namespace {

constexpr int kNumSms = 132;
constexpr int kQuantizeThreads = 256;  // kQuantThreads in csrc/quant/quant_cuda.cu

// reads_weight: the kernel streams the call's (quantized) weight. trips: sequential
// reduction steps of one CTA (K chunks); 0 where the census estimates them from the code.
void emit(const char* kernel, long grid, int threads, long smem, long block_m, long block_n,
          long m_tiles, int reads_weight = 1, long trips = 0) {
  std::printf(
      "{\"kernel\":\"%s\",\"grid\":%ld,\"threads\":%d,\"dynamic_smem\":%ld,\"block_m\":%ld,"
      "\"block_n\":%ld,\"m_tiles\":%ld,\"reads_weight\":%d,\"trips\":%ld}\n",
      kernel, grid, threads, smem, block_m, block_n, m_tiles, reads_weight, trips);
}

void quant(long M, long K, long N, int bits) {
  const GemvPlan p = make_gemv_plan(M, N, K, bits);
  char name[64];
  std::snprintf(name, sizeof name, "quant_gemv_kernel<%d, %d>", bits, p.mt);
  emit(name, p.grid_x * p.grid_y, gemv_tiling::kThreads, static_cast<long>(p.smem_bytes), p.mt,
       gemv_tiling::kRowsPerBlock, p.m_chunks);
}

void int8(long M, long K, long N) {
  using namespace int8_gemm_tiling;
  emit("quantize_rows_int8_kernel", M, kQuantizeThreads, 0, 1, 0, M, 0);
  const long m_tiles = quant_ceil_div(M, kBlockM);
  const long gy = m_tiles < kMaxGridY ? m_tiles : kMaxGridY;
  emit("int8_gemm_kernel", quant_ceil_div(N, kBlockN) * gy, kThreads, 0, kBlockM, kBlockN,
       m_tiles, 1, quant_ceil_div(K, kBlockK) * quant_ceil_div(m_tiles, gy));
}

}  // namespace

int main() {
  std::string op;
  long M, K, N, a;
  while (std::cin >> op >> M >> K >> N) {
    if (op == "quant_linear" && std::cin >> a) {
      quant(M, K, N, static_cast<int>(a));
    } else if (op == "int8_linear") {
      int8(M, K, N);
    } else {
      std::printf("{\"error\":\"unknown call %s\"}\n", op.c_str());
    }
    std::printf("{\"end\":true}\n");
  }
  return 0;
}
