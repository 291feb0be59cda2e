// CPU-only test of the fused low-rank GEMM launch plan (csrc/lowrank/lowrank_plan.h) and of the
// kernel's tiling / index arithmetic, via a host emulation that runs the same loops as
// lowrank_fused_kernel (csrc/lowrank/lowrank_cuda.cu) on float data. Keep the two in sync: any
// change to the kernel's loads, fragment / thread mapping or bounds logic must be mirrored here.
//
// Emulation traps: shared memory is filled with NaN before each block, so reading smem that the
// kernel never wrote poisons the result; tensor storage outside the logical [:M,:K] / [:R,:K] /
// [:N,:R] views is NaN, so reading out of the slice is detected; y is pre-filled with a sentinel
// and every element must be written exactly once, padding never.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <random>
#include <vector>

#include "lowrank/lowrank_plan.h"

using namespace supernet_kernels;
using namespace supernet_kernels::lowrank_tiling;

static int g_failures = 0;
#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                 \
      if (g_failures > 50) std::exit(1);                                            \
    }                                                                               \
  } while (0)

// ------------------------------------------------------------------------------------------
// Plan checks
// ------------------------------------------------------------------------------------------
static void check_plan(int64_t M, int64_t N, int64_t R, int num_sms) {
  for (int eb : {4, 2}) {
    const LowRankPlan p = make_lowrank_plan(M, N, R, num_sms, eb);
    CHECK(p.block_m == kBlockM && p.block_n == kBlockN);
    CHECK(p.r_pad >= R && p.r_pad % 16 == 0 && p.r_pad < R + 16);
    CHECK(static_cast<int64_t>(p.grid_x) * p.block_m >= M);
    CHECK(static_cast<int64_t>(p.grid_x - 1) * p.block_m < M);
    CHECK(p.grid_y == p.n_splits);
    CHECK(p.grid_y >= 1 && p.grid_y <= 65535);
    CHECK(p.n_per_split > 0 && p.n_per_split % p.block_n == 0);
    // every split is non-empty and the splits tile [0, N) exactly once, in order
    int64_t expect = 0;
    for (int s = 0; s < p.n_splits; ++s) {
      int64_t b, e;
      lowrank_split_range(p.n_per_split, N, s, &b, &e);
      CHECK(b == expect);
      CHECK(e > b);
      expect = e;
    }
    CHECK(expect == N);
    // a split beyond grid_y would be empty
    int64_t b, e;
    lowrank_split_range(p.n_per_split, N, p.n_splits, &b, &e);
    CHECK(b >= e);
    // at most ~2 waves of blocks (unless M alone needs more)
    const int64_t sms = num_sms > 0 ? num_sms : 1;
    const int64_t blocks = static_cast<int64_t>(p.grid_x) * p.grid_y;
    CHECK(blocks <= (p.grid_x > 2 * sms ? p.grid_x : 2 * sms));
    // small M with enough N tiles must actually split
    const int64_t n_tiles = (N + kBlockN - 1) / kBlockN;
    if (p.grid_x * 2 <= 2 * sms && n_tiles >= 2) CHECK(p.n_splits >= 2);
    // shared memory: within sm_90's 227 KB opt-in (and sm_80's 163 KB)
    const LowRankSmemLayout L = make_lowrank_smem_layout(p.r_pad, eb);
    CHECK(p.smem_bytes == L.total_bytes);
    CHECK(p.smem_bytes <= kSmemOptinLimitSm90);
    CHECK(p.smem_bytes <= kSmemOptinLimitSm80);
    CHECK(L.stage_offset % 128 == 0 && L.scratch_offset % 128 == 0);
    CHECK(L.stage_offset >= static_cast<size_t>(kBlockM) * L.ld_t * eb);
    CHECK(L.scratch_offset >=
          L.stage_offset + static_cast<size_t>(kBlockM + p.r_pad) * L.ld_k * eb);
    CHECK(L.scratch_offset >= L.stage_offset + static_cast<size_t>(kBlockN) * L.ld_u * eb);
    if (eb == 2) {
      // wmma: ldm multiple of 8 halves; 16-row fragment starts 32-byte aligned
      CHECK(L.ld_t % 8 == 0 && L.ld_k % 8 == 0 && L.ld_u % 8 == 0);
      CHECK((kBlockM * L.ld_k * eb) % 32 == 0);  // sV start
      CHECK(L.total_bytes >= L.scratch_offset + kWarps * 256 * 4);
    }
  }
}

static void test_plans() {
  const int64_t Ms[] = {1, 2, 63, 64, 65, 197, 1000, 4096, 16384, 100000};
  const int64_t Ns[] = {1, 5, 63, 64, 65, 384, 768, 3072, 10000};
  const int64_t Rs[] = {1, 15, 16, 17, 64, 100, 255, 256};
  const int sms[] = {0, 1, 2, 108, 132};
  for (int64_t M : Ms)
    for (int64_t N : Ns)
      for (int64_t R : Rs)
        for (int s : sms) check_plan(M, N, R, s);

  // specific expectations
  {
    const LowRankPlan p = make_lowrank_plan(197, 768, 64, 132, 2);
    CHECK(p.grid_x == 4);
    CHECK(p.n_splits == 12);  // 12 N tiles, each its own split -> 48 blocks
    CHECK(p.n_per_split == 64);
  }
  {
    const LowRankPlan p = make_lowrank_plan(16384, 768, 256, 132, 2);
    CHECK(p.grid_x == 256);
    CHECK(p.n_splits == 1);  // 256 blocks ~ 2 waves already: no recompute of t
  }
  {
    const LowRankPlan p = make_lowrank_plan(1, 5, 1, 132, 4);
    CHECK(p.grid_x == 1 && p.n_splits == 1 && p.r_pad == 16);
  }
  {
    // 264 blocks wanted over 1 M tile, 47 N tiles: ceil(47/47)=1 tile per split
    const LowRankPlan p = make_lowrank_plan(64, 3000, 32, 132, 4);
    CHECK(p.n_splits == 47 && p.n_per_split == 64);
  }
  {
    // byte counts quoted in the comments
    CHECK(make_lowrank_plan(64, 64, 256, 132, 4).smem_bytes == 108032);
    CHECK(make_lowrank_plan(64, 64, 256, 132, 2).smem_bytes == 67584);
  }
  {
    const LowRankPlan p = make_lowrank_plan(0, 64, 16, 132, 4);
    CHECK(p.grid_x == 0 && p.n_splits == 0);
  }
}

// ------------------------------------------------------------------------------------------
// Host emulation of lowrank_fused_kernel
// ------------------------------------------------------------------------------------------
struct View {  // strided 2-D view into a host buffer
  const std::vector<float>* buf;
  int64_t offset, s0, s1;
  float at(int64_t i, int64_t j) const {
    const int64_t idx = offset + i * s0 + j * s1;
    if (idx < 0 || idx >= static_cast<int64_t>(buf->size())) {
      std::fprintf(stderr, "out-of-bounds global read\n");
      std::exit(1);
    }
    return (*buf)[static_cast<size_t>(idx)];
  }
};

struct Problem {
  int64_t M, K, N, R;
  View x, v, u;
  const std::vector<float>* bias;  // may be null
  int64_t bias_stride;
  std::vector<float>* y;
  int64_t y_offset, y_sm, y_sn;
};

struct Smem {  // float-typed model of the dynamic smem buffer; every access is bounds-checked
  std::vector<float> data;
  float& operator[](int64_t i) {
    if (i < 0 || i >= static_cast<int64_t>(data.size())) {
      std::fprintf(stderr, "out-of-bounds smem access %lld / %zu\n", static_cast<long long>(i),
                   data.size());
      std::exit(1);
    }
    return data[static_cast<size_t>(i)];
  }
};

// acc(16x16, row-major) += A(16x16 at a, row-major, lda) * B(16x16 at b, column-major, ldb):
// what wmma::load_matrix_sync(row_major / col_major) + mma_sync read.
static void frag_mma(float* acc, Smem& s, int64_t a, int lda, int64_t b, int ldb) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) {
      float sum = acc[r * 16 + c];
      for (int k = 0; k < 16; ++k) sum = std::fma(s[a + r * lda + k], s[b + c * ldb + k], sum);
      acc[r * 16 + c] = sum;
    }
}

// mma_path = true emulates the fp16/bf16 instantiation (wmma fragment mapping, elem_bytes = 2
// layout; data stays float here, so the rounding of t to T is not modelled), false the fp32 FMA
// instantiation.
static void emulate_kernel(const Problem& pb, const LowRankPlan& plan, bool mma_path,
                           std::vector<int>& write_count) {
  const int eb = mma_path ? 2 : 4;
  const LowRankSmemLayout L = make_lowrank_smem_layout(plan.r_pad, eb);
  const int64_t sT = static_cast<int64_t>(L.t_offset) / eb;  // element offsets
  const int64_t sX = static_cast<int64_t>(L.stage_offset) / eb;
  const int64_t sV = sX + kBlockM * L.ld_k;
  const int64_t sU = sX;
  const int r_pad = plan.r_pad;
  const int ld_t = L.ld_t, ld_k = L.ld_k, ld_u = L.ld_u;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Smem smem;

  for (int bx = 0; bx < plan.grid_x; ++bx) {
    for (int by = 0; by < plan.grid_y; ++by) {
      smem.data.assign(L.total_bytes / eb, nan);
      const int64_t m0 = static_cast<int64_t>(bx) * kBlockM;
      int64_t n_begin, n_end;
      lowrank_split_range(plan.n_per_split, pb.N, by, &n_begin, &n_end);
      if (n_begin >= n_end) continue;

      auto load_stage1 = [&](int64_t k0) {
        for (int tid = 0; tid < kThreads; ++tid) {
          for (int i = 0; i < kBlockM * kBlockK / kThreads; ++i) {
            const int e = tid + i * kThreads;
            const int row = e / kBlockK, col = e % kBlockK;
            const int64_t m = m0 + row, k = k0 + col;
            float val = 0.f;
            if (m < pb.M && k < pb.K) val = pb.x.at(m, k);
            smem[sX + row * ld_k + col] = val;
          }
          for (int i = 0; i < kMaxRank * kBlockK / kThreads; ++i) {
            const int e = tid + i * kThreads;
            const int row = e / kBlockK, col = e % kBlockK;
            if (row < r_pad) {
              const int64_t k = k0 + col;
              float val = 0.f;
              if (row < pb.R && k < pb.K) val = pb.v.at(row, k);
              smem[sV + row * ld_k + col] = val;
            }
          }
        }
      };
      auto load_stage2 = [&](int64_t n0, int r0) {
        for (int tid = 0; tid < kThreads; ++tid) {
          for (int i = 0; i < kBlockN * kBlockR / kThreads; ++i) {
            const int e = tid + i * kThreads;
            const int row = e / kBlockR, col = e % kBlockR;
            const int64_t n = n0 + row;
            const int r = r0 + col;
            float val = 0.f;
            if (n < n_end && r < pb.R) val = pb.u.at(n, r);
            smem[sU + row * ld_u + col] = val;
          }
        }
      };
      auto store_y = [&](int64_t m, int64_t n, float val) {
        if (m < pb.M && n < n_end) {
          if (pb.bias != nullptr) {
            const int64_t bi = n * pb.bias_stride;
            CHECK(bi >= 0 && bi < static_cast<int64_t>(pb.bias->size()));
            val += (*pb.bias)[static_cast<size_t>(bi)];
          }
          const int64_t idx = pb.y_offset + m * pb.y_sm + n * pb.y_sn;
          CHECK(idx >= 0 && idx < static_cast<int64_t>(pb.y->size()));
          (*pb.y)[static_cast<size_t>(idx)] = val;
          ++write_count[static_cast<size_t>(idx)];
        }
      };

      if (mma_path) {
        constexpr int kFragsPerWarp = (kBlockM / 16) * (kMaxRank / 16) / kWarps;
        const int r_tiles = r_pad / 16;
        std::vector<float> acc(static_cast<size_t>(kWarps) * kFragsPerWarp * 256, 0.f);
        for (int64_t k0 = 0; k0 < pb.K; k0 += kBlockK) {
          load_stage1(k0);
          for (int warp = 0; warp < kWarps; ++warp) {
            const int wm = warp % 4, wr = warp / 4;
            for (int kk = 0; kk < kBlockK; kk += 16)
              for (int i = 0; i < kFragsPerWarp; ++i) {
                const int j = wr + 2 * i;
                if (j < r_tiles)
                  frag_mma(&acc[(warp * kFragsPerWarp + i) * 256], smem, sX + (wm * 16) * ld_k + kk,
                           ld_k, sV + (j * 16) * ld_k + kk, ld_k);
              }
          }
        }
        for (int warp = 0; warp < kWarps; ++warp) {
          const int wm = warp % 4, wr = warp / 4;
          for (int i = 0; i < kFragsPerWarp; ++i) {
            const int j = wr + 2 * i;
            if (j < r_tiles)
              for (int e = 0; e < 256; ++e)
                smem[sT + (wm * 16 + e / 16) * ld_t + j * 16 + e % 16] =
                    acc[(warp * kFragsPerWarp + i) * 256 + e];
          }
        }
        for (int64_t n0 = n_begin; n0 < n_end; n0 += kBlockN) {
          std::vector<float> yacc(static_cast<size_t>(kWarps) * 2 * 256, 0.f);
          for (int r0 = 0; r0 < r_pad; r0 += kBlockR) {
            load_stage2(n0, r0);
            for (int warp = 0; warp < kWarps; ++warp) {
              const int wm = warp % 4, wn = 2 * (warp / 4);
              for (int kk = 0; kk < kBlockR; kk += 16)
                if (r0 + kk < r_pad)
                  for (int f = 0; f < 2; ++f)
                    frag_mma(&yacc[(warp * 2 + f) * 256], smem, sT + (wm * 16) * ld_t + r0 + kk,
                             ld_t, sU + ((wn + f) * 16) * ld_u + kk, ld_u);
            }
          }
          for (int warp = 0; warp < kWarps; ++warp) {
            const int wm = warp % 4, wn = 2 * (warp / 4);
            for (int f = 0; f < 2; ++f)
              for (int e = 0; e < 256; ++e)
                store_y(m0 + wm * 16 + e / 16, n0 + (wn + f) * 16 + e % 16,
                        yacc[(warp * 2 + f) * 256 + e]);
          }
        }
      } else {
        constexpr int kRows = kBlockM / 16, kTCols = kMaxRank / 16, kYCols = kBlockN / 16;
        std::vector<float> acc(static_cast<size_t>(kThreads) * kRows * kTCols, 0.f);
        for (int64_t k0 = 0; k0 < pb.K; k0 += kBlockK) {
          load_stage1(k0);
          for (int tid = 0; tid < kThreads; ++tid) {
            const int tx = tid % 16, ty = tid / 16;
            float* a_acc = &acc[static_cast<size_t>(tid) * kRows * kTCols];
            for (int kk = 0; kk < kBlockK; ++kk)
              for (int j = 0; j < kTCols; ++j)
                if (16 * j < r_pad) {
                  const float b = smem[sV + (tx + 16 * j) * ld_k + kk];
                  for (int i = 0; i < kRows; ++i)
                    a_acc[i * kTCols + j] =
                        std::fma(smem[sX + (ty + 16 * i) * ld_k + kk], b, a_acc[i * kTCols + j]);
                }
          }
        }
        for (int tid = 0; tid < kThreads; ++tid) {
          const int tx = tid % 16, ty = tid / 16;
          for (int i = 0; i < kRows; ++i)
            for (int j = 0; j < kTCols; ++j)
              if (16 * j < r_pad)
                smem[sT + (ty + 16 * i) * ld_t + tx + 16 * j] =
                    acc[static_cast<size_t>(tid) * kRows * kTCols + i * kTCols + j];
        }
        for (int64_t n0 = n_begin; n0 < n_end; n0 += kBlockN) {
          std::vector<float> yacc(static_cast<size_t>(kThreads) * kRows * kYCols, 0.f);
          for (int r0 = 0; r0 < r_pad; r0 += kBlockR) {
            load_stage2(n0, r0);
            const int kk_end = (r_pad - r0) < kBlockR ? (r_pad - r0) : kBlockR;
            for (int tid = 0; tid < kThreads; ++tid) {
              const int tx = tid % 16, ty = tid / 16;
              float* ya = &yacc[static_cast<size_t>(tid) * kRows * kYCols];
              for (int kk = 0; kk < kk_end; ++kk)
                for (int i = 0; i < kRows; ++i)
                  for (int j = 0; j < kYCols; ++j)
                    ya[i * kYCols + j] =
                        std::fma(smem[sT + (ty + 16 * i) * ld_t + r0 + kk],
                                 smem[sU + (tx + 16 * j) * ld_u + kk], ya[i * kYCols + j]);
            }
          }
          for (int tid = 0; tid < kThreads; ++tid) {
            const int tx = tid % 16, ty = tid / 16;
            for (int i = 0; i < kRows; ++i)
              for (int j = 0; j < kYCols; ++j)
                store_y(m0 + ty + 16 * i, n0 + tx + 16 * j,
                        yacc[static_cast<size_t>(tid) * kRows * kYCols + i * kYCols + j]);
          }
        }
      }
    }
  }
}

// Builds strided, sliced operands (NaN outside the logical views), runs the emulation for both
// instantiation flavours and compares with a naive double-precision reference.
static void test_emulation(int64_t M, int64_t K, int64_t N, int64_t R, int num_sms, bool bias,
                           int layout, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t Rfull = R + 3, Nfull = N + 2, Kfull = K + 5;
  // x: (M, K) column slice of an (M, Kfull) row-major buffer, offset 2 columns.
  std::vector<float> xb(static_cast<size_t>(M * Kfull + 8), nan);
  View x{&xb, 2, Kfull, 1};
  // v: layout 0 -> row-major (Rfull, K); layout 1 -> column slice of (Rfull, Kfull), i.e.
  // stride_k = 1, stride_r = Kfull > K; layout 2 -> transposed storage (stride_r = 1).
  std::vector<float> vb(static_cast<size_t>(Rfull * Kfull + 8), nan);
  View v = layout == 0   ? View{&vb, 0, K, 1}
           : layout == 1 ? View{&vb, 1, Kfull, 1}
                         : View{&vb, 0, 1, Rfull};
  // u: (N, R) slice of an (Nfull, Rfull) buffer; layout 2 -> transposed (stride_n = 1).
  std::vector<float> ub(static_cast<size_t>(Nfull * Rfull + 8), nan);
  View u = layout == 2 ? View{&ub, 0, 1, Nfull} : View{&ub, 1, Rfull, 1};
  std::vector<float> bb(static_cast<size_t>(2 * N + 2), nan);

  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k)
      xb[static_cast<size_t>(x.offset + m * x.s0 + k * x.s1)] = dist(rng);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k)
      vb[static_cast<size_t>(v.offset + r * v.s0 + k * v.s1)] = dist(rng);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t r = 0; r < R; ++r)
      ub[static_cast<size_t>(u.offset + n * u.s0 + r * u.s1)] = dist(rng);
  for (int64_t n = 0; n < N; ++n) bb[static_cast<size_t>(2 * n)] = dist(rng);

  // reference in double
  std::vector<double> ref(static_cast<size_t>(M * N), 0.0);
  double ref_max = 0.0;
  for (int64_t m = 0; m < M; ++m) {
    std::vector<double> t(static_cast<size_t>(R), 0.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k < K; ++k) t[r] += static_cast<double>(x.at(m, k)) * v.at(r, k);
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? bb[static_cast<size_t>(2 * n)] : 0.0;
      for (int64_t r = 0; r < R; ++r) s += t[r] * u.at(n, r);
      ref[static_cast<size_t>(m * N + n)] = s;
      ref_max = std::fmax(ref_max, std::fabs(s));
    }
  }

  for (bool mma : {false, true}) {
    const LowRankPlan plan = make_lowrank_plan(M, N, R, num_sms, mma ? 2 : 4);
    // y: (M, N) column-major inside an (N + 3) x M buffer with an offset (y_sm = 1).
    const int64_t y_sn = M + 3, y_off = 1;
    const float sentinel = -12345.f;
    std::vector<float> yb(static_cast<size_t>(y_off + N * y_sn + 4), sentinel);
    std::vector<int> writes(yb.size(), 0);
    Problem pb{M, K, N, R, x, v, u, bias ? &bb : nullptr, 2, &yb, y_off, 1, y_sn};
    emulate_kernel(pb, plan, mma, writes);

    double max_err = 0.0;
    size_t written_inside = 0;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const size_t idx = static_cast<size_t>(y_off + m + n * y_sn);
        CHECK(writes[idx] == 1);
        written_inside += writes[idx];
        const double err = std::fabs(yb[idx] - ref[static_cast<size_t>(m * N + n)]);
        if (!(err <= max_err)) max_err = std::isnan(err) ? INFINITY : err;
      }
    size_t written_total = 0;
    for (int w : writes) written_total += static_cast<size_t>(w);
    CHECK(written_total == written_inside);  // no writes into padding
    const double rel = max_err / (ref_max > 0 ? ref_max : 1.0);
    std::printf(
        "emulate %-4s M=%-4lld K=%-4lld N=%-4lld R=%-3lld sms=%-3d bias=%d layout=%d "
        "grid=%dx%d r_pad=%d rel_err=%.2e\n",
        mma ? "mma" : "fma", static_cast<long long>(M), static_cast<long long>(K),
        static_cast<long long>(N), static_cast<long long>(R), num_sms, bias ? 1 : 0, layout,
        plan.grid_x, plan.grid_y, plan.r_pad, rel);
    CHECK(rel < 1e-5);
  }
}

int main() {
  test_plans();
  std::printf("plan checks done, failures so far: %d\n", g_failures);

  struct Case {
    int64_t M, K, N, R;
    int sms;
    bool bias;
    int layout;
  };
  const Case cases[] = {
      {1, 13, 5, 1, 132, true, 0},       // M=1, N=5, K=13, R=1
      {197, 45, 77, 48, 132, true, 1},   // ViT-like M, many splits, v column slice
      {65, 33, 130, 17, 4, false, 2},    // transposed v/u (stride_r = 1 / stride_n = 1), R = 17
      {70, 40, 200, 40, 2, true, 1},     // several N tiles per split; r_pad = 48 (half chunk)
      {3, 0, 7, 5, 132, true, 0},        // K = 0 -> y = bias
      {130, 37, 70, 256, 132, true, 1},  // R = kMaxFusedRank, 3 M tiles
      {5, 70, 5, 255, 1, false, 2},      // R = 255, single SM
      {64, 32, 64, 16, 1, true, 0},      // exact tiles
      {129, 97, 129, 100, 3, true, 1},   // everything off by one
  };
  uint32_t seed = 1;
  for (const Case& c : cases) test_emulation(c.M, c.K, c.N, c.R, c.sms, c.bias, c.layout, seed++);

  if (g_failures != 0) {
    std::fprintf(stderr, "FAILED: %d check(s)\n", g_failures);
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
