// CPU-only test of the quantized GEMV's index arithmetic (csrc/quant/quant_plan.h) and of a host
// emulation of quant_gemv_kernel (csrc/quant/quant_cuda.cu):
//   * sk-pack-v1: an independent packer against quant_unpack (2/3/4/8 bits, tails),
//   * the sk-cuda-gemv-v1 layout: span rules, gemv_slot / gemv_column as inverse maps (every
//     code of a padded tile in exactly one slot), the dequantizer's shifts and offsets within
//     the fp16 / bf16 mantissas,
//   * the launch plan: row tiles, x chunks, groups, group shift, stages, the warps' K split,
//   * the kernel, step by step on the host: layout words built through gemv_slot, the LOP3 /
//     magic / HFMA2 dequantization decoded bit for bit, the mma.sync m16n8k16 fragments
//     assembled from the 32 lanes as the PTX ISA defines them, one scale per span, the 8 warps'
//     partial sums and the output mapping, against a float64 reference.
// Keep in sync with the kernel: any change to its fragments, spans or reduction must be
// mirrored here.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <tuple>
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

// ------------------------------------------------------------------------------------------
// sk-pack-v1 (independent implementation of the documented format)
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
      for (int64_t n = 0; n < N; ++n)
        for (int64_t w = 0; w < W; ++w)
          for (int i = 0; i < pw; ++i) {
            const int64_t k = w * pw + i;
            CHECK(quant_unpack(p[n * W + w], i, bits) == (k < K ? q[n * K + k] : 0u));
          }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Layout rules
// ------------------------------------------------------------------------------------------
static void test_span_rules() {
  CHECK(gemv_span(4, 4096, 128) == 64 && gemv_span(4, 4096, 64) == 64);
  CHECK(gemv_span(4, 4096, 32) == 32 && gemv_span(4, 4096, 4096) == 64);
  CHECK(gemv_span(3, 4096, 128) == 64);  // 3-bit is laid out as 4-bit
  CHECK(gemv_span(2, 4096, 128) == 128 && gemv_span(2, 4096, 64) == 64);
  CHECK(gemv_span(2, 4096, 32) == 32 && gemv_span(2, 4096, 256) == 128);
  CHECK(gemv_span(8, 4096, 32) == 32 && gemv_span(8, 11008, 11008) == 32);
  CHECK(gemv_span(4, 192, 96) == 0);   // 1.5 chunks
  CHECK(gemv_span(4, 192, 48) == 0);   // not a multiple of 32
  CHECK(gemv_span(2, 768, 384) == 0);  // 3 chunks: not a power of two
  CHECK(gemv_span(4, 100, 30) == 0);   // does not divide K
  CHECK(gemv_span(5, 128, 32) == 0);
  CHECK(gemv_span(4, 72, 72) == 64);  // per-channel, any K
  CHECK(gemv_k_pad(4, 96) == 128 && gemv_k_pad(2, 96) == 128 && gemv_k_pad(8, 96) == 96);
  CHECK(gemv_groups(4, 96, 32) == 4);  // the 4th group is padding
  CHECK(gemv_groups(4, 4096, 128) == 32 && gemv_groups(4, 4096, 4096) == 1);
  CHECK(gemv_group_shift(4, 4096, 128) == 1 && gemv_group_shift(4, 4096, 64) == 0);
  CHECK(gemv_group_shift(4, 4096, 4096) == 30 && gemv_group_shift(8, 4096, 128) == 2);
}

// gemv_slot and gemv_column are inverse maps; every code of a tile has its own slot.
static void test_slots() {
  for (int lb : {2, 4, 8}) {
    const int kc = gemv_chunk_k(lb);
    for (int span : {32, 64, 128}) {
      if (span > kc || kc % span) continue;
      const int64_t k_pad = 3 * kc;
      std::set<std::tuple<int64_t, int, int, int>> seen;
      const int ppw = gemv_pairs_per_word(lb);
      for (int rr = 0; rr < 16; ++rr) {
        for (int64_t k = 0; k < k_pad; ++k) {
          const GemvSlot sl = gemv_slot(lb, span, rr, k);
          CHECK(sl.lane >= 0 && sl.lane < 32 && sl.word >= 0 && sl.word < 4);
          CHECK(sl.bit >= 0 && sl.bit + lb <= 32 && (sl.bit % 16) + lb <= 16);
          CHECK(seen.insert({sl.chunk, sl.lane, sl.word, sl.bit}).second);
          // back: pair, register, step, row and column
          const int half = sl.bit / 16;
          const int p = sl.word * ppw + (sl.bit % 16) / lb;
          const int r = p % 4, s = p / 4;
          const int e = 2 * (r / 2) + half, h = r % 2;
          CHECK(s < gemv_steps_per_chunk(lb));
          CHECK(rr == sl.lane / 4 + 8 * h);
          CHECK(gemv_column(lb, span, sl.chunk, s, sl.lane % 4, e) == k);
          // a step stays inside one span
          CHECK((k % kc) / span == s / (span / 16));
        }
      }
      CHECK(static_cast<int64_t>(seen.size()) == 16 * k_pad);
    }
  }
}

static void test_dequant_fields() {
  for (int kind : {gemv::kKindF16, gemv::kKindBF16}) {
    const int room = kind == gemv::kKindF16 ? 10 : 7;
    for (int lb : {2, 4, 8}) {
      if (!gemv_magic_route(kind, lb)) {
        CHECK(kind == gemv::kKindBF16 && lb == 8);
        continue;
      }
      for (int i = 0; i < gemv_pairs_per_word(lb); ++i) {
        const int sh = gemv_pair_shift(kind, lb, i), off = gemv_pair_offset(kind, lb, i);
        CHECK(sh + off == i * lb && sh >= 0 && off >= 0);
        CHECK(off + lb <= room);  // 2^off * q stays inside the mantissa: exact
      }
    }
  }
}

static void test_plans() {
  const GemvPlan p = make_gemv_plan(1, 11008, 4096, 4, 128);
  CHECK(p.ok && p.lb == 4 && p.span == 64 && p.mh == 1 && p.n_tiles == 688);
  CHECK(p.n_chunks == 64 && p.groups == 32 && p.group_shift == 1 && !p.x_copy);
  CHECK(p.m_chunks == 1 && p.grid_y == 1 && p.stages == 4);
  const GemvPlan p16 = make_gemv_plan(16, 11008, 4096, 2, 128);
  CHECK(p16.ok && p16.mh == 2 && p16.span == 128 && p16.stages == 3 && p16.m_chunks == 1);
  const GemvPlan big = make_gemv_plan(4096, 4096, 11008, 8, 11008);
  CHECK(big.ok && big.mh == 2 && big.m_chunks == 256 && big.groups == 1 && !big.x_copy);
  CHECK(make_gemv_plan(9, 4096, 4096, 4, 128).mh == 2 && make_gemv_plan(8, 64, 64, 4, 64).mh == 1);
  const GemvPlan odd = make_gemv_plan(3, 33, 96, 3, 32);
  CHECK(odd.ok && odd.k_pad == 128 && odd.x_copy && odd.groups == 4 && odd.n_tiles == 3);
  CHECK(!make_gemv_plan(3, 33, 96, 4, 48).ok);
  CHECK(make_gemv_plan(1, 8, 64, 4, 64, 4).stages == 2);  // fp32 x
  // the warps' K ranges tile [0, n_chunks) in order, whatever the count
  for (int64_t nc : {1, 2, 7, 8, 9, 64, 86, 172}) {
    int64_t prev = 0;
    for (int w = 0; w < gemv::kWarps; ++w) {
      int64_t b, e;
      gemv_warp_chunks(nc, w, &b, &e);
      CHECK(b == prev && e >= b);
      prev = e;
    }
    CHECK(prev == nc);
  }
}

// ------------------------------------------------------------------------------------------
// Host emulation of quant_gemv_kernel
// ------------------------------------------------------------------------------------------
// A normal fp16 / bf16 value from its bits (what the dequantizer's pairs hold).
static double half_value(uint32_t bits16, int kind) {
  const int sign = (bits16 >> 15) & 1;
  int e, m, mbits, bias;
  if (kind == gemv::kKindF16) {
    e = (bits16 >> 10) & 0x1F, m = bits16 & 0x3FF, mbits = 10, bias = 15;
  } else {
    e = (bits16 >> 7) & 0xFF, m = bits16 & 0x7F, mbits = 7, bias = 127;
  }
  const double v = std::ldexp(1.0 + m / std::ldexp(1.0, mbits), e - bias);
  return sign ? -v : v;
}

// One lane register of the A fragment: the two values (low, high half) of pair position i of
// word w, dequantized as the kernel does (nz = -z of the register's row).
// (the kernel's constants, decoded: fma(v, 2^-off, -z - magic 2^-off), all exact)
static void dequant_pair(uint32_t w, int i, int kind, int lb, double nz, double out[2]) {
  if (!gemv_magic_route(kind, lb)) {  // fp32 magic 2^23
    for (int hf = 0; hf < 2; ++hf) out[hf] = ((w >> (16 * hf + 8 * i)) & 0xFFu) + nz;
    return;
  }
  const int sh = gemv_pair_shift(kind, lb, i), off = gemv_pair_offset(kind, lb, i);
  const uint32_t m = ((1u << lb) - 1u) << off;
  const uint32_t v = ((w >> sh) & (m | (m << 16))) | gemv_magic_or(kind);  // the LOP3
  for (int hf = 0; hf < 2; ++hf) {
    const double h = half_value((v >> (16 * hf)) & 0xFFFFu, kind);
    const double scale = half_value((gemv_pow2_neg(kind, off) >> (16 * hf)) & 0xFFFFu, kind);
    const double c = half_value((gemv_neg_magic(kind, off) >> (16 * hf)) & 0xFFFFu, kind) + nz;
    out[hf] = h * scale + c;
  }
}

static void test_dequant_constants() {
  CHECK(half_value(gemv_magic_or(gemv::kKindF16) & 0xFFFFu, gemv::kKindF16) == 1024.0);
  CHECK(half_value(gemv_magic_or(gemv::kKindBF16) >> 16, gemv::kKindBF16) == 128.0);
  for (int kind : {gemv::kKindF16, gemv::kKindBF16}) {
    const double mag = kind == gemv::kKindF16 ? 1024.0 : 128.0;
    for (int e = 0; e <= 6; ++e) {
      for (int hf = 0; hf < 2; ++hf) {
        CHECK(half_value((gemv_pow2_neg(kind, e) >> (16 * hf)) & 0xFFFFu, kind) ==
              std::ldexp(1.0, -e));
        CHECK(half_value((gemv_neg_magic(kind, e) >> (16 * hf)) & 0xFFFFu, kind) ==
              -mag * std::ldexp(1.0, -e));
      }
    }
  }
}

static void run_gemv_case(int64_t M, int64_t N, int64_t K, int bits, int64_t G, int kind,
                          bool with_bias) {
  const GemvPlan plan = make_gemv_plan(M, N, K, bits, G, kind == gemv::kKindF32 ? 4 : 2);
  CHECK(plan.ok);
  if (!plan.ok) return;
  const int lb = plan.lb, span = plan.span, kc = gemv_chunk_k(lb);
  const int dq = kind == gemv::kKindF16 ? gemv::kKindF16 : gemv::kKindBF16;
  const int64_t groups_real = K / G;
  std::uniform_int_distribution<int> dq_(0, (1 << bits) - 1);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<int> q(N * K), z(N * groups_real);
  std::vector<double> s(N * groups_real), x(M * K), bias(N);
  for (auto& v : q) v = dq_(g_rng);
  for (auto& v : z) v = dq_(g_rng);
  for (auto& v : s) v = 0.01 + 0.02 * std::abs(nd(g_rng));
  for (auto& v : x) v = nd(g_rng);
  for (auto& v : bias) v = with_bias ? nd(g_rng) : 0.0;

  // the layout, through gemv_slot (the Python writer follows the same rules)
  const int64_t words_per_tile = plan.n_chunks * 128;
  std::vector<uint32_t> codes(plan.n_tiles * words_per_tile, 0u);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const GemvSlot sl = gemv_slot(lb, span, static_cast<int>(n % 16), k);
      codes[(n / 16) * words_per_tile + (sl.chunk * 32 + sl.lane) * 4 + sl.word] |=
          static_cast<uint32_t>(q[n * K + k]) << sl.bit;
    }
  std::vector<double> params(plan.n_tiles * plan.groups * 32, 0.0);  // {s, -z} rows g, g + 8
  for (int64_t n = 0; n < N; ++n)
    for (int64_t gr = 0; gr < groups_real; ++gr) {
      const int64_t base = ((n / 16) * plan.groups + gr) * 32 + (n % 8) * 4 + 2 * ((n % 16) / 8);
      params[base] = s[n * groups_real + gr];
      params[base + 1] = -z[n * groups_real + gr];
    }
  auto xval = [&](int64_t m, int64_t k) {  // rows past M read row M - 1; columns past K zero
    m = m < M ? m : M - 1;
    return k < K ? x[m * K + k] : 0.0;
  };

  std::vector<double> y(M * N, NAN);
  const int sps = span / 16, spk = kc / span;
  for (int64_t rt = 0; rt < plan.n_tiles; ++rt) {
    for (int64_t mc = 0; mc < plan.m_chunks; ++mc) {
      const int64_t m0 = mc * gemv::kMTile;
      // red[warp][mh][q][lane]
      std::vector<double> red(gemv::kWarps * plan.mh * 4 * 32, 0.0);
      for (int w = 0; w < gemv::kWarps; ++w) {
        int64_t cb, ce;
        gemv_warp_chunks(plan.n_chunks, w, &cb, &ce);
        std::vector<double> yv(32 * plan.mh * 4, 0.0);  // [lane][mh][q]
        for (int64_t c = cb; c < ce; ++c) {
          for (int j = 0; j < spk; ++j) {
            const int64_t grp = span < kc ? c * spk + j : c >> plan.group_shift;
            std::vector<double> acc(32 * plan.mh * 4, 0.0);
            for (int sp = 0; sp < sps; ++sp) {
              const int step = j * sps + sp;
              // A (16 x 16) and B (16 x 8, per half) from the lanes' registers (PTX ISA
              // fragment layouts for m16n8k16 .f16 / .bf16)
              double A[16][16], B[2][16][8];
              for (int lane = 0; lane < 32; ++lane) {
                const int g = lane / 4, t = lane % 4;
                const int64_t prm = (rt * plan.groups + grp) * 32 + g * 4;
                const double nz[2] = {params[prm + 1], params[prm + 3]};
                const uint32_t* cw = &codes[rt * words_per_tile + (c * 32 + lane) * 4];
                const int ppw = gemv_pairs_per_word(lb);
                for (int r = 0; r < 4; ++r) {
                  const int pr = 4 * step + r;
                  double v[2];
                  dequant_pair(cw[pr / ppw], pr % ppw, dq, lb, nz[r % 2], v);
                  const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
                  A[row][col] = v[0];
                  A[row][col + 1] = v[1];
                }
                for (int mh = 0; mh < plan.mh; ++mh) {
                  for (int e = 0; e < 4; ++e) {  // b0 = e 0, 1 (k 2t, 2t + 1); b1 = e 2, 3
                    const int kk = 2 * t + (e / 2) * 8 + e % 2;
                    const int64_t col = gemv_column(lb, span, c, step, t, e);
                    B[mh][kk][g] = xval(m0 + 8 * mh + g, col);
                  }
                }
              }
              for (int lane = 0; lane < 32; ++lane) {
                const int g = lane / 4, t = lane % 4;
                for (int mh = 0; mh < plan.mh; ++mh)
                  for (int qq = 0; qq < 4; ++qq) {  // C: row g + 8 (q / 2), column 2 t + q % 2
                    double sum = 0.0;
                    for (int kk = 0; kk < 16; ++kk)
                      sum += A[g + 8 * (qq / 2)][kk] * B[mh][kk][2 * t + qq % 2];
                    acc[(lane * plan.mh + mh) * 4 + qq] += sum;
                  }
              }
            }
            for (int lane = 0; lane < 32; ++lane) {
              const int64_t prm = (rt * plan.groups + grp) * 32 + (lane / 4) * 4;
              for (int mh = 0; mh < plan.mh; ++mh)
                for (int qq = 0; qq < 4; ++qq)
                  yv[(lane * plan.mh + mh) * 4 + qq] +=
                      params[prm + (qq < 2 ? 0 : 2)] * acc[(lane * plan.mh + mh) * 4 + qq];
            }
          }
        }
        for (int lane = 0; lane < 32; ++lane)
          for (int mh = 0; mh < plan.mh; ++mh)
            for (int qq = 0; qq < 4; ++qq)
              red[((w * plan.mh + mh) * 4 + qq) * 32 + lane] = yv[(lane * plan.mh + mh) * 4 + qq];
      }
      for (int tid = 0; tid < plan.mh * 4 * 32; ++tid) {
        const int mhq = tid / 32, l = tid % 32;
        double v = 0.0;
        for (int w = 0; w < gemv::kWarps; ++w) v += red[(w * plan.mh * 4 + mhq) * 32 + l];
        const int qq = mhq % 4;
        const int64_t n = rt * 16 + l / 4 + 8 * (qq / 2);
        const int64_t m = m0 + 8 * (mhq / 4) + 2 * (l % 4) + qq % 2;
        if (n < N && m < M) {
          CHECK(std::isnan(y[m * N + n]));  // written once
          y[m * N + n] = v + bias[n];
        }
      }
    }
  }
  double err = 0.0, ref_norm = 0.0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = bias[n];
      for (int64_t k = 0; k < K; ++k) {
        const int64_t gr = k / G;
        ref += x[m * K + k] * (q[n * K + k] - z[n * groups_real + gr]) * s[n * groups_real + gr];
      }
      const double got = y[m * N + n];
      CHECK(!std::isnan(got));  // every output written
      err += (got - ref) * (got - ref);
      ref_norm += ref * ref;
    }
  const double rel = std::sqrt(err / (ref_norm > 0 ? ref_norm : 1.0));
  if (!(rel < 1e-12))
    std::fprintf(stderr, "gemv M=%lld N=%lld K=%lld bits=%d G=%lld kind=%d: rel err %g\n",
                 static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K),
                 bits, static_cast<long long>(G), kind, rel);
  CHECK(rel < 1e-12);
}

static void test_gemv_emulation() {
  for (int kind : {gemv::kKindF16, gemv::kKindBF16, gemv::kKindF32}) {
    run_gemv_case(1, 37, 96, 4, 32, kind, true);     // odd N, K padded to two chunks
    run_gemv_case(3, 33, 128, 3, 128, kind, true);   // 3-bit as 4-bit, per-channel
    run_gemv_case(5, 20, 320, 2, 64, kind, false);   // 2-bit: 2 groups a chunk, padding group
    run_gemv_case(9, 17, 256, 8, 256, kind, true);   // M > 8: two halves; 8-bit per-channel
    run_gemv_case(21, 16, 256, 4, 128, kind, true);  // M > 16: two x chunks; a group = 2 chunks
    run_gemv_case(2, 16, 1024, 2, 32, kind, false);  // 4 groups a chunk, 8 warps with work
    run_gemv_case(1, 24, 1024, 8, 32, kind, true);   // 8-bit: a group of 32 is one chunk
  }
}

int main() {
  test_packing();
  test_span_rules();
  test_slots();
  test_dequant_fields();
  test_dequant_constants();
  test_plans();
  test_gemv_emulation();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_quant_plan: all checks passed\n");
  return 0;
}
