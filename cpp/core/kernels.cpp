#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace otfgp {

PermSet allowed_permutations(int dim, int type, int n_species) {
  PermSet ps;
  if (dim == 1) return ps;
  const int a = type / (n_species * n_species), b = (type / n_species) % n_species,
            c = type % n_species;
  // Vertex permutations (new vertex k = old vertex perm[k]) that keep species in place,
  // translated into edge maps: new edge (u,v) is old edge (perm[u], perm[v]).
  static constexpr int kVertexPerms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                             {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
  static constexpr int kEdges[3][2] = {{0, 1}, {0, 2}, {1, 2}};
  const int sp[3] = {a, b, c};
  ps.n = 0;
  for (const auto& perm : kVertexPerms) {
    if (sp[perm[0]] != sp[0] || sp[perm[1]] != sp[1] || sp[perm[2]] != sp[2]) continue;
    for (int e = 0; e < 3; ++e) {
      int u = perm[kEdges[e][0]], v = perm[kEdges[e][1]];
      if (u > v) std::swap(u, v);
      ps.map[ps.n][e] = (u == 0) ? (v == 1 ? 0 : 1) : 2;
    }
    ++ps.n;
  }
  return ps;
}

namespace {

// Accumulators for one row of H: E0, U0, E1[D], U1[D], S2[D] (see contract()).
template <int D>
constexpr int kStride = 2 + 3 * D;

template <int D, bool GRAD>
void accumulate(const double* d, const KernelBlock& H, const KernelBlock::Range& range,
                const PermSet& perms, double ell, double* acc, double* accq) {
  const int rows = H.rows;
  const double inv2l2 = 0.5 / (ell * ell);
  constexpr int S = kStride<D>;
  const int cstride = rows * (1 + D);
  for (int c = range.begin; c < range.end; ++c) {
    const double* dp = H.desc.data() + static_cast<std::size_t>(c) * D;
    const double* cf = H.coef.data() + static_cast<std::size_t>(c) * cstride;
    for (int p = 0; p < perms.n; ++p) {
      const int* map = perms.map[p];
      double delta[D];
      double q = 0.0;
      for (int k = 0; k < D; ++k) {
        delta[k] = d[k] - dp[map[k]];
        q += delta[k] * delta[k];
      }
      const double e = std::exp(-q * inv2l2);
      const double eq = e * q;
      for (int r = 0; r < rows; ++r) {
        const double* b = cf + r * (1 + D);
        double u = 0.0;
        for (int k = 0; k < D; ++k) u += b[1 + map[k]] * delta[k];
        double* A = acc + r * S;
        const double eb0 = e * b[0];
        A[0] += eb0;
        A[1] += e * u;
        for (int k = 0; k < D; ++k) {
          A[2 + k] += delta[k] * eb0;
          A[2 + D + k] += delta[k] * e * u;
          A[2 + 2 * D + k] += e * b[1 + map[k]];
        }
        if constexpr (GRAD) {
          double* Q = accq + r * S;
          const double qb0 = eq * b[0], qu = eq * u;
          Q[0] += qb0;
          Q[1] += qu;
          for (int k = 0; k < D; ++k) {
            Q[2 + k] += delta[k] * qb0;
            Q[2 + D + k] += delta[k] * qu;
            Q[2 + 2 * D + k] += eq * b[1 + map[k]];
          }
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
void block_kernel_impl(const KernelBlock& G, const KernelBlock& H, double ell, int n_species,
                       double* out, double* out_dell) {
  constexpr int S = kStride<D>;
  std::vector<double> acc(static_cast<std::size_t>(H.rows) * S);
  std::vector<double> accq(GRAD ? acc.size() : 0);
  const int gstride = G.rows * (1 + D);
  for (const auto& gr : G.ranges) {
    const KernelBlock::Range* hr = H.find(gr.type);
    if (!hr) continue;
    const PermSet perms = allowed_permutations(D, gr.type, n_species);
    for (int c = gr.begin; c < gr.end; ++c) {
      std::fill(acc.begin(), acc.end(), 0.0);
      if constexpr (GRAD) std::fill(accq.begin(), accq.end(), 0.0);
      accumulate<D, GRAD>(G.desc.data() + static_cast<std::size_t>(c) * D, H, *hr, perms, ell,
                          acc.data(), accq.data());
      contract<D, GRAD>(G.coef.data() + static_cast<std::size_t>(c) * gstride, G.rows, H.rows,
                        acc.data(), accq.data(), ell, out, out_dell);
    }
  }
}

}  // namespace

void block_kernel(const KernelBlock& G, const KernelBlock& H, double ell, int n_species,
                  double* out, double* out_dell) {
  if (G.size() == 0 || H.size() == 0) return;
  if (G.dim == 1) {
    if (out_dell) block_kernel_impl<1, true>(G, H, ell, n_species, out, out_dell);
    else block_kernel_impl<1, false>(G, H, ell, n_species, out, nullptr);
  } else {
    if (out_dell) block_kernel_impl<3, true>(G, H, ell, n_species, out, out_dell);
    else block_kernel_impl<3, false>(G, H, ell, n_species, out, nullptr);
  }
}

void contracted_value(int dim, const double* d, int type, const KernelBlock& H, double ell,
                      int n_species, double& value, double* grad) {
  value = 0.0;
  for (int m = 0; m < dim; ++m) grad[m] = 0.0;
  const KernelBlock::Range* hr = H.find(type);
  if (!hr) return;
  const PermSet perms = allowed_permutations(dim, type, n_species);
  // Rows of the probe: the value (a0 = 1) and each derivative (a_m = 1).
  double probe[4 * 4] = {};
  double out[4] = {};
  for (int r = 0; r <= dim; ++r) probe[r * (1 + dim) + r] = 1.0;
  if (dim == 1) {
    double acc[kStride<1>] = {};
    accumulate<1, false>(d, H, *hr, perms, ell, acc, nullptr);
    contract<1, false>(probe, 2, 1, acc, nullptr, ell, out, nullptr);
  } else {
    double acc[kStride<3>] = {};
    accumulate<3, false>(d, H, *hr, perms, ell, acc, nullptr);
    contract<3, false>(probe, 4, 1, acc, nullptr, ell, out, nullptr);
  }
  value = out[0];
  for (int m = 0; m < dim; ++m) grad[m] = out[1 + m];
}

}  // namespace otfgp
