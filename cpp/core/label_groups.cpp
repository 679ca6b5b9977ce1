// Label groups: force, local-energy, energy and stress rows as cluster functionals with the
// cutoff folded in, and the kernel between two groups.
#include "label_groups.h"

#include <algorithm>
#include <vector>

#include "cutoff.h"
#include "kernels.h"

namespace otfgp {
namespace {

void add_cluster(KernelBlock& blk, const Cluster& c, double rc, const std::vector<double>& w0,
                 const std::vector<double>& w) {
  double* coef = blk.add(c.type, c.d);
  fold_cutoff(blk.dim, rc, c.d, blk.rows, w0.data(), w.data(), coef);
}

// Calls fn(cluster, block, rc) for the pair and triplet copies in the given ranges.
template <class Fn>
void for_clusters(const ClusterSet& cs, int pb, int pe, int tb, int te, LabelGroup& g,
                  double rc2, double rc3, Fn fn) {
  for (int k = pb; k < pe; ++k) fn(cs.pairs[k], g.two, rc2);
  for (int k = tb; k < te; ++k) fn(cs.triplets[k], g.three, rc3);
}

}  // namespace

void force_row_weights(const Cluster& c, int key, double* w) {
  const int ne = c.n_edges();
  const double inv_mult = 1.0 / c.multiplicity(key);
  for (int m = 0; m < ne; ++m) {
    double grad[3];
    c.edge_gradient(m, key, grad);
    for (int r = 0; r < 3; ++r) w[r * ne + m] = -grad[r] * inv_mult;
  }
}

LabelGroup atom_group(const ClusterSet& cs, int row, int s, double rc2, double rc3,
                      bool local_energy, int n_species) {
  LabelGroup g;
  g.rows = local_energy ? 4 : 3;
  g.two = KernelBlock(1, g.rows);
  g.three = KernelBlock(3, g.rows);
  std::vector<double> w0(g.rows), w;
  auto fn = [&](const Cluster& c, KernelBlock& blk, double rc) {
    const int ne = c.n_edges();
    w.assign(static_cast<std::size_t>(g.rows) * ne, 0.0);
    std::fill(w0.begin(), w0.end(), 0.0);
    force_row_weights(c, s, w.data());
    if (local_energy) w0[3] = 1.0 / c.nv;
    add_cluster(blk, c, rc, w0, w);
  };
  for_clusters(cs, cs.pair_offsets[row], cs.pair_offsets[row + 1], cs.triplet_offsets[row],
               cs.triplet_offsets[row + 1], g, rc2, rc3, fn);
  g.two.finalize(n_species);
  g.three.finalize(n_species);
  return g;
}

LabelGroup structure_group(const ClusterSet& cs, double volume, double rc2, double rc3,
                           bool energy, bool stress, int n_species) {
  LabelGroup g;
  g.rows = (energy ? 1 : 0) + (stress ? 6 : 0);
  g.two = KernelBlock(1, g.rows);
  g.three = KernelBlock(3, g.rows);
  std::vector<double> w0(g.rows), w;
  auto fn = [&](const Cluster& c, KernelBlock& blk, double rc) {
    if (c.canonical_weight == 0.0) return;
    const int ne = c.n_edges();
    const double cw = c.canonical_weight;
    w.assign(static_cast<std::size_t>(g.rows) * ne, 0.0);
    std::fill(w0.begin(), w0.end(), 0.0);
    int r = 0;
    if (energy) w0[r++] = cw;
    if (stress)
      for (const auto& ab : kVoigt) {
        for (int m = 0; m < ne; ++m)
          w[r * ne + m] = cw * c.edge[m][ab[0]] * c.edge[m][ab[1]] / (c.d[m] * volume);
        ++r;
      }
    add_cluster(blk, c, rc, w0, w);
  };
  for_clusters(cs, 0, static_cast<int>(cs.pairs.size()), 0, static_cast<int>(cs.triplets.size()),
               g, rc2, rc3, fn);
  g.two.finalize(n_species);
  g.three.finalize(n_species);
  return g;
}

void group_kernels(const LabelGroup& G, const LabelGroup& H, double ell2, double ell3, double* k2,
                   double* k3, double* d2, double* d3) {
  block_kernel(G.two, H.two, ell2, k2, d2);
  block_kernel(G.three, H.three, ell3, k3, d3);
}

}  // namespace otfgp
