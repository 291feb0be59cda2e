// Index arithmetic shared by the quantized kernels (csrc/quant/quant_cuda.cu) and their CPU-only
// host emulation (tests/cpp/test_quant_plan.cpp):
//   * the sub-byte packing format (codes at bit offsets inside int32 words),
//   * group indexing of scales / zeros,
//   * the weight-only GEMV work partition and its shared-memory x layout,
//   * the int8 GEMM tiling (shared-memory panel layout for wmma),
//   * the per-token int8 activation quantizer (round half to even).
// Pure C++: no CUDA headers. Helpers that the kernels also call on the device are SK_PLAN_HD.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define SK_PLAN_HD __host__ __device__ __forceinline__
#else
#define SK_PLAN_HD inline
#endif

namespace supernet_kernels {

// ---------------------------------------------------------------------------------------------
// Packing format (same as supernet_kernels/quant/packing.py)
//   W (N, K), codes q[n, k] in [0, 2^bits - 1], bits in {2, 3, 4, 8}.
//   PER_WORD = 32 / bits (floor): 16, 10, 8, 4. packed int32 (N, ceil(K / PER_WORD)), row-major;
//   q[n, k] = (packed[n, k / PER_WORD] >> ((k % PER_WORD) * bits)) & (2^bits - 1).
//   Unused high bits (3-bit: 30..31) and tail codes (k >= K in the last word) are 0.
//   scales / zeros float32 (N, K / G); w[n, k] = (q[n, k] - zeros[n, k / G]) * scales[n, k / G].
// ---------------------------------------------------------------------------------------------
SK_PLAN_HD constexpr int quant_per_word(int bits) { return 32 / bits; }
SK_PLAN_HD constexpr uint32_t quant_code_mask(int bits) { return (1u << bits) - 1u; }
SK_PLAN_HD constexpr bool quant_bits_supported(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}
SK_PLAN_HD int64_t quant_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
SK_PLAN_HD int64_t quant_words_per_row(int64_t K, int bits) {
  return quant_ceil_div(K, quant_per_word(bits));
}
// Code i (0 <= i < PER_WORD) of a packed word.
SK_PLAN_HD uint32_t quant_unpack(uint32_t word, int i, int bits) {
  return (word >> (i * bits)) & quant_code_mask(bits);
}

// Group index of column k. g_shift >= 0 when G is a power of two (G = 1 << g_shift);
// num_groups == 1 covers per-channel (G = K, any K) without a division.
SK_PLAN_HD int64_t quant_group_of(int64_t k, int64_t G, int g_shift, int64_t num_groups) {
  if (num_groups == 1) return 0;
  if (g_shift >= 0) return k >> g_shift;
  return k / G;
}
// log2(G) if G is a power of two, else -1.
inline int quant_group_shift(int64_t G) {
  if (G <= 0 || (G & (G - 1)) != 0) return -1;
  int s = 0;
  while ((int64_t{1} << s) < G) ++s;
  return s;
}

// Group-size rule of the GEMV kernel: the group of a whole word is that of its first code,
// except that a 3-bit word (10 codes) may straddle one group boundary (G >= PER_WORD is then
// required, so it never straddles two). For 2/4/8 bits G must be a multiple of PER_WORD (G in
// {32, 64, 128} always is) or the only group (G == K).
SK_PLAN_HD bool quant_group_size_ok(int64_t K, int64_t G, int bits) {
  if (G <= 0 || K <= 0 || K % G != 0) return false;
  if (G == K) return true;
  const int pw = quant_per_word(bits);
  if (bits == 3) return G >= pw;
  return G % pw == 0;
}

// ---------------------------------------------------------------------------------------------
// Weight-only GEMV / small-M kernel (A16): y (M, N) = x (M, K) @ W^T + bias.
//
// Partition: a block of kGemvThreads = 128 threads (4 warps) owns kGemvRowsPerBlock = 16 rows n
// of W (grid.x = ceil(N / 16)) and one MT-row chunk of x (grid.y, grid-stride over the chunks).
// Each warp owns 4 rows; each row is read by a group of kGemvLanesPerRow = 8 lanes, lane j of
// the group loading the 16-byte chunk of words [w, w + 4) with w = stage * SW + it * 32 + 4 * j:
// the 8 lanes of a row read 128 contiguous bytes (one full cache line) per iteration.
// K is consumed in stages of SW = gemv_stage_words(MT, bits) words (SW * PER_WORD codes);
// for each stage the block stages x[m0 : m0 + MT, k-range] into shared memory as fp32 (zero
// outside [0, M) x [0, K)), then every row group walks its SW words (SW / 32 iterations).
// Partial sums (MT per lane) are reduced over the 8 lanes with __shfl_xor (4, 2, 1).
// ---------------------------------------------------------------------------------------------
namespace gemv_tiling {
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kLanesPerRow = 8;
constexpr int kRowsPerWarp = 32 / kLanesPerRow;          // 4
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;     // 16
constexpr int kVecWords = 4;                             // 16-byte loads
constexpr int kWordsPerIter = kLanesPerRow * kVecWords;  // 32 words per row group per iteration
constexpr int kSmemFloatBudget = 8192;  // MT * SW * PER_WORD <= 8192 floats (+ padding, < 48 KB)
constexpr int kMaxStageWords = 1024;
constexpr int64_t kMaxGridY = 65535;
}  // namespace gemv_tiling

// Stage size in words: the largest power of two <= 8192 / (MT * PER_WORD), clamped to
// [32, 1024]. MT = 16, 2-bit: 32 words (512 codes); MT = 1, 4-bit: 1024 words (8192 codes).
SK_PLAN_HD constexpr int gemv_stage_words(int mt, int bits) {
  int sw = gemv_tiling::kMaxStageWords;
  while (sw > gemv_tiling::kWordsPerIter &&
         static_cast<int64_t>(sw) * mt * quant_per_word(bits) > gemv_tiling::kSmemFloatBudget) {
    sw /= 2;
  }
  return sw;
}
// Shared-memory x layout of one stage, per x row mi: chunk-major (a chunk = the 4 words one lane
// loads), chunk pitch 4 * PER_WORD + 4 floats: lanes j = 0..7 of a row group read chunks j, so
// their addresses are 16 * (PER_WORD + 1) * j bytes apart -> distinct 16-byte bank groups
// (conflict-free 128-bit reads), and chunk starts stay 16-byte aligned.
SK_PLAN_HD constexpr int gemv_chunk_pitch(int bits) { return 4 * quant_per_word(bits) + 4; }
SK_PLAN_HD constexpr int gemv_row_pitch(int mt, int bits) {
  return (gemv_stage_words(mt, bits) / gemv_tiling::kVecWords) * gemv_chunk_pitch(bits);
}
SK_PLAN_HD constexpr int gemv_smem_floats(int mt, int bits) {
  return mt * gemv_row_pitch(mt, bits);
}
// Float index of x[m0 + mi, stage_k0 + kk] (kk = code index within the stage).
SK_PLAN_HD int gemv_xs_index(int mt, int bits, int mi, int kk) {
  const int pw = quant_per_word(bits);
  const int wl = kk / pw;  // word within the stage
  const int i = kk - wl * pw;
  return mi * gemv_row_pitch(mt, bits) + (wl / 4) * gemv_chunk_pitch(bits) + (wl % 4) * pw + i;
}
// First word (absolute, within the row) loaded by lane j of a row group at iteration `it` of
// stage `stage`.
SK_PLAN_HD int64_t gemv_lane_word(int mt, int bits, int64_t stage, int it, int j) {
  return stage * gemv_stage_words(mt, bits) +
         static_cast<int64_t>(it) * gemv_tiling::kWordsPerIter + j * gemv_tiling::kVecWords;
}

// M tile chosen by the launcher: the smallest instantiated MT >= M (M > 16 -> 16, looping).
SK_PLAN_HD int gemv_pick_mt(int64_t M) {
  if (M <= 1) return 1;
  if (M <= 4) return 4;
  if (M <= 8) return 8;
  return 16;
}

struct GemvPlan {
  int mt;
  int stage_words;
  int64_t words_per_row;
  int64_t num_stages;
  int64_t m_chunks;  // ceil(M / mt); blocks in y grid-stride over them
  int64_t grid_x;    // ceil(N / 16)
  int grid_y;        // min(m_chunks, 65535)
  size_t smem_bytes;
};

inline GemvPlan make_gemv_plan(int64_t M, int64_t N, int64_t K, int bits) {
  GemvPlan p;
  p.mt = gemv_pick_mt(M);
  p.stage_words = gemv_stage_words(p.mt, bits);
  p.words_per_row = quant_words_per_row(K, bits);
  p.num_stages = quant_ceil_div(p.words_per_row, p.stage_words);
  p.m_chunks = M > 0 ? quant_ceil_div(M, p.mt) : 0;
  p.grid_x = N > 0 ? quant_ceil_div(N, gemv_tiling::kRowsPerBlock) : 0;
  p.grid_y =
      static_cast<int>(p.m_chunks < gemv_tiling::kMaxGridY ? p.m_chunks : gemv_tiling::kMaxGridY);
  p.smem_bytes = static_cast<size_t>(gemv_smem_floats(p.mt, bits)) * sizeof(float);
  return p;
}

// ---------------------------------------------------------------------------------------------
// W8A8: per-token activation quantizer and int8 tensor-core GEMM.
// ---------------------------------------------------------------------------------------------
// x_scale = amax / 127; an all-zero row (amax == 0) gets scale 1 and all-zero codes.
SK_PLAN_HD float quant_int8_row_scale(float amax) { return amax > 0.f ? amax / 127.f : 1.f; }
// clamp(round_half_even(x / scale), -127, 127). rintf rounds half to even in the default
// rounding mode (host and device); x / scale is an IEEE division (no fast-math).
SK_PLAN_HD int quant_int8_code(float x, float scale) {
  float r = rintf(x / scale);
  r = r < -127.f ? -127.f : (r > 127.f ? 127.f : r);
  return static_cast<int>(r);
}

// int8 GEMM tiling: block tile 64 (M) x 64 (N), K in chunks of 64; 4 warps in a 2 x 2 grid,
// each warp a 32 x 32 sub-tile = 2 x 2 wmma 16x16x16 (s8 x s8 -> s32) accumulators.
// Shared memory holds A (x codes, rows m) and B (w codes, rows n) chunks in a "panel" layout:
// [k / 16][row][k % 16] bytes, so every 16x16 fragment starts at a 256-byte multiple (wmma needs
// 32-byte aligned pointers; a plain row-major tile would put the k = 16 fragment at a 16-byte
// offset) with ldm = 16. Loads outside [0, M) x [0, K) / [0, N) x [0, K) are zero-filled, so
// tails in M, N and K contribute exact zeros.
namespace int8_gemm_tiling {
constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kBlockK = 64;
constexpr int kThreads = 128;
constexpr int kWarps = 4;
constexpr int kWarpM = 32;
constexpr int kWarpN = 32;
constexpr int kFrag = 16;
constexpr int kPanels = kBlockK / kFrag;  // 4
constexpr int kChunk = 16;                // bytes per global -> smem copy
constexpr int64_t kMaxGridY = 65535;
}  // namespace int8_gemm_tiling

// Byte offset of element (row, kk) (0 <= kk < 64) of a 64-row tile in the panel layout.
SK_PLAN_HD int int8_panel_index(int rows, int row, int kk) {
  return (kk / int8_gemm_tiling::kFrag) * rows * int8_gemm_tiling::kFrag +
         row * int8_gemm_tiling::kFrag + kk % int8_gemm_tiling::kFrag;
}
// Copy slot s (0 <= s < 64 * 64 / 16 = 256) of a tile load: row s / 4, 16-byte chunk s % 4.
SK_PLAN_HD void int8_copy_slot(int s, int* row, int* kc) {
  *row = s / (int8_gemm_tiling::kBlockK / int8_gemm_tiling::kChunk);
  *kc = s % (int8_gemm_tiling::kBlockK / int8_gemm_tiling::kChunk);
}

}  // namespace supernet_kernels
