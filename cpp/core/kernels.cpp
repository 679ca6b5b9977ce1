#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

// This file is compiled with -ffast-math (see CMakeLists.txt) so that the exponentials and
// the reductions below vectorise. Every output is still computed by one thread in a fixed
// order, so results do not depend on the number of threads.

namespace otfgp {
namespace {

// Accumulators for one row of H: E0, U0, E1[D], U1[D], S2[D] (see contract()).
template <int D>
constexpr int kStride = 2 + 3 * D;

// Sums over the clusters of one type range of H and over the allowed permutations:
//   E0 = sum e b0, U0 = sum e u, E1_k = sum e delta_k b0, U1_k = sum e delta_k u,
//   S2_k = sum e (P b)_k,  with delta = d - P d', u = (P b) . delta, e = exp(-|delta|^2/2l^2)
// and, for the length-scale derivative, the same sums weighted by |delta|^2.
template <int D, bool GRAD>
void accumulate(const double* d, const KernelBlock& H, const KernelBlock::Range& range,
                double ell, double* acc, double* accq, std::vector<double>& scratch) {
  constexpr int S = kStride<D>;
  const int rows = H.rows;
  const std::size_t m = static_cast<std::size_t>(range.end - range.begin);
  const std::size_t stride = H.packed_stride() * m;
  scratch.resize((D + 2) * m);
  double* __restrict e = scratch.data();
  double* __restrict eq = e + m;
  double* __restrict delta = eq + m;  // delta[k * m + i]
  const double inv2l2 = 0.5 / (ell * ell);
  for (int p = 0; p < range.perms.n; ++p) {
    const double* __restrict base = H.packed.data() + range.packed + p * stride;
    for (std::size_t i = 0; i < m; ++i) {
      double q = 0.0;
      for (int k = 0; k < D; ++k) {
        const double dk = d[k] - base[k * m + i];
        delta[k * m + i] = dk;
        q += dk * dk;
      }
      e[i] = std::exp(-q * inv2l2);
      eq[i] = e[i] * q;
    }
    for (int r = 0; r < rows; ++r) {
      const double* __restrict b0 = base + (D + r * (1 + D)) * m;
      const double* __restrict bk = b0 + m;
      double E0 = 0, U0 = 0, E1[D] = {}, U1[D] = {}, S2[D] = {};
      double QE0 = 0, QU0 = 0, QE1[D] = {}, QU1[D] = {}, QS2[D] = {};
      for (std::size_t i = 0; i < m; ++i) {
        double u = 0.0;
        for (int k = 0; k < D; ++k) u += bk[k * m + i] * delta[k * m + i];
        const double eb0 = e[i] * b0[i], eu = e[i] * u;
        E0 += eb0;
        U0 += eu;
        for (int k = 0; k < D; ++k) {
          E1[k] += delta[k * m + i] * eb0;
          U1[k] += delta[k * m + i] * eu;
          S2[k] += e[i] * bk[k * m + i];
        }
        if constexpr (GRAD) {
          const double qb0 = eq[i] * b0[i], qu = eq[i] * u;
          QE0 += qb0;
          QU0 += qu;
          for (int k = 0; k < D; ++k) {
            QE1[k] += delta[k * m + i] * qb0;
            QU1[k] += delta[k * m + i] * qu;
            QS2[k] += eq[i] * bk[k * m + i];
          }
        }
      }
      double* A = acc + r * S;
      A[0] += E0;
      A[1] += U0;
      for (int k = 0; k < D; ++k) {
        A[2 + k] += E1[k];
        A[2 + D + k] += U1[k];
        A[2 + 2 * D + k] += S2[k];
      }
      if constexpr (GRAD) {
        double* Q = accq + r * S;
        Q[0] += QE0;
        Q[1] += QU0;
        for (int k = 0; k < D; ++k) {
          Q[2 + k] += QE1[k];
          Q[2 + D + k] += QU1[k];
          Q[2 + 2 * D + k] += QS2[k];
        }
      }
    }
  }
}

// Covariance of the functional with coefficients a (one row of G) against each row of H,
// from the accumulators: value = a0 (E0 + U0/l^2) + sum_k a_k (S2_k - E1_k - U1_k/l^2)/l^2.
template <int D, bool GRAD>
void contract(const double* a, int rowsG, int rowsH, const double* acc, const double* accq,
              double ell, double* out, double* out_dell) {
  constexpr int S = kStride<D>;
  const double l2 = ell * ell, il2 = 1.0 / l2, il3 = il2 / ell, il5 = il3 * il2,
               il7 = il5 * il2;
  for (int r = 0; r < rowsG; ++r) {
    const double* ar = a + r * (1 + D);
    for (int h = 0; h < rowsH; ++h) {
      const double* A = acc + h * S;
      double v = ar[0] * (A[0] + A[1] * il2);
      for (int k = 0; k < D; ++k)
        v += ar[1 + k] * (A[2 + 2 * D + k] - A[2 + k] - A[2 + D + k] * il2) * il2;
      out[r * rowsH + h] += v;
      if constexpr (GRAD) {
        const double* Q = accq + h * S;
        double g = ar[0] * (Q[0] * il3 + Q[1] * il5 - 2.0 * A[1] * il3);
        for (int k = 0; k < D; ++k)
          g += ar[1 + k] * (-2.0 * (A[2 + 2 * D + k] - A[2 + k]) * il3 +
                            (Q[2 + 2 * D + k] - Q[2 + k]) * il5 + 4.0 * A[2 + D + k] * il5 -
                            Q[2 + D + k] * il7);
        out_dell[r * rowsH + h] += g;
      }
    }
  }
}

template <int D, bool GRAD>
void block_kernel_impl(const KernelBlock& G, const KernelBlock& H, double ell, double* out,
                       double* out_dell) {
  constexpr int S = kStride<D>;
  std::vector<double> acc(static_cast<std::size_t>(H.rows) * S);
  std::vector<double> accq(GRAD ? acc.size() : 0);
  std::vector<double> scratch;
  const int gstride = G.rows * (1 + D);
  for (const auto& gr : G.ranges) {
    const KernelBlock::Range* hr = H.find(gr.type);
    if (!hr) continue;
    for (int c = gr.begin; c < gr.end; ++c) {
      std::fill(acc.begin(), acc.end(), 0.0);
      if constexpr (GRAD) std::fill(accq.begin(), accq.end(), 0.0);
      accumulate<D, GRAD>(G.desc.data() + static_cast<std::size_t>(c) * D, H, *hr, ell,
                          acc.data(), accq.data(), scratch);
      contract<D, GRAD>(G.coef.data() + static_cast<std::size_t>(c) * gstride, G.rows, H.rows,
                        acc.data(), accq.data(), ell, out, out_dell);
    }
  }
}

}  // namespace

void block_kernel(const KernelBlock& G, const KernelBlock& H, double ell, double* out,
                  double* out_dell) {
  if (G.size() == 0 || H.size() == 0) return;
  if (G.dim == 1) {
    if (out_dell) block_kernel_impl<1, true>(G, H, ell, out, out_dell);
    else block_kernel_impl<1, false>(G, H, ell, out, nullptr);
  } else {
    if (out_dell) block_kernel_impl<3, true>(G, H, ell, out, out_dell);
    else block_kernel_impl<3, false>(G, H, ell, out, nullptr);
  }
}

void contracted_value(int dim, const double* d, int type, const KernelBlock& H, double ell,
                      double& value, double* grad) {
  value = 0.0;
  for (int m = 0; m < dim; ++m) grad[m] = 0.0;
  const KernelBlock::Range* hr = H.find(type);
  if (!hr) return;
  // Rows of the probe: the value (a0 = 1) and each derivative (a_m = 1).
  double probe[4 * 4] = {};
  double out[4] = {};
  for (int r = 0; r <= dim; ++r) probe[r * (1 + dim) + r] = 1.0;
  std::vector<double> scratch;
  if (dim == 1) {
    double acc[kStride<1>] = {};
    accumulate<1, false>(d, H, *hr, ell, acc, nullptr, scratch);
    contract<1, false>(probe, 2, 1, acc, nullptr, ell, out, nullptr);
  } else {
    double acc[kStride<3>] = {};
    accumulate<3, false>(d, H, *hr, ell, acc, nullptr, scratch);
    contract<3, false>(probe, 4, 1, acc, nullptr, ell, out, nullptr);
  }
  value = out[0];
  for (int m = 0; m < dim; ++m) grad[m] = out[1 + m];
}

}  // namespace otfgp
