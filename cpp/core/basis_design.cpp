#include "basis_design.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "clusters.h"
#include "errors.h"
#include "kernel_block.h"
#include "label_groups.h"
#include "neighbors.h"

namespace otfgp {
namespace {

// First coefficient index and the uniform B-spline weights (degree 3: 4 of them, degree 2:
// 3) with their derivatives at x; the same conventions as the mapped variance (maps.cpp).
// Outside [lo, hi] the end interval's polynomial is continued (the caller counts that).
struct Weights {
  int first;
  double w[4], dw[4];
};

Weights axis_weights(const BasisTable& t, double x) {
  Weights a{};
  const double u = (x - t.lo) * t.inv_h;
  int i = static_cast<int>(std::floor(u));
  i = std::min(std::max(i, 0), t.nodes - 2);
  const double s = u - i, r = 1.0 - s, s2 = s * s, h = t.inv_h;
  a.first = i;
  if (t.degree == 3) {
    a.w[0] = r * r * r / 6.0;
    a.w[1] = (3.0 * s2 * s - 6.0 * s2 + 4.0) / 6.0;
    a.w[2] = (-3.0 * s2 * s + 3.0 * s2 + 3.0 * s + 1.0) / 6.0;
    a.w[3] = s2 * s / 6.0;
    a.dw[0] = -0.5 * r * r * h;
    a.dw[1] = (1.5 * s2 - 2.0 * s) * h;
    a.dw[2] = (-1.5 * s2 + s + 0.5) * h;
    a.dw[3] = 0.5 * s2 * h;
  } else {
    a.w[0] = 0.5 * r * r;
    a.w[1] = 0.5 + s - s2;
    a.w[2] = 0.5 * s2;
    a.dw[0] = -r * h;
    a.dw[1] = (1.0 - 2.0 * s) * h;
    a.dw[2] = s * h;
  }
  return a;
}

// Adds the block's functionals (per cluster and row: a0 S + sum_m a_m dS/dd_m, cutoff
// already folded in by label_groups) to phi: block row r goes to phi row row_of[r] (< 0:
// skipped).
std::size_t add_block(const BasisDesign& design, const KernelBlock& blk, const int* row_of,
                      std::vector<double>& phi, const std::vector<int>& lookup) {
  const std::size_t cols = design.columns();
  const int D = blk.dim, R = blk.rows;
  std::size_t outside = 0;
  for (int c = 0; c < blk.size(); ++c) {
    const int ti = blk.type[c] < static_cast<int>(lookup.size()) ? lookup[blk.type[c]] : -1;
    if (ti < 0) continue;
    const BasisTable& t = design.tables()[ti];
    const double* d = blk.desc.data() + static_cast<std::size_t>(c) * D;
    const double* coef = blk.coef.data() + static_cast<std::size_t>(c) * R * (1 + D);
    for (int m = 0; m < D; ++m)
      if (d[m] < t.lo) {
        ++outside;
        break;
      }
    Weights ax[3];
    for (int m = 0; m < D; ++m) ax[m] = axis_weights(t, d[m]);
    const int S = t.degree + 1;
    for (int r = 0; r < R; ++r) {
      if (row_of[r] < 0) continue;
      const double* a = coef + r * (1 + D);
      double* out = phi.data() + static_cast<std::size_t>(row_of[r]) * cols + t.offset;
      if (D == 1) {
        for (int k = 0; k < S; ++k) out[ax[0].first + k] += a[0] * ax[0].w[k] + a[1] * ax[0].dw[k];
        continue;
      }
      const int N = t.axis();
      for (int i = 0; i < S; ++i)
        for (int j = 0; j < S; ++j) {
          const double wij = ax[0].w[i] * ax[1].w[j];
          const double p = a[0] * wij + a[1] * ax[0].dw[i] * ax[1].w[j] + a[2] * ax[0].w[i] * ax[1].dw[j];
          const double q = a[3] * wij;
          const std::size_t base = (static_cast<std::size_t>(ax[0].first + i) * N + (ax[1].first + j)) * N + ax[2].first;
          for (int k = 0; k < S; ++k) out[t.orbit[base + k]] += p * ax[2].w[k] + q * ax[2].dw[k];
        }
    }
  }
  return outside;
}

}  // namespace

BasisDesign::BasisDesign(const BasisSpec& spec) : spec_(spec) {
  const int ns = spec.n_species;
  if (ns < 1) throw InputError("the basis needs at least one species");
  if (!(spec.cutoff2 > 0) && !(spec.cutoff3 > 0)) throw InputError("the basis needs a 2-body or a 3-body cutoff");
  if (!std::isfinite(spec.lower) || !(spec.lower >= kMinDistance))
    throw InputError("the basis lower end must be at least " + std::to_string(kMinDistance) + " A, got " +
                     std::to_string(spec.lower));
  for (double rc : {spec.cutoff2, spec.cutoff3})
    if (rc > 0 && !(rc > spec.lower + 0.1))
      throw InputError("each cutoff must exceed the basis lower end (" + std::to_string(spec.lower) +
                       " A) by more than 0.1 A, got " + std::to_string(rc));
  if (spec.cutoff2 > 0 && (spec.nodes2 < 4 || spec.nodes2 > 4096))
    throw InputError("the pair basis needs 4 to 4096 nodes, got " + std::to_string(spec.nodes2));
  if (spec.cutoff3 > 0 && (spec.nodes3 < 4 || spec.nodes3 > 64))
    throw InputError("the triplet basis needs 4 to 64 nodes per axis, got " + std::to_string(spec.nodes3));
  lookup_[0].assign(type_count(1, ns), -1);
  lookup_[1].assign(type_count(3, ns), -1);
  auto add_table = [&](int dim, int type, double rc, int nodes, int degree) {
    BasisTable t;
    t.dim = dim;
    t.type = type;
    t.degree = degree;
    t.nodes = nodes;
    t.lo = spec.lower;
    t.hi = rc;
    t.inv_h = (nodes - 1) / (rc - spec.lower);
    t.offset = columns_;
    const int N = t.axis();
    if (dim == 1) {
      t.size = static_cast<std::size_t>(N);
    } else {
      // Orbit of a flat index = its smallest image under the type's edge permutations;
      // orbits numbered in the order of their representatives (as in maps.cpp).
      const PermSet ps = allowed_permutations(3, type, ns);
      const std::size_t total = static_cast<std::size_t>(N) * N * N;
      std::vector<std::size_t> rep(total);
      for (std::size_t k = 0; k < total; ++k) {
        const std::size_t idx[3] = {k / (N * N), (k / N) % N, k % N};
        std::size_t best = k;
        for (int p = 0; p < ps.n; ++p)
          best = std::min(best, (idx[ps.map[p][0]] * N + idx[ps.map[p][1]]) * N + idx[ps.map[p][2]]);
        rep[k] = best;
      }
      t.orbit.assign(total, -1);
      int next = 0;
      for (std::size_t k = 0; k < total; ++k)
        if (rep[k] == k) t.orbit[k] = next++;
      for (std::size_t k = 0; k < total; ++k) t.orbit[k] = t.orbit[rep[k]];
      t.size = static_cast<std::size_t>(next);
    }
    columns_ += t.size;
    lookup_[dim == 1 ? 0 : 1][type] = static_cast<int>(tables_.size());
    tables_.push_back(std::move(t));
  };
  if (spec.cutoff2 > 0)
    for (int a = 0; a < ns; ++a)
      for (int b = a; b < ns; ++b) add_table(1, pair_type(a, b, ns), spec.cutoff2, spec.nodes2, 3);
  if (spec.cutoff3 > 0)
    for (int a = 0; a < ns; ++a)
      for (int b = a; b < ns; ++b)
        for (int c = b; c < ns; ++c) add_table(3, triplet_type(a, b, c, ns), spec.cutoff3, spec.nodes3, 2);
}

DesignRows BasisDesign::rows(const Structure& s, const std::vector<int>& force_atoms, bool energy,
                             bool stress, bool local_energies) const {
  validate_structure(s, spec_.n_species);
  const int n = static_cast<int>(s.size());
  std::vector<int> force_slot(n, -1);  // position of each atom among the force atoms
  for (std::size_t k = 0; k < force_atoms.size(); ++k) {
    const int a = force_atoms[k];
    if (a < 0 || a >= n) throw InputError("force atom " + std::to_string(a) + " out of range for " + std::to_string(n) + " atoms");
    if (force_slot[a] >= 0) throw InputError("force atom " + std::to_string(a) + " given twice");
    force_slot[a] = static_cast<int>(k);
  }
  if (stress && (s.volume() < 1e-8 || !(s.pbc[0] && s.pbc[1] && s.pbc[2])))
    throw InputError("a stress row needs a fully periodic cell with a volume");
  const double rc2 = std::max(spec_.cutoff2, 0.0), rc3 = std::max(spec_.cutoff3, 0.0);
  const NeighborList nl = build_neighbor_list(s, std::max(rc2, rc3), kMinDistance);
  const ClusterSet cs = build_clusters(s, nl, rc2, rc3, spec_.n_species);
  const int nf = static_cast<int>(force_atoms.size());
  const int structure_rows = (energy ? 1 : 0) + (stress ? 6 : 0);
  const int local0 = 3 * nf + structure_rows;  // first local-energy row
  DesignRows out;
  out.rows = local0 + (local_energies ? n : 0);
  out.phi.assign(static_cast<std::size_t>(out.rows) * columns_, 0.0);
  out.kinds.assign(static_cast<std::size_t>(3 * nf), 0);
  if (energy) out.kinds.push_back(1);
  if (stress) out.kinds.insert(out.kinds.end(), 6, 2);
  if (local_energies) out.kinds.insert(out.kinds.end(), n, 3);
  std::size_t outside = 0;
  // Each atom's rows (its three force rows and its local energy) are written by the thread
  // that owns the atom; the out-of-range count is an integer sum, exact in any order.
  const int centres = local_energies ? n : nf;
#pragma omp parallel for schedule(dynamic, 4) reduction(+ : outside)
  for (int c = 0; c < centres; ++c) {
    const int a = local_energies ? c : force_atoms[c];
    const int k = force_slot[a];
    const int row_of[4] = {k < 0 ? -1 : 3 * k, k < 0 ? -1 : 3 * k + 1, k < 0 ? -1 : 3 * k + 2,
                           local_energies ? local0 + a : -1};
    const LabelGroup g = atom_group(cs, a, a, rc2, rc3, local_energies, spec_.n_species);
    const std::size_t o = add_block(*this, g.two, row_of, out.phi, lookup_[0]) +
                          add_block(*this, g.three, row_of, out.phi, lookup_[1]);
    if (k >= 0) outside += o;
  }
  if (structure_rows) {
    const LabelGroup g = structure_group(cs, s.volume(), rc2, rc3, energy, stress, spec_.n_species);
    int row_of[7];
    for (int r = 0; r < structure_rows; ++r) row_of[r] = 3 * nf + r;
    // The whole-structure rows see the same clusters again: count them only without forces.
    const std::size_t o = add_block(*this, g.two, row_of, out.phi, lookup_[0]) +
                          add_block(*this, g.three, row_of, out.phi, lookup_[1]);
    if (nf == 0) outside += o;
  }
  out.outside = outside;
  return out;
}

}  // namespace otfgp
