// CPU-only test of the quantized kernels' index arithmetic (csrc/quant/quant_plan.h) through a
// host emulation that runs the same loops as csrc/quant/quant_cuda.cu:
//   * packing format: an independent packer vs quant_unpack for 2/3/4/8 bits (3-bit tails),
//   * quant_gemv_kernel: the block / row-group / lane partition, K stages, x staging layout,
//     16-byte chunk loads (vector and scalar paths), group lookup incl. 3-bit words straddling a
//     group boundary, tail masking, the 8-lane xor reduction and the M-chunk grid-stride loop,
//   * int8_gemm_kernel: tile loads into the panel layout with zero-filled tails, wmma fragment
//     addressing (row-major A / col-major B, ldm 16), int32 accumulation and the epilogue,
//   * the per-token int8 quantizer (round half to even, clamp, all-zero rows).
// Keep in sync with the kernels: any change to their loads, lane mapping or bounds logic must be
// mirrored here.
//
// Traps: shared memory is pre-filled with NaN (GEMV) or a 0x5A byte pattern (GEMM) so reading
// smem that the kernel never wrote is detected; every global read goes through a bounds-checked
// accessor; y is pre-filled with a sentinel and every element must be written exactly once.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <vector>

#include "quant/quant_plan.h"

using namespace supernet_kernels;

static int g_failures = 0;
#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                 \
      if (g_failures > 50) std::exit(1);                                            \
    }                                                                               \
  } while (0)

static std::mt19937 g_rng(12345);

// Bounds-checked global buffer.
template <typename T>
struct Buf {
  std::vector<T> v;
  T at(int64_t i) const {
    if (i < 0 || i >= static_cast<int64_t>(v.size())) {
      std::fprintf(stderr, "out-of-bounds read %lld of %zu\n", static_cast<long long>(i), v.size());
      ++g_failures;
      return T{};
    }
    return v[static_cast<size_t>(i)];
  }
};

// ------------------------------------------------------------------------------------------
// Packing (independent implementation of the documented format)
// ------------------------------------------------------------------------------------------
static std::vector<uint32_t> pack(const std::vector<uint32_t>& q, int64_t N, int64_t K, int bits) {
  const int64_t pw = 32 / bits;
  const int64_t W = (K + pw - 1) / pw;
  std::vector<uint32_t> out(static_cast<size_t>(N * W), 0u);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) out[n * W + k / pw] |= q[n * K + k] << ((k % pw) * bits);
  return out;
}

static void test_packing() {
  for (int bits : {2, 3, 4, 8}) {
    for (int64_t K : {1, 7, 10, 31, 96, 320, 321}) {
      const int64_t N = 3;
      std::uniform_int_distribution<uint32_t> d(0, (1u << bits) - 1);
      std::vector<uint32_t> q(N * K);
      for (auto& c : q) c = d(g_rng);
      const auto p = pack(q, N, K, bits);
      const int64_t W = quant_words_per_row(K, bits);
      CHECK(static_cast<int64_t>(p.size()) == N * W);
      const int pw = quant_per_word(bits);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t w = 0; w < W; ++w) {
          for (int i = 0; i < pw; ++i) {
            const int64_t k = w * pw + i;
            const uint32_t got = quant_unpack(p[n * W + w], i, bits);
            CHECK(got == (k < K ? q[n * K + k] : 0u));  // tail codes are 0
          }
          if (bits == 3) CHECK((p[n * W + w] >> 30) == 0u);  // unused bits 30..31
        }
      }
    }
  }
  CHECK(quant_per_word(2) == 16 && quant_per_word(3) == 10 && quant_per_word(4) == 8 &&
        quant_per_word(8) == 4);
  CHECK(quant_words_per_row(320, 3) == 32 && quant_words_per_row(96, 3) == 10);
}

static void test_group_rules() {
  CHECK(quant_group_shift(32) == 5 && quant_group_shift(128) == 7 && quant_group_shift(96) == -1);
  for (int64_t K : {96, 320, 2048}) {
    for (int64_t G : {int64_t{32}, int64_t{64}, K}) {
      if (K % G) continue;
      const int gs = quant_group_shift(G);
      for (int64_t k = 0; k < K; ++k) CHECK(quant_group_of(k, G, gs, K / G) == k / G);
    }
  }
  CHECK(quant_group_size_ok(320, 32, 3) && quant_group_size_ok(96, 32, 2));
  CHECK(quant_group_size_ok(100, 100, 2));  // per-channel, K not a multiple of PER_WORD
  CHECK(!quant_group_size_ok(96, 24, 2));   // 24 % 16 != 0
  CHECK(!quant_group_size_ok(96, 5, 3));    // does not divide
  CHECK(!quant_group_size_ok(40, 5, 3));    // G < 10 for 3-bit
  CHECK(quant_group_size_ok(100, 20, 8));
}

// ------------------------------------------------------------------------------------------
// GEMV plan / smem layout
// ------------------------------------------------------------------------------------------
static void test_gemv_layout() {
  using namespace gemv_tiling;
  for (int bits : {2, 3, 4, 8}) {
    for (int mt : {1, 4, 8, 16}) {
      const int sw = gemv_stage_words(mt, bits);
      const int pw = quant_per_word(bits);
      CHECK(sw >= kWordsPerIter && sw % kWordsPerIter == 0 && sw <= kMaxStageWords);
      CHECK((sw & (sw - 1)) == 0);
      CHECK(static_cast<int64_t>(sw) * mt * pw <= kSmemFloatBudget || sw == kWordsPerIter);
      const size_t bytes = static_cast<size_t>(gemv_smem_floats(mt, bits)) * 4;
      CHECK(bytes <= 48 * 1024);
      // every (mi, kk) maps to a distinct in-range slot
      std::vector<int> seen(gemv_smem_floats(mt, bits), 0);
      for (int mi = 0; mi < mt; ++mi)
        for (int kk = 0; kk < sw * pw; ++kk) {
          const int idx = gemv_xs_index(mt, bits, mi, kk);
          CHECK(idx >= 0 && idx < gemv_smem_floats(mt, bits));
          if (idx >= 0 && idx < gemv_smem_floats(mt, bits)) ++seen[idx];
        }
      for (int c : seen) CHECK(c <= 1);
      // bank groups: the 8 lanes of a row group read chunk j at the same in-chunk offset; their
      // first banks (32 banks of 4 B) must differ by >= the read width
      const int cp = gemv_chunk_pitch(bits);
      const int vw = (pw % 4 == 0) ? 4 : 2;
      for (int off = 0; off < 4 * pw; off += vw) {
        std::vector<int> bank_used(32, 0);
        for (int j = 0; j < kLanesPerRow; ++j)
          for (int b = 0; b < vw; ++b) ++bank_used[(j * cp + off + b) % 32];
        for (int u : bank_used) CHECK(u <= 1);
        CHECK(cp % 4 == 0 && off % vw == 0);
      }
    }
  }
  CHECK(gemv_pick_mt(1) == 1 && gemv_pick_mt(3) == 4 && gemv_pick_mt(5) == 8 &&
        gemv_pick_mt(16) == 16 && gemv_pick_mt(17) == 16);
}

// ------------------------------------------------------------------------------------------
// GEMV host emulation
// ------------------------------------------------------------------------------------------
static float code_to_float_emul(uint32_t q) {
  const uint32_t bitsv = 0x4B000000u | q;
  float f;
  std::memcpy(&f, &bitsv, 4);
  return f - 8388608.f;
}

struct GemvCase {
  int64_t M, N, K, G;
  int bits;
};

template <int BITS, int MT>
static void emulate_gemv(const GemvCase& c, const Buf<float>& x, int64_t x_sm, int64_t x_sk,
                         const Buf<uint32_t>& packed, const Buf<float>& scales,
                         const Buf<float>& zeros, const Buf<float>& bias, bool has_bias, bool vec,
                         int grid_y_cap, std::vector<float>& y, std::vector<int>& writes) {
  using namespace gemv_tiling;
  constexpr int PW = quant_per_word(BITS);
  constexpr int SW = gemv_stage_words(MT, BITS);
  constexpr int CP = gemv_chunk_pitch(BITS);
  constexpr int RP = gemv_row_pitch(MT, BITS);
  constexpr int SC = SW * PW;
  constexpr int ITERS = SW / kWordsPerIter;
  constexpr int U = ITERS < 4 ? ITERS : 4;
  const GemvPlan plan = make_gemv_plan(c.M, c.N, c.K, BITS);
  CHECK(plan.mt == MT && plan.stage_words == SW);
  const int64_t W = plan.words_per_row;
  const int64_t NG = c.K / c.G;
  const int gsh = quant_group_shift(c.G);
  const int grid_y = plan.grid_y < grid_y_cap ? plan.grid_y : grid_y_cap;
  std::vector<float> xs(gemv_smem_floats(MT, BITS));

  for (int64_t bx = 0; bx < plan.grid_x; ++bx) {
    for (int by = 0; by < grid_y; ++by) {
      for (int64_t mc = by; mc < plan.m_chunks; mc += grid_y) {
        const int64_t m0 = mc * MT;
        // per-thread accumulators
        std::vector<float> acc(static_cast<size_t>(kThreads) * MT, 0.f);
        for (int64_t stage = 0; stage < plan.num_stages; ++stage) {
          const int64_t k0 = stage * SC;
          std::fill(xs.begin(), xs.end(), std::numeric_limits<float>::quiet_NaN());
          for (int tid = 0; tid < kThreads; ++tid)
            for (int e = tid; e < MT * SC; e += kThreads) {
              const int mi = e / SC;
              const int kk = e - mi * SC;
              const int64_t m = m0 + mi, k = k0 + kk;
              float v = 0.f;
              if (m < c.M && k < c.K) v = x.at(m * x_sm + k * x_sk);
              xs[gemv_xs_index(MT, BITS, mi, kk)] = v;
            }
          for (int tid = 0; tid < kThreads; ++tid) {
            const int warp = tid / 32, lane = tid % 32, j = lane % kLanesPerRow;
            const int64_t n = bx * kRowsPerBlock + warp * kRowsPerWarp + lane / kLanesPerRow;
            if (n >= c.N) continue;
            float* a = &acc[static_cast<size_t>(tid) * MT];
            for (int it0 = 0; it0 < ITERS; it0 += U) {
              uint32_t wv[U][4];
              for (int u = 0; u < U; ++u) {
                const int64_t w = gemv_lane_word(MT, BITS, stage, it0 + u, j);
                if (vec) {
                  CHECK(W % 4 == 0 && w % 4 == 0);
                  for (int v = 0; v < 4; ++v) wv[u][v] = w < W ? packed.at(n * W + w + v) : 0u;
                } else {
                  for (int v = 0; v < 4; ++v)
                    wv[u][v] = (w + v < W) ? packed.at(n * W + w + v) : 0u;
                }
              }
              for (int u = 0; u < U; ++u) {
                const int it = it0 + u;
                for (int v = 0; v < 4; ++v) {
                  const int64_t w = gemv_lane_word(MT, BITS, stage, it, j) + v;
                  if (w >= W) continue;
                  const uint32_t word = wv[u][v];
                  const int64_t kw = w * PW;
                  const int64_t g0 = quant_group_of(kw, c.G, gsh, NG);
                  CHECK(g0 >= 0 && g0 < NG);
                  const float s0 = scales.at(n * NG + g0);
                  const float nzs0 = -zeros.at(n * NG + g0) * s0;
                  float qf[PW], dq[PW];
                  for (int i = 0; i < PW; ++i) {
                    qf[i] = code_to_float_emul(quant_unpack(word, i, BITS));
                    dq[i] = std::fmaf(qf[i], s0, nzs0);
                  }
                  if (BITS == 3 && NG > 1) {
                    const int64_t b = (g0 + 1) * c.G - kw;
                    if (b < PW) {
                      const int64_t g1 = g0 + 1 < NG ? g0 + 1 : NG - 1;
                      const float s1 = scales.at(n * NG + g1);
                      const float nzs1 = -zeros.at(n * NG + g1) * s1;
                      for (int i = 0; i < PW; ++i)
                        if (i >= b) dq[i] = std::fmaf(qf[i], s1, nzs1);
                    }
                  } else {
                    // no straddling for 2/4/8 bits (quant_group_size_ok)
                    for (int i = 0; i < PW; ++i)
                      if (kw + i < c.K) CHECK(quant_group_of(kw + i, c.G, gsh, NG) == g0);
                  }
                  if (kw + PW > c.K) {
                    const int64_t nvalid = c.K - kw;
                    for (int i = 0; i < PW; ++i)
                      if (i >= nvalid) dq[i] = 0.f;
                  }
                  const int base = (it * kLanesPerRow + j) * CP + v * PW;
                  CHECK(base == gemv_xs_index(MT, BITS, 0, static_cast<int>(w - stage * SW) * PW));
                  for (int mi = 0; mi < MT; ++mi) {
                    const float* xr = xs.data() + mi * RP + base;
                    for (int i = 0; i < PW; ++i) a[mi] = std::fmaf(dq[i], xr[i], a[mi]);
                  }
                }
              }
            }
          }
        }
        // 8-lane xor reduction, per warp
        for (int warp = 0; warp < kWarps; ++warp) {
          for (int mi = 0; mi < MT; ++mi) {
            float v[32];
            for (int l = 0; l < 32; ++l) v[l] = acc[(warp * 32 + l) * MT + mi];
            for (int o : {4, 2, 1}) {
              float t[32];
              for (int l = 0; l < 32; ++l) t[l] = v[l] + v[l ^ o];
              std::memcpy(v, t, sizeof(v));
            }
            for (int l = 0; l < 32; ++l) acc[(warp * 32 + l) * MT + mi] = v[l];
          }
        }
        for (int tid = 0; tid < kThreads; ++tid) {
          const int warp = tid / 32, lane = tid % 32, j = lane % kLanesPerRow;
          const int64_t n = bx * kRowsPerBlock + warp * kRowsPerWarp + lane / kLanesPerRow;
          if (n >= c.N) continue;
          const float b = has_bias ? bias.at(n) : 0.f;
          for (int mi = 0; mi < MT; ++mi) {
            const int64_t m = m0 + mi;
            if ((mi % kLanesPerRow) == j && m < c.M) {
              y[m * c.N + n] = acc[tid * MT + mi] + b;
              ++writes[m * c.N + n];
            }
          }
        }
      }
    }
  }
}

template <int BITS>
static void emulate_gemv_bits(int mt, const GemvCase& c, const Buf<float>& x, int64_t sm,
                              int64_t sk, const Buf<uint32_t>& p, const Buf<float>& s,
                              const Buf<float>& z, const Buf<float>& b, bool hb, bool vec, int gy,
                              std::vector<float>& y, std::vector<int>& wr) {
  switch (mt) {
    case 1:
      return emulate_gemv<BITS, 1>(c, x, sm, sk, p, s, z, b, hb, vec, gy, y, wr);
    case 4:
      return emulate_gemv<BITS, 4>(c, x, sm, sk, p, s, z, b, hb, vec, gy, y, wr);
    case 8:
      return emulate_gemv<BITS, 8>(c, x, sm, sk, p, s, z, b, hb, vec, gy, y, wr);
    default:
      return emulate_gemv<BITS, 16>(c, x, sm, sk, p, s, z, b, hb, vec, gy, y, wr);
  }
}

static void run_gemv_case(const GemvCase& c, bool transposed_x, int grid_y_cap) {
  const int bits = c.bits;
  const int64_t M = c.M, N = c.N, K = c.K, NG = K / c.G;
  CHECK(quant_group_size_ok(K, c.G, bits));
  std::uniform_int_distribution<uint32_t> dq(0, (1u << bits) - 1);
  std::uniform_real_distribution<float> du(-1.f, 1.f), ds(0.01f, 0.1f);
  std::vector<uint32_t> q(N * K);
  for (auto& v : q) v = dq(g_rng);
  Buf<uint32_t> packed{pack(q, N, K, bits)};
  Buf<float> scales, zeros, bias;
  scales.v.resize(N * NG);
  zeros.v.resize(N * NG);
  for (auto& v : scales.v) v = ds(g_rng);
  for (auto& v : zeros.v) v = std::floor(du(g_rng) * (1 << (bits - 1))) + (1 << (bits - 1));
  zeros.v[0] += 0.25f;  // non-integer zero point
  bias.v.resize(N);
  for (auto& v : bias.v) v = du(g_rng);
  // x (M, K) logical; storage row-major or transposed (column-major)
  Buf<float> x;
  x.v.resize(M * K);
  for (auto& v : x.v) v = du(g_rng);
  const int64_t sm = transposed_x ? 1 : K, sk = transposed_x ? M : 1;
  const int64_t W = quant_words_per_row(K, bits);
  for (int vec = 0; vec < 2; ++vec) {
    if (vec && W % 4 != 0) continue;
    for (int hb = 0; hb < 2; ++hb) {
      std::vector<float> y(M * N, -12345.f);
      std::vector<int> writes(M * N, 0);
      const int mt = gemv_pick_mt(M);
      switch (bits) {
        case 2:
          emulate_gemv_bits<2>(mt, c, x, sm, sk, packed, scales, zeros, bias, hb, vec, grid_y_cap,
                               y, writes);
          break;
        case 3:
          emulate_gemv_bits<3>(mt, c, x, sm, sk, packed, scales, zeros, bias, hb, vec, grid_y_cap,
                               y, writes);
          break;
        case 4:
          emulate_gemv_bits<4>(mt, c, x, sm, sk, packed, scales, zeros, bias, hb, vec, grid_y_cap,
                               y, writes);
          break;
        default:
          emulate_gemv_bits<8>(mt, c, x, sm, sk, packed, scales, zeros, bias, hb, vec, grid_y_cap,
                               y, writes);
      }
      double max_err = 0.0;
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          double ref = hb ? bias.v[n] : 0.0, mag = std::fabs(ref);
          for (int64_t k = 0; k < K; ++k) {
            const int64_t g = k / c.G;
            const double w =
                (static_cast<double>(q[n * K + k]) - zeros.v[n * NG + g]) * scales.v[n * NG + g];
            const double xv = x.v[m * sm + k * sk];
            ref += w * xv;
            mag += std::fabs(w * xv);
          }
          const double got = y[m * N + n];
          CHECK(writes[m * N + n] == 1);
          const double err = std::fabs(got - ref);
          if (!(err <= 1e-5 * mag + 1e-6)) {
            std::fprintf(stderr,
                         "gemv mismatch bits=%d M=%lld N=%lld K=%lld G=%lld vec=%d m=%lld n=%lld: "
                         "got %g ref %g\n",
                         bits, (long long)M, (long long)N, (long long)K, (long long)c.G, vec,
                         (long long)m, (long long)n, got, ref);
            ++g_failures;
            if (g_failures > 50) std::exit(1);
          }
          max_err = err > max_err ? err : max_err;
        }
      }
    }
  }
}

static void test_gemv() {
  int cases = 0;
  for (int bits : {2, 3, 4, 8}) {
    for (int64_t M : {1, 3, 17}) {
      for (int64_t N : {5, 33}) {
        for (int64_t K : {96, 320}) {
          for (int64_t G : {int64_t{32}, K}) {
            run_gemv_case({M, N, K, G, bits}, /*transposed_x=*/M == 3, /*grid_y_cap=*/65535);
            ++cases;
          }
        }
      }
    }
    // several K stages (MT = 16 2-bit stages are 512 codes), G = 64 / 128, grid-stride over M
    run_gemv_case({17, 33, 2048, 128, bits}, false, 1);
    run_gemv_case({40, 17, 1280, 64, bits}, true, 2);
    run_gemv_case({1, 18, 20000, 32, bits}, false, 65535);  // MT = 1: multiple 1024-word stages
    cases += 3;
  }
  // per-channel with K not a multiple of PER_WORD (tail word; G = K)
  run_gemv_case({2, 7, 100, 100, 2}, false, 65535);
  run_gemv_case({5, 7, 37, 37, 8}, true, 65535);
  run_gemv_case({9, 3, 333, 333, 3}, false, 65535);
  // 3-bit with G = 64 (straddling words at 60..69) and K = 96 (last word straddles into a
  // nonexistent group: g1 clamp) already covered above; also G = 10 (one group per word)
  run_gemv_case({4, 6, 320, 10, 3}, false, 65535);
  std::printf("gemv emulation: %d cases + tails\n", cases);
}

// ------------------------------------------------------------------------------------------
// int8 quantizer
// ------------------------------------------------------------------------------------------
static void test_int8_quantizer() {
  // scale 1 (amax 127): halves round to even
  const float row[] = {127.f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f, -127.f, 126.5f};
  const int expect[] = {127, 0, 2, 2, 0, -2, -2, 4, -127, 126};
  float amax = 0.f;
  for (float v : row) amax = std::fmax(amax, std::fabs(v));
  const float s = quant_int8_row_scale(amax);
  CHECK(s == 1.f);
  for (int i = 0; i < 10; ++i) CHECK(quant_int8_code(row[i], s) == expect[i]);
  // all-zero row
  CHECK(quant_int8_row_scale(0.f) == 1.f);
  CHECK(quant_int8_code(0.f, 1.f) == 0);
  CHECK(quant_int8_code(-0.f, 1.f) == 0);
  // clamp
  CHECK(quant_int8_code(1000.f, 1.f) == 127 && quant_int8_code(-1000.f, 1.f) == -127);
  // random rows: the max element maps to +-127, codes within 0.5 of x / scale
  std::uniform_real_distribution<float> du(-3.f, 3.f);
  for (int r = 0; r < 200; ++r) {
    std::vector<float> xr(37);
    float a = 0.f;
    for (auto& v : xr) {
      v = du(g_rng);
      a = std::fmax(a, std::fabs(v));
    }
    const float sc = quant_int8_row_scale(a);
    for (float v : xr) {
      const int c = quant_int8_code(v, sc);
      CHECK(c >= -127 && c <= 127);
      CHECK(std::fabs(static_cast<double>(v / sc) - c) <= 0.5);
      if (std::fabs(v) == a) CHECK(std::abs(c) == 127);
    }
  }
}

// ------------------------------------------------------------------------------------------
// int8 GEMM host emulation
// ------------------------------------------------------------------------------------------
static void emul_load_chunk(const Buf<int8_t>& src, int64_t rows, int64_t K, int64_t row, int64_t k,
                            bool vec, int8_t* dst) {
  int8_t c[16] = {0};
  if (row < rows) {
    if (vec && k + 16 <= K) {
      CHECK(k % 16 == 0 && K % 16 == 0);
      for (int b = 0; b < 16; ++b) c[b] = src.at(row * K + k + b);
    } else if (k < K) {
      for (int b = 0; b < 16; ++b)
        if (k + b < K) c[b] = src.at(row * K + k + b);
    }
  }
  std::memcpy(dst, c, 16);
}

static void run_int8_gemm_case(int64_t M, int64_t N, int64_t K, int grid_y_cap) {
  using namespace int8_gemm_tiling;
  std::uniform_int_distribution<int> dc(-127, 127);
  std::uniform_real_distribution<float> ds(0.001f, 0.02f), du(-1.f, 1.f);
  Buf<int8_t> xq, w;
  Buf<float> xs, ws, bias;
  xq.v.resize(M * K);
  w.v.resize(N * K);
  for (auto& v : xq.v) v = static_cast<int8_t>(dc(g_rng));
  for (auto& v : w.v) v = static_cast<int8_t>(dc(g_rng));
  // extreme values in the first row / column
  for (int64_t k = 0; k < K; ++k) {
    xq.v[k] = 127;
    w.v[k] = (k % 2) ? -127 : 127;
  }
  xs.v.resize(M);
  ws.v.resize(N);
  bias.v.resize(N);
  for (auto& v : xs.v) v = ds(g_rng);
  for (auto& v : ws.v) v = ds(g_rng);
  for (auto& v : bias.v) v = du(g_rng);
  const bool vec = K % 16 == 0;
  const int64_t n_tiles = (N + kBlockN - 1) / kBlockN, m_tiles = (M + kBlockM - 1) / kBlockM;
  const int grid_y = static_cast<int>(m_tiles < grid_y_cap ? m_tiles : grid_y_cap);
  std::vector<float> y(M * N, -12345.f);
  std::vector<int> writes(M * N, 0);
  std::vector<int8_t> sA(kPanels * kBlockM * kFrag), sB(kPanels * kBlockN * kFrag);
  for (int64_t bx = 0; bx < n_tiles; ++bx) {
    const int64_t n0 = bx * kBlockN;
    for (int by = 0; by < grid_y; ++by) {
      for (int64_t mt = by; mt < m_tiles; mt += grid_y) {
        const int64_t m0 = mt * kBlockM;
        int32_t acc[kWarps][2][2][16][16] = {};
        for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
          std::memset(sA.data(), 0x5A, sA.size());
          std::memset(sB.data(), 0x5A, sB.size());
          std::vector<int> slot_hits(kBlockM * kBlockK / kChunk, 0);
          for (int tid = 0; tid < kThreads; ++tid) {
            for (int s = tid; s < kBlockM * kBlockK / kChunk; s += kThreads) {
              int row, kc;
              int8_copy_slot(s, &row, &kc);
              ++slot_hits[row * 4 + kc];
              emul_load_chunk(xq, M, K, m0 + row, k0 + kc * kChunk, vec,
                              sA.data() + int8_panel_index(kBlockM, row, kc * kChunk));
              emul_load_chunk(w, N, K, n0 + row, k0 + kc * kChunk, vec,
                              sB.data() + int8_panel_index(kBlockN, row, kc * kChunk));
            }
          }
          for (int h : slot_hits) CHECK(h == 1);
          for (int warp = 0; warp < kWarps; ++warp) {
            const int wm = warp / 2, wn = warp % 2;
            for (int pnl = 0; pnl < kPanels; ++pnl) {
              for (int i = 0; i < 2; ++i) {
                for (int jn = 0; jn < 2; ++jn) {
                  // wmma semantics: A row_major a(r, c) = pa[r * ldm + c];
                  // B col_major b(k, n) = pb[n * ldm + k]; ldm = 16.
                  const int8_t* pa =
                      sA.data() + int8_panel_index(kBlockM, wm * kWarpM + i * 16, pnl * 16);
                  const int8_t* pb =
                      sB.data() + int8_panel_index(kBlockN, wn * kWarpN + jn * 16, pnl * 16);
                  CHECK((pa - sA.data()) % 32 == 0 && (pb - sB.data()) % 32 == 0);
                  for (int r = 0; r < 16; ++r)
                    for (int cc = 0; cc < 16; ++cc)
                      for (int kk = 0; kk < 16; ++kk)
                        acc[warp][i][jn][r][cc] += static_cast<int32_t>(pa[r * kFrag + kk]) *
                                                   static_cast<int32_t>(pb[cc * kFrag + kk]);
                }
              }
            }
          }
        }
        for (int warp = 0; warp < kWarps; ++warp) {
          const int wm = warp / 2, wn = warp % 2;
          for (int i = 0; i < 2; ++i)
            for (int jn = 0; jn < 2; ++jn)
              for (int e = 0; e < 256; ++e) {
                const int64_t m = m0 + wm * kWarpM + i * 16 + e / kFrag;
                const int64_t n = n0 + wn * kWarpN + jn * 16 + e % kFrag;
                if (m < M && n < N) {
                  const int32_t a = acc[warp][i][jn][e / 16][e % 16];
                  int64_t ref = 0;
                  for (int64_t k = 0; k < K; ++k)
                    ref += static_cast<int64_t>(xq.v[m * K + k]) * w.v[n * K + k];
                  CHECK(a == ref);  // exact integer part
                  y[m * N + n] = static_cast<float>(a) * xs.at(m) * ws.at(n) + bias.at(n);
                  ++writes[m * N + n];
                }
              }
        }
      }
    }
  }
  for (int64_t e = 0; e < M * N; ++e) CHECK(writes[e] == 1);
}

static void test_int8_gemm() {
  int cases = 0;
  for (int64_t M : {1, 3, 17, 70}) {
    for (int64_t N : {5, 33, 65}) {
      for (int64_t K : {16, 40, 96, 130}) {
        run_int8_gemm_case(M, N, K, 65535);
        ++cases;
      }
    }
  }
  run_int8_gemm_case(200, 20, 64, 2);  // grid-stride over M tiles
  std::printf("int8 gemm emulation: %d cases\n", cases + 1);
}

int main() {
  test_packing();
  test_group_rules();
  test_gemv_layout();
  test_gemv();
  test_int8_quantizer();
  test_int8_gemm();
  if (g_failures) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("test_quant_plan: all checks passed\n");
  return 0;
}
