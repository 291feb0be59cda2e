// Index arithmetic of the quantized GEMV (csrc/quant/quant_cuda.cu), shared with its host tests
// (tests/cpp/test_quant_plan.cpp), the census's plan probe and, in Python, with
// supernet_kernels/quant/cuda_layout.py, which writes the weight layout described here.
// Pure C++: no CUDA headers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../common/host_device.h"

namespace supernet_kernels {

// ---------------------------------------------------------------------------------------------
// sk-pack-v1 (the interchange format, supernet_kernels/quant/packing.py)
//   W (N, K), codes q[n, k] in [0, 2^bits - 1], bits in {2, 3, 4, 8}; PER_WORD = 32 / bits
//   codes per int32 word, q[n, k] = (packed[n, k / PER_WORD] >> ((k % PER_WORD) * bits)) & mask;
//   scales / zeros float32 (N, K / G); w[n, k] = (q[n, k] - zeros[n, k / G]) * scales[n, k / G].
// ---------------------------------------------------------------------------------------------
SK_HD constexpr int quant_per_word(int bits) { return 32 / bits; }
SK_HD constexpr bool quant_bits_supported(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}
SK_HD constexpr int64_t quant_words_per_row(int64_t K, int bits) {
  return ceil_div(K, quant_per_word(bits));
}
SK_HD constexpr uint32_t quant_unpack(uint32_t word, int i, int bits) {
  return (word >> (i * bits)) & ((1u << bits) - 1u);
}

// ---------------------------------------------------------------------------------------------
// The GEMV's weight layout ("sk-cuda-gemv-v1"), made once per weight from sk-pack-v1.
//
// The kernel computes y^T = W x^T with mma.sync m16n8k16: the weight is the A operand (16 rows
// n by 16 columns k per step), x the B operand (16 k by 8 rows m). A lane (g = lane / 4,
// t = lane % 4) holds A's rows g and g + 8 at four columns; the layout stores, for each lane,
// exactly those codes, so that one 16-byte load gives a lane its A fragments for several steps
// in the order the dequantization emits them.
//
// * Layout bits LB: 2, 4 or 8 (3-bit codes are stored as 4-bit: the kernel then reads 4 bits
//   a code, the price of not writing a 3-bit dequantizer).
// * A chunk is 16 rows x KC columns, KC = 16 * SPC, SPC = 16 / LB steps (2-bit: 128 columns in
//   8 steps, 4-bit: 64 in 4, 8-bit: 32 in 2): 32 lanes x 16 bytes = 512 bytes, lane-major.
//   Row tile rt (rows 16 rt .. 16 rt + 15), chunk c, lane l: the int32 words
//   codes[rt][(c * 32 + l) * 4 + 0 .. 3]. Rows past N and columns past K hold code 0.
// * Span P = min(group size, KC) (per-channel: KC): a step never crosses a span, and every
//   span lies in one group; a group larger than a chunk spans a power of two of them.
//   Step s of a chunk covers span j = s / (P / 16); within a span, lane
//   t's columns are contiguous, P / 4 of them from t * P / 4, so a lane reads its x with 16-byte
//   loads: logical column k = c * KC + j * P + t * (P / 4) + (s % (P / 16)) * 4 + e, e = 0..3.
// * Code (row g + 8 h, e) of step s goes to A register r = 2 * (e / 2) + h, half e % 2 (low
//   half first), pair index p = 4 s + r; pair p lives in word p / PPW (PPW = 16 / LB pairs a
//   word) at bit (p % PPW) * LB of the low half (half 0) or of the high half (half 1).
//   The dequantizer turns position i of both halves (rows of one parity: one zero point) into
//   one packed pair q - z with one LOP3 (the code ORed into the mantissa of a magic 1024
//   (fp16) or 128 (bf16)) and one HFMA2 (scale 2^-offset, subtract magic 2^-offset + z).
// * Group parameters: float32 params[rt][group][g][4] = {s, -z} of row g, then of row g + 8
//   (16 bytes a lane); the kernel applies y += s * sum(x (q - z)) once per span, in fp32 (the
//   scale keeps its float32 value; the tensor cores multiply exact small integers, z an
//   integer in [0, 2^bits - 1]). Groups past K (padding) hold zeros.
// ---------------------------------------------------------------------------------------------
namespace gemv {
constexpr int kWarps = 8;  // a CTA: one 16-row tile, K split over its 8 warps
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsPerTile = 16;
constexpr int kMTile = 16;  // rows of x per CTA (two 8-column halves of the mma's B)
constexpr int64_t kMaxGridY = 65535;
constexpr int kKindF32 = 0, kKindF16 = 1, kKindBF16 = 2;  // ScalarKind values
}  // namespace gemv

SK_HD constexpr bool is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }
SK_HD constexpr int gemv_layout_bits(int bits) { return bits == 3 ? 4 : bits; }
SK_HD constexpr int gemv_steps_per_chunk(int lb) { return 16 / lb; }
SK_HD constexpr int gemv_chunk_k(int lb) { return 16 * gemv_steps_per_chunk(lb); }
SK_HD constexpr int gemv_pairs_per_word(int lb) { return 16 / lb; }

// The span for group size G (G == K: per-channel), or 0 where the layout has none: a group
// smaller than a chunk must divide it and be a multiple of 32 (16-byte x reads); a larger one
// must be a whole number of chunks.
SK_HD constexpr int gemv_span(int bits, int64_t K, int64_t G) {
  const int kc = gemv_chunk_k(gemv_layout_bits(bits));
  if (!quant_bits_supported(bits) || K <= 0 || G <= 0 || K % G != 0) return 0;
  if (G == K) return kc;  // per-channel: one group over every chunk
  if (G >= kc) return G % kc == 0 && is_pow2(G / kc) ? kc : 0;
  return (kc % G == 0 && G % 32 == 0) ? static_cast<int>(G) : 0;
}
SK_HD constexpr int64_t gemv_k_pad(int bits, int64_t K) {
  const int kc = gemv_chunk_k(gemv_layout_bits(bits));
  return ceil_div(K, kc) * kc;
}
// Groups stored per row tile.
SK_HD constexpr int64_t gemv_groups(int bits, int64_t K, int64_t G) {
  const int span = gemv_span(bits, K, G);
  const int kc = gemv_chunk_k(gemv_layout_bits(bits));
  if (span == kc) return G == K ? 1 : K / G;
  return gemv_k_pad(bits, K) / span;
}
// The group of chunk c is c >> shift where a group spans whole chunks (a power of two of
// them; per-channel: 30, every chunk in group 0); 0 where a chunk holds several groups.
SK_HD constexpr int gemv_group_shift(int bits, int64_t K, int64_t G) {
  const int span = gemv_span(bits, K, G);
  const int kc = gemv_chunk_k(gemv_layout_bits(bits));
  if (span != kc || G == K) return span != kc ? 0 : 30;
  int sh = 0;
  while ((int64_t{kc} << sh) < G) ++sh;
  return sh;
}

// Logical column of (chunk c, step s, lane t, element e) in a layout of span P.
SK_HD constexpr int64_t gemv_column(int lb, int span, int64_t c, int s, int t, int e) {
  const int sps = span / 16;  // steps per span
  return c * gemv_chunk_k(lb) + (s / sps) * span + t * (span / 4) + (s % sps) * 4 + e;
}

// Where code (row rr of its tile, column k) lives: chunk, lane, word (0..3) and bit offset.
struct GemvSlot {
  int64_t chunk;
  int lane, word, bit;
};
SK_HD GemvSlot gemv_slot(int lb, int span, int rr, int64_t k) {
  const int kc = gemv_chunk_k(lb);
  const int sps = span / 16;
  const int64_t c = k / kc;
  const int kk = static_cast<int>(k - c * kc);
  const int j = kk / span, ks = kk % span;
  const int t = ks / (span / 4), rest = ks % (span / 4);
  const int s = j * sps + rest / 4, e = rest % 4;
  const int g = rr % 8, h = rr / 8;
  const int r = 2 * (e / 2) + h;
  const int p = 4 * s + r;
  const int ppw = gemv_pairs_per_word(lb);
  return GemvSlot{c, 4 * g + t, p / ppw, (e % 2) * 16 + (p % ppw) * lb};
}

// Dequantization of pair position i (0 <= i < PPW) of a word: shift the word right by
// `shift`, mask the code at bit `offset` of each half, OR the magic in; the code then sits
// `offset` bits up in the mantissa (2^offset * q exact while offset + LB fits the mantissa:
// 10 bits for fp16, 7 for bf16; 8-bit codes in bf16 take the fp32 route instead).
SK_HD constexpr int gemv_pair_shift(int kind, int lb, int i) {
  return kind == gemv::kKindF16 ? (i * lb) / 8 * 8 : (i * lb) / 4 * 4;
}
SK_HD constexpr int gemv_pair_offset(int kind, int lb, int i) {
  return i * lb - gemv_pair_shift(kind, lb, i);
}
SK_HD constexpr bool gemv_magic_route(int kind, int lb) {
  return kind == gemv::kKindF16 || lb < 8;  // else: bf16 8-bit codes via fp32
}
// The dequantizer's constants (fp16 / bf16 bit patterns, both halves of a 32-bit pair): the
// magic 1024 (fp16) or 128 (bf16) ORed with the codes, the scale 2^-e and -magic * 2^-e.
SK_HD constexpr uint32_t gemv_magic_or(int kind) {
  return kind == gemv::kKindF16 ? 0x64006400u : 0x43004300u;
}
SK_HD constexpr uint32_t gemv_pow2_neg(int kind, int e) {
  const uint32_t h = kind == gemv::kKindF16 ? uint32_t(15 - e) << 10 : uint32_t(127 - e) << 7;
  return h | (h << 16);
}
SK_HD constexpr uint32_t gemv_neg_magic(int kind, int e) {
  const uint32_t h = kind == gemv::kKindF16 ? 0x8000u | (uint32_t(15 + 10 - e) << 10)
                                            : 0x8000u | (uint32_t(127 + 7 - e) << 7);
  return h | (h << 16);
}

// x elements (of the activation type) a lane reads per chunk and 16-byte loads for them.
SK_HD constexpr int gemv_x_elems_per_chunk(int lb) { return gemv_chunk_k(lb) / 4; }
SK_HD constexpr int gemv_x_loads_per_chunk(int lb, int elem_bytes) {
  return gemv_x_elems_per_chunk(lb) * elem_bytes / 16;
}
// Chunks in flight per lane (software pipeline depth), from the registers one stage holds.
SK_HD constexpr int gemv_stage_regs(int lb, int span, int elem_bytes, int mh) {
  return 4 + 4 * (gemv_chunk_k(lb) / span) + mh * gemv_x_loads_per_chunk(lb, elem_bytes) * 4;
}
SK_HD constexpr int gemv_stages(int lb, int span, int elem_bytes, int mh) {
  // fp32 x: the three-way split and per-step sums take the registers of deeper pipelines
  return elem_bytes == 4                                   ? 2
         : gemv_stage_regs(lb, span, elem_bytes, mh) <= 24 ? 4
         : gemv_stage_regs(lb, span, elem_bytes, mh) <= 40 ? 3
                                                           : 2;
}

// Chunks [begin, end) of warp w: the K range split evenly over the CTA's warps.
SK_HD void gemv_warp_chunks(int64_t n_chunks, int w, int64_t* begin, int64_t* end) {
  *begin = n_chunks * w / gemv::kWarps;
  *end = n_chunks * (w + 1) / gemv::kWarps;
}

struct GemvPlan {
  int lb, span, mh, stages;
  int64_t k_pad, n_chunks, groups;
  int group_shift;
  int64_t n_tiles;   // row tiles: grid.x
  int64_t m_chunks;  // 16-row chunks of x (grid.y grid-strides over them)
  int grid_y;
  bool x_copy;  // K is not a whole number of chunks: x is read from a zero-padded copy
  bool ok;      // the layout exists for this bits / K / G and 32-bit offsets suffice
};

inline GemvPlan make_gemv_plan(int64_t M, int64_t N, int64_t K, int bits, int64_t G,
                               int elem_bytes = 2) {
  GemvPlan p{};
  p.lb = gemv_layout_bits(bits);
  p.span = gemv_span(bits, K, G);
  p.ok = p.span != 0 && M >= 0 && N >= 0;
  if (!p.ok) return p;
  p.mh = M <= 8 ? 1 : 2;
  p.stages = gemv_stages(p.lb, p.span, elem_bytes, p.mh);
  p.k_pad = gemv_k_pad(bits, K);
  p.n_chunks = p.k_pad / gemv_chunk_k(p.lb);
  p.groups = gemv_groups(bits, K, G);
  p.group_shift = gemv_group_shift(bits, K, G);
  p.n_tiles = ceil_div(N, gemv::kRowsPerTile);
  p.m_chunks = ceil_div(M, gemv::kMTile);
  p.grid_y = static_cast<int>(p.m_chunks < gemv::kMaxGridY ? p.m_chunks : gemv::kMaxGridY);
  p.x_copy = p.k_pad != K;
  // 32-bit offsets: 16-byte code loads and float4 params per tile, x elements per row
  p.ok = p.n_tiles * p.n_chunks * 32 < (int64_t{1} << 31) &&
         p.n_tiles * p.groups * 8 < (int64_t{1} << 31) && p.n_tiles < (int64_t{1} << 31);
  return p;
}

}  // namespace supernet_kernels
