// Launch plans of the extension's CUDA kernels, from the project's own plan headers (pure C++),
// so the census's occupancy, waves and trip counts use exactly the grids and shared memory the
// launchers compute. Reads one call per line on stdin:
//   quant_linear M K N BITS GROUP
// and prints one JSON object per kernel launch of that call (in launch order). Built by
// benchmarks/census.py with the host compiler; mirrors quant_gemv_cuda (csrc/quant/quant_cuda.cu)
// and its binding (csrc/quant_bindings.cpp) for fp16 activations.
#include <cstdio>
#include <iostream>
#include <string>

#include "quant/quant_plan.h"

using namespace supernet_kernels;

namespace {

// reads_weight: the kernel streams the call's (quantized) weight. trips: sequential steps of
// one CTA (its warps' chunk loop); block_k: the columns a CTA covers per main-loop iteration
// (each warp `stages` chunks), so that block_n * block_k / threads are the codes a thread
// dequantizes per iteration.
void emit(const char* kernel, long grid, int threads, long smem, long block_m, long block_n,
          long block_k, long m_tiles, int reads_weight = 1, long trips = 0) {
  std::printf(
      "{\"kernel\":\"%s\",\"grid\":%ld,\"threads\":%d,\"dynamic_smem\":%ld,\"block_m\":%ld,"
      "\"block_n\":%ld,\"block_k\":%ld,\"m_tiles\":%ld,\"reads_weight\":%d,\"trips\":%ld}\n",
      kernel, grid, threads, smem, block_m, block_n, block_k, m_tiles, reads_weight, trips);
}

void quant(long M, long K, long N, int bits, long G) {
  const GemvPlan p = make_gemv_plan(M, N, K, bits, G, 2);
  if (!p.ok) {
    std::printf("{\"error\":\"no CUDA layout for bits %d K %ld G %ld\"}\n", bits, K, G);
    return;
  }
  // x read from a zero-padded copy when K is not a whole number of chunks
  if (p.x_copy) emit("torch:zeros+copy", 0, 0, 0, 0, 0, 0, 0, 0);
  char name[64];
  std::snprintf(name, sizeof name, "quant_gemv_kernel<%d, %d, %d, %d>", gemv::kKindF16, p.lb, p.mh,
                p.span);
  const long kc = gemv_chunk_k(p.lb);
  const long chunks_per_warp = ceil_div(p.n_chunks, gemv::kWarps);
  emit(name, p.n_tiles * p.grid_y, gemv::kThreads, 0, 8L * p.mh, gemv::kRowsPerTile,
       gemv::kWarps * p.stages * kc, p.m_chunks, 1,
       ceil_div(chunks_per_warp, p.stages) * ceil_div(p.m_chunks, p.grid_y));
}

}  // namespace

int main() {
  std::string op;
  long M, K, N, bits, G;
  while (std::cin >> op >> M >> K >> N) {
    if (op == "quant_linear" && std::cin >> bits >> G) {
      quant(M, K, N, static_cast<int>(bits), G);
    } else {
      std::printf("{\"error\":\"unknown call %s\"}\n", op.c_str());
    }
    std::printf("{\"end\":true}\n");
  }
  return 0;
}
