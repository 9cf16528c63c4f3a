// Soft-DTW dynamic programme on the CPU (float64), compiled lazily by fairseq_plugins/losses/soft_dtw.py.
//
// Layout: items are processed in groups of G "lanes" (G = 1, 2, 4 or 8 items of the batch). S consecutive
// rows (S = 16, 8, 8, 4 for G = 1, 2, 4, 8) are swept together along their anti-diagonals (row i0 + s is
// at column t - s at step t): the S x G cells of a step are independent, so they are gathered into small
// arrays and computed in one SIMD loop. A single row would be latency-bound (each cell waits on the exp/log
// of its left neighbour); the S x G independent cells keep the vector units busy instead. Groups run in
// parallel (at::parallel_for); small problems stay on the calling thread.
//
// The forward stores, for every cell, the three soft-min weights (the local softmax probabilities of the
// diagonal, upper and left predecessor) in float64. The backward runs the recursion
//   E_ij = E_{i+1,j+1} w_diag(i+1,j+1) + E_{i+1,j} w_up(i+1,j) + E_{i,j+1} w_left(i,j+1)
// with those weights, so the expected alignment E = dR_nm / dC is exact (no differences of large sums).
//
// exp and log are evaluated by branch-free polynomials (double precision, ~1 ulp on the ranges used here) so
// that the lane loop vectorises without -ffast-math.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr double kBig = 1e200;  // "unreachable" marker: finite so that no inf - inf can appear

#define SDTW_INLINE inline __attribute__((always_inline))

// exp(x) for x <= 0; returns 0 below -708.
static SDTW_INLINE double exp_nonpos(double x) {
  const double xc = x < -708.0 ? -708.0 : x;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer in the low bits
  const double t = xc * 1.4426950408889634 + shifter;
  const double k = t - shifter;
  double r = xc - k * 0.693147180369123816490;  // ln2 high part (exact product for |k| < 2^11)
  r = r - k * 1.90821492927058770002e-10;       // ln2 low part
  // Taylor polynomial of degree 12 on |r| <= ln2 / 2, Estrin scheme (short dependency chain)
  const double r2 = r * r;
  const double r4 = r2 * r2;
  const double r8 = r4 * r4;
  const double p01 = 1.0 + r;
  const double p23 = 0.5 + r * (1.0 / 6.0);
  const double p45 = (1.0 / 24.0) + r * (1.0 / 120.0);
  const double p67 = (1.0 / 720.0) + r * (1.0 / 5040.0);
  const double p89 = (1.0 / 40320.0) + r * (1.0 / 362880.0);
  const double p1011 = (1.0 / 3628800.0) + r * (1.0 / 39916800.0);
  const double p12 = 1.0 / 479001600.0;
  const double q0 = p01 + r2 * p23;
  const double q1 = p45 + r2 * p67;
  const double q2 = p89 + r2 * p1011;
  const double s0 = q0 + r4 * q1;
  const double s1 = q2 + r4 * p12;
  const double p = s0 + r8 * s1;
  const int64_t ki = std::bit_cast<int64_t>(t) - std::bit_cast<int64_t>(shifter);
  const double scale = std::bit_cast<double>((ki + 1023) << 52);
  return x < -708.0 ? 0.0 : p * scale;
}

// log(s) for s in [1, 3] (a sum of three exponentials of which the largest is exactly 1).
static SDTW_INLINE double log_1_3(double s) {
  const double sqrt2 = 1.4142135623730951;
  const bool hi1 = s > sqrt2;
  const bool hi2 = s > 2.0 * sqrt2;
  const double kd = (hi1 ? 1.0 : 0.0) + (hi2 ? 1.0 : 0.0);
  const double f = s * (hi2 ? 0.25 : (hi1 ? 0.5 : 1.0));  // in [1/sqrt2, sqrt2]
  const double u = (f - 1.0) / (f + 1.0);                   // |u| <= 0.1716
  const double z = u * u;
  const double z2 = z * z;
  const double z4 = z2 * z2;
  const double z8 = z4 * z4;
  // 2 atanh(u) = 2u sum_n z^n / (2n + 1), n = 0..9
  const double a01 = 1.0 + z * (1.0 / 3.0);
  const double a23 = (1.0 / 5.0) + z * (1.0 / 7.0);
  const double a45 = (1.0 / 9.0) + z * (1.0 / 11.0);
  const double a67 = (1.0 / 13.0) + z * (1.0 / 15.0);
  const double a89 = (1.0 / 17.0) + z * (1.0 / 19.0);
  const double b0 = a01 + z2 * a23;
  const double b1 = a45 + z2 * a67;
  const double c0 = b0 + z4 * b1;
  const double poly = c0 + z8 * a89;
  return kd * 0.693147180369123816490 + ((2.0 * u) * poly + kd * 1.90821492927058770002e-10);
}

struct GroupInfo {
  int64_t b0;   // first item of the group
  int64_t nb;   // number of real items (<= G)
  int64_t Ng;   // largest x length in the group
  int64_t Mg;   // largest y length in the group
  int64_t off;  // offset of the group's weights in the workspace
};

std::vector<GroupInfo> make_groups(const int64_t* xl, const int64_t* yl, int64_t B, int64_t G) {
  std::vector<GroupInfo> groups;
  int64_t off = 0;
  for (int64_t b0 = 0; b0 < B; b0 += G) {
    GroupInfo g{b0, std::min<int64_t>(G, B - b0), 0, 0, off};
    for (int64_t l = 0; l < g.nb; ++l) {
      g.Ng = std::max(g.Ng, xl[b0 + l]);
      g.Mg = std::max(g.Mg, yl[b0 + l]);
    }
    off += (g.Ng + 1) * (g.Mg + 1) * 3 * G;
    groups.push_back(g);
  }
  return groups;
}

// Small problems run on the calling thread: waking the pool costs more than it saves, and on a loaded
// machine a parallel region waits for a descheduled worker.
constexpr int64_t kParallelCells = 1 << 18;  // ~2 ms of DP

int64_t grain_size(const std::vector<GroupInfo>& groups, int64_t G) {
  int64_t cells = 0;
  for (const auto& g : groups) cells += g.Ng * g.Mg * G;
  return cells < kParallelCells ? static_cast<int64_t>(groups.size()) + 1 : 1;  // range < grain: inline
}

int64_t workspace_size(const std::vector<GroupInfo>& groups, int64_t G) {
  int64_t total = 0;
  for (const auto& g : groups) total += (g.Ng + 1) * (g.Mg + 1) * 3 * G;
  return total;
}

// ----------------------------------------------------------------------------------------------------------
// forward
// ----------------------------------------------------------------------------------------------------------
template <typename scalar_t, int G, int S, bool kStore>
void forward_group(const scalar_t* C, int64_t N, int64_t M, const GroupInfo& g, const int64_t* xl,
                   const int64_t* yl, double gamma, double band2, double* W, double* Rend) {
  const int64_t Ng = g.Ng, Mg = g.Mg, nb = g.nb, b0 = g.b0;
  const int64_t rs = (Mg + 1) * G;  // row stride of the R buffer
  std::vector<double> Rb((S + 1) * rs);
  std::vector<double> Cp(S * Mg * G);
  const double ig = 1.0 / gamma;
  double* Wg = kStore ? W + g.off : nullptr;
  const int64_t wrs = (Mg + 1) * 3 * G;  // row stride of the weights
  // per step: the S x G cells of the strip are gathered into these, computed in one SIMD loop, scattered back
  alignas(64) double va[S * G], vb[S * G], vc[S * G], vcost[S * G];
  alignas(64) double vr[S * G], w0[S * G], w1[S * G], w2[S * G];

  for (int64_t j = 0; j <= Mg; ++j)
    for (int l = 0; l < G; ++l) Rb[j * G + l] = (j == 0) ? 0.0 : kBig;
  if (kStore) {
    // zero weights on the padding row Ng and column Mg (read as "successors" by the backward)
    std::fill(Wg + Ng * wrs, Wg + (Ng + 1) * wrs, 0.0);
    for (int64_t i = 0; i < Ng; ++i) std::fill(Wg + i * wrs + Mg * 3 * G, Wg + (i + 1) * wrs, 0.0);
  }

  for (int64_t i0 = 0; i0 < Ng; i0 += S) {
    const int rows = static_cast<int>(std::min<int64_t>(S, Ng - i0));
    // pack the costs of the strip lane-interleaved, with the band applied
    for (int l = 0; l < G; ++l) {
      if (l >= nb) {
        for (int s = 0; s < rows; ++s)
          for (int64_t j = 0; j < Mg; ++j) Cp[(s * Mg + j) * G + l] = 0.0;
        continue;
      }
      const int64_t b = b0 + l;
      const int64_t n = xl[b], m = yl[b];
      const double nm = static_cast<double>(n * m);
      const double mn = static_cast<double>(std::min(n, m));
      for (int s = 0; s < rows; ++s) {
        const int64_t i = i0 + s;
        const scalar_t* src = C + (b * N + i) * M;
        double* dst = &Cp[s * Mg * G + l];
        if (band2 >= 0.0) {
          for (int64_t j = 0; j < Mg; ++j) {
            const double c = static_cast<double>(src[j]);
            const double dev = std::fabs(static_cast<double>((2 * i + 1) * m - (2 * j + 1) * n)) * mn;
            dst[j * G] = dev > band2 * nm ? kBig : (c > 0.0 ? c : 0.0);
          }
        } else {
          for (int64_t j = 0; j < Mg; ++j) {
            const double c = static_cast<double>(src[j]);
            dst[j * G] = c > 0.0 ? c : 0.0;
          }
        }
      }
    }
    for (int s = 1; s <= rows; ++s)
      for (int l = 0; l < G; ++l) Rb[s * rs + l] = kBig;
    for (int q = 0; q < S * G; ++q) {
      va[q] = vb[q] = vc[q] = vcost[q] = 0.0;
    }

    const int64_t steps = Mg + rows - 1;
    for (int64_t t = 0; t < steps; ++t) {
      const int s_lo = static_cast<int>(std::max<int64_t>(0, t - Mg + 1));
      const int s_hi = static_cast<int>(std::min<int64_t>(rows - 1, t));
      for (int s = s_lo; s <= s_hi; ++s) {
        const int64_t j = t - s;
        const double* diag = &Rb[s * rs + j * G];
        const double* left = &Rb[(s + 1) * rs + j * G];
        const double* c = &Cp[(s * Mg + j) * G];
        for (int l = 0; l < G; ++l) {
          va[s * G + l] = diag[l];
          vb[s * G + l] = diag[G + l];
          vc[s * G + l] = left[l];
          vcost[s * G + l] = c[l];
        }
      }
#pragma omp simd
      for (int q = 0; q < S * G; ++q) {
        const double a = va[q], bu = vb[q], cl = vc[q];
        const double mi = std::min(a, std::min(bu, cl));
        const double ea = exp_nonpos((mi - a) * ig);
        const double eb = exp_nonpos((mi - bu) * ig);
        const double ec = exp_nonpos((mi - cl) * ig);
        const double sum = ea + eb + ec;
        const double inv = 1.0 / sum;
        const double r = vcost[q] + (mi - gamma * log_1_3(sum));
        vr[q] = r < kBig ? r : kBig;
        w0[q] = ea * inv;
        w1[q] = eb * inv;
        w2[q] = ec * inv;
      }
      for (int s = s_lo; s <= s_hi; ++s) {
        const int64_t j = t - s;
        double* out = &Rb[(s + 1) * rs + (j + 1) * G];
        for (int l = 0; l < G; ++l) out[l] = vr[s * G + l];
        if (kStore) {
          double* w = Wg + (i0 + s) * wrs + j * 3 * G;
          for (int l = 0; l < G; ++l) {
            w[l] = w0[s * G + l];
            w[G + l] = w1[s * G + l];
            w[2 * G + l] = w2[s * G + l];
          }
        }
      }
    }
    // read the final values of the items that end in this strip
    for (int s = 0; s < rows; ++s)
      for (int64_t l = 0; l < nb; ++l)
        if (xl[b0 + l] - 1 == i0 + s) Rend[b0 + l] = Rb[(s + 1) * rs + yl[b0 + l] * G + l];
    std::memcpy(Rb.data(), Rb.data() + rows * rs, rs * sizeof(double));
  }
}

// ----------------------------------------------------------------------------------------------------------
// backward (expected alignment)
// ----------------------------------------------------------------------------------------------------------
template <typename out_t, int G>
void backward_group(const double* W, int64_t N, int64_t M, const GroupInfo& g, const int64_t* xl,
                    const int64_t* yl, const double* grad, out_t* E) {
  constexpr int kStrip = 4;
  const int64_t Ng = g.Ng, Mg = g.Mg, nb = g.nb, b0 = g.b0;
  const int64_t rs = (Mg + 1) * G;
  const double* Wg = W + g.off;
  const int64_t wrs = (Mg + 1) * 3 * G;
  // Eb[s][jj]: jj = Mg - j (jj = 0 is the zero column j = Mg); row 0 = the row below the strip
  std::vector<double> Eb((kStrip + 1) * rs, 0.0);
  alignas(64) int64_t seed_i[G], seed_j[G];
  alignas(64) double seed_g[G];
  for (int l = 0; l < G; ++l) {
    if (l < nb) {
      seed_i[l] = xl[b0 + l] - 1;
      seed_j[l] = yl[b0 + l] - 1;
      seed_g[l] = grad[b0 + l];
    } else {
      seed_i[l] = -1;
      seed_j[l] = -1;
      seed_g[l] = 0.0;
    }
  }
  // rows past the group's extent are zero
  for (int64_t l = 0; l < nb; ++l) {
    out_t* dst = E + (b0 + l) * N * M;
    std::fill(dst + Ng * M, dst + N * M, out_t(0));
  }

  for (int64_t ii0 = 0; ii0 < Ng; ii0 += kStrip) {
    const int rows = static_cast<int>(std::min<int64_t>(kStrip, Ng - ii0));
    for (int s = 1; s <= rows; ++s)
      for (int l = 0; l < G; ++l) Eb[s * rs + l] = 0.0;
    const int64_t steps = Mg + rows - 1;
    for (int64_t t = 0; t < steps; ++t) {
      for (int s = 0; s < kStrip; ++s) {
        const int64_t jj = t - s;
        if (s >= rows || jj < 0 || jj >= Mg) continue;
        const int64_t i = Ng - 1 - (ii0 + s);
        const int64_t j = Mg - 1 - jj;
        const double* e_diag = &Eb[s * rs + jj * G];  // (i+1, j+1)
        const double* e_up = e_diag + G;              // (i+1, j)
        const double* e_left = &Eb[(s + 1) * rs + jj * G];  // (i, j+1)
        double* out = &Eb[(s + 1) * rs + (jj + 1) * G];
        const double* w_diag = Wg + (i + 1) * wrs + (j + 1) * 3 * G;
        const double* w_up = Wg + (i + 1) * wrs + j * 3 * G + G;
        const double* w_left = Wg + i * wrs + (j + 1) * 3 * G + 2 * G;
#pragma omp simd
        for (int l = 0; l < G; ++l) {
          const double seed = (seed_i[l] == i && seed_j[l] == j) ? seed_g[l] : 0.0;
          out[l] = e_diag[l] * w_diag[l] + e_up[l] * w_up[l] + e_left[l] * w_left[l] + seed;
        }
      }
    }
    // unpack the strip into E (B x N x M)
    for (int s = 0; s < rows; ++s) {
      const int64_t i = Ng - 1 - (ii0 + s);
      for (int64_t l = 0; l < nb; ++l) {
        out_t* dst = E + ((b0 + l) * N + i) * M;
        const double* src = &Eb[(s + 1) * rs + l];
        for (int64_t j = 0; j < Mg; ++j) dst[j] = static_cast<out_t>(src[(Mg - j) * G]);
        std::fill(dst + Mg, dst + M, out_t(0));
      }
    }
    std::memcpy(Eb.data(), Eb.data() + rows * rs, rs * sizeof(double));
  }
}

void check_lengths(const at::Tensor& xl, const at::Tensor& yl, int64_t B, int64_t N, int64_t M) {
  TORCH_CHECK(xl.device().is_cpu() && yl.device().is_cpu(), "sdtw_cpu: lengths must be CPU tensors");
  TORCH_CHECK(xl.scalar_type() == at::kLong && yl.scalar_type() == at::kLong,
              "sdtw_cpu: lengths must be int64");
  TORCH_CHECK(xl.is_contiguous() && yl.is_contiguous(), "sdtw_cpu: lengths must be contiguous");
  TORCH_CHECK(xl.numel() == B && yl.numel() == B, "sdtw_cpu: lengths must have B entries");
  const int64_t* px = xl.data_ptr<int64_t>();
  const int64_t* py = yl.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(px[b] >= 1 && px[b] <= N, "sdtw_cpu: x length out of range for item ", b);
    TORCH_CHECK(py[b] >= 1 && py[b] <= M, "sdtw_cpu: y length out of range for item ", b);
  }
}

template <typename scalar_t>
void forward_dispatch(const scalar_t* C, int64_t N, int64_t M, const std::vector<GroupInfo>& groups,
                      int64_t G, const int64_t* xl, const int64_t* yl, double gamma, double band2, double* W,
                      double* Rend) {
  const int64_t grain = grain_size(groups, G);
  at::parallel_for(0, static_cast<int64_t>(groups.size()), grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const GroupInfo& g = groups[k];
      if (W != nullptr) {
        switch (G) {
          case 1: forward_group<scalar_t, 1, 16, true>(C, N, M, g, xl, yl, gamma, band2, W, Rend); break;
          case 2: forward_group<scalar_t, 2, 8, true>(C, N, M, g, xl, yl, gamma, band2, W, Rend); break;
          case 4: forward_group<scalar_t, 4, 8, true>(C, N, M, g, xl, yl, gamma, band2, W, Rend); break;
          default: forward_group<scalar_t, 8, 4, true>(C, N, M, g, xl, yl, gamma, band2, W, Rend); break;
        }
      } else {
        switch (G) {
          case 1: forward_group<scalar_t, 1, 16, false>(C, N, M, g, xl, yl, gamma, band2, W, Rend); break;
          case 2: forward_group<scalar_t, 2, 8, false>(C, N, M, g, xl, yl, gamma, band2, W, Rend); break;
          case 4: forward_group<scalar_t, 4, 8, false>(C, N, M, g, xl, yl, gamma, band2, W, Rend); break;
          default: forward_group<scalar_t, 8, 4, false>(C, N, M, g, xl, yl, gamma, band2, W, Rend); break;
        }
      }
    }
  });
}

template <typename out_t>
void backward_dispatch(const double* W, int64_t N, int64_t M, const std::vector<GroupInfo>& groups, int64_t G,
                       const int64_t* xl, const int64_t* yl, const double* grad, out_t* E) {
  const int64_t grain = grain_size(groups, G);
  at::parallel_for(0, static_cast<int64_t>(groups.size()), grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const GroupInfo& g = groups[k];
      switch (G) {
        case 1: backward_group<out_t, 1>(W, N, M, g, xl, yl, grad, E); break;
        case 2: backward_group<out_t, 2>(W, N, M, g, xl, yl, grad, E); break;
        case 4: backward_group<out_t, 4>(W, N, M, g, xl, yl, grad, E); break;
        default: backward_group<out_t, 8>(W, N, M, g, xl, yl, grad, E); break;
      }
    }
  });
}

// Number of float64 entries of the weight workspace for these lengths and lanes.
int64_t sdtw_workspace_size(const at::Tensor& xl, const at::Tensor& yl, int64_t G) {
  TORCH_CHECK(xl.numel() == yl.numel(), "sdtw_cpu: x_lengths and y_lengths differ in size");
  check_lengths(xl, yl, xl.numel(), INT64_MAX, INT64_MAX);
  return workspace_size(make_groups(xl.data_ptr<int64_t>(), yl.data_ptr<int64_t>(), xl.numel(), G), G);
}

// C: B x N x M (float32 or float64, contiguous); lengths: int64 [B]; band < 0 means no band.
// W: float64 buffer of at least sdtw_workspace_size entries that receives the soft-min weights, or an empty
// tensor (value only, nothing stored). Returns R_end: float64 [B].
at::Tensor sdtw_forward(const at::Tensor& C, const at::Tensor& xl, const at::Tensor& yl, double gamma,
                        double band, int64_t G, const at::Tensor& W) {
  TORCH_CHECK(C.device().is_cpu() && C.dim() == 3 && C.is_contiguous(), "sdtw_cpu: C must be a contiguous "
              "CPU tensor B x N x M");
  TORCH_CHECK(C.scalar_type() == at::kFloat || C.scalar_type() == at::kDouble,
              "sdtw_cpu: C must be float32/64");
  TORCH_CHECK(G == 1 || G == 2 || G == 4 || G == 8, "sdtw_cpu: lanes must be 1, 2, 4 or 8");
  TORCH_CHECK(gamma > 0, "sdtw_cpu: gamma must be > 0");
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  check_lengths(xl, yl, B, N, M);
  const int64_t* px = xl.data_ptr<int64_t>();
  const int64_t* py = yl.data_ptr<int64_t>();
  const auto groups = make_groups(px, py, B, G);
  double* pw = nullptr;
  if (W.numel() > 0) {
    TORCH_CHECK(W.device().is_cpu() && W.scalar_type() == at::kDouble && W.is_contiguous(),
                "sdtw_cpu: W must be a contiguous float64 CPU tensor");
    TORCH_CHECK(W.numel() >= workspace_size(groups, G), "sdtw_cpu: W is too small");
    pw = W.data_ptr<double>();
  }
  auto Rend = at::empty({B}, C.options().dtype(at::kDouble));
  const double band2 = band < 0 ? -1.0 : 2.0 * band;
  if (C.scalar_type() == at::kFloat) {
    forward_dispatch<float>(C.data_ptr<float>(), N, M, groups, G, px, py, gamma, band2, pw,
                            Rend.data_ptr<double>());
  } else {
    forward_dispatch<double>(C.data_ptr<double>(), N, M, groups, G, px, py, gamma, band2, pw,
                             Rend.data_ptr<double>());
  }
  return Rend;
}

// Returns E = grad * dR_end / dC, B x N x M, float64 if out_double else float32.
at::Tensor sdtw_backward(const at::Tensor& W, const at::Tensor& xl, const at::Tensor& yl,
                         const at::Tensor& grad, int64_t N, int64_t M, int64_t G, bool out_double) {
  TORCH_CHECK(W.device().is_cpu() && W.scalar_type() == at::kDouble && W.is_contiguous(), "sdtw_cpu: bad W");
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == at::kDouble && grad.is_contiguous(),
              "sdtw_cpu: grad must be a contiguous float64 CPU tensor");
  const int64_t B = grad.numel();
  check_lengths(xl, yl, B, N, M);
  const int64_t* px = xl.data_ptr<int64_t>();
  const int64_t* py = yl.data_ptr<int64_t>();
  const auto groups = make_groups(px, py, B, G);
  TORCH_CHECK(W.numel() >= workspace_size(groups, G), "sdtw_cpu: workspace does not match lengths / lanes");
  auto E = at::empty({B, N, M}, W.options().dtype(out_double ? at::kDouble : at::kFloat));
  if (out_double) {
    backward_dispatch<double>(W.data_ptr<double>(), N, M, groups, G, px, py, grad.data_ptr<double>(),
                              E.data_ptr<double>());
  } else {
    backward_dispatch<float>(W.data_ptr<double>(), N, M, groups, G, px, py, grad.data_ptr<double>(),
                             E.data_ptr<float>());
  }
  return E;
}

}  // namespace

TORCH_LIBRARY(fairseq_plugins_sdtw, m) {
  m.def("workspace_size(Tensor x_lengths, Tensor y_lengths, int lanes) -> int", &sdtw_workspace_size);
  m.def("forward(Tensor C, Tensor x_lengths, Tensor y_lengths, float gamma, float band, int lanes, Tensor W) "
        "-> Tensor",
        &sdtw_forward);
  m.def("backward(Tensor W, Tensor x_lengths, Tensor y_lengths, Tensor grad, int N, int M, int lanes, "
        "bool out_double) -> Tensor",
        &sdtw_backward);
}
