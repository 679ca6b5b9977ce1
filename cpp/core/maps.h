// Tabulated ("mapped") cluster functions: the GP mean phi of each species type as a uniform
// cubic B-spline in the edge lengths (1-D for pairs, 3-D tensor product for triplets).
// Evaluating a table costs the same whatever the training-set size.
//
// Optionally also a reduced GP for the variance: the cutoff-free cluster function of every
// type written in a coarser B-spline basis (nv nodes per axis over the same range), with
// the joint posterior covariance of all those basis coefficients given the training data.
// A force's variance is then u^T C u, where u is the force functional in that basis; the
// cost depends on the basis size, not on the training set.
//
// Everything is fitted by the caller (Python); this file only stores and evaluates it, so
// the energy is exactly the spline and the forces exactly its derivative.
#pragma once
#include <string>
#include <vector>

#include "clusters.h"

namespace otfgp {

struct SplineTable {
  int dim = 1;       // 1 (pairs) or 3 (triplets)
  int type = 0;      // species type, see pair_type / triplet_type
  int n = 0;         // grid nodes per axis, spanning [lo, hi]
  double lo = 0.0, hi = 0.0;
  // (n+2)^dim B-spline coefficients (axis-major, last axis fastest). A cubic spline through
  // n nodes has n+2 coefficients per axis; the two extra ones carry the end slopes.
  std::vector<double> mean;
  // Nodes per axis of the variance basis (0: none). Like species make the function
  // symmetric under edge permutations, so its coefficients are too: the covariance holds
  // one entry per permutation orbit, `reduced` maps each basis coefficient to its orbit's
  // index, and the table's orbits start at `offset` in the joint covariance (set by Maps).
  int nv = 0;
  // Degree of the variance basis B-splines: 3 (cubic, nv + 2 coefficients per axis) or 2
  // (quadratic, nv + 1; 27 instead of 64 per triplet, so a cheaper variance per atom).
  int vdeg = 3;
  std::size_t offset = 0;
  std::vector<int> reduced;
  // Optional: the mean written in the variance basis instead of `mean` (then empty) -- one
  // coefficient of the cutoff-free cluster function per permutation orbit, as the
  // reduced-rank ScalableGP (basis_design.h) represents it, so its export is exact. The
  // cluster energy is then fc(d) S(d) with the body order's quadratic cutoff at hi, and
  // below lo the end interval's polynomial is continued, as the ScalableGP does.
  std::vector<double> basis_mean;
  bool has_basis_mean() const { return !basis_mean.empty(); }
  // 1 / node spacing of the mean and of the variance basis, set by Maps (after validating
  // the table) so that the hot loops multiply instead of dividing.
  double inv_h = 0.0, inv_hv = 0.0;

  std::size_t coefficients() const { return power(n + 2); }   // (n+2)^dim
  std::size_t variance_coefficients() const { return n_reduced; }
  // Coefficients per axis of the variance basis, and all of them ((nv + vdeg - 1)^dim).
  int variance_axis() const { return nv + vdeg - 1; }
  std::size_t variance_grid() const { return power(variance_axis()); }
  double step() const { return (hi - lo) / (n - 1); }
  bool contains(const double* d) const {
    for (int m = 0; m < dim; ++m)
      if (!(d[m] >= lo && d[m] <= hi)) return false;
    return true;
  }
  // Throws InputError naming the problem (shape, range, non-finite values).
  void validate(int n_species) const;
  // Orbit index of every variance-basis coefficient (flat, last axis fastest) and the
  // number of orbits: the smallest image under the type's edge permutations, numbered in
  // the order of the representatives (the same rule as basis_design.cpp and mapping.py).
  std::vector<int> orbits(int n_species, std::size_t& count) const;

 private:
  friend class Maps;
  std::size_t n_reduced = 0;
  // per_axis^dim: coefficients of a tensor-product basis with per_axis per axis.
  std::size_t power(int per_axis) const {
    std::size_t c = 1;
    for (int k = 0; k < dim; ++k) c *= static_cast<std::size_t>(per_axis);
    return c;
  }
};

class Maps {
 public:
  // Validates the table and adds it, replacing any table of the same body order and type.
  void add(SplineTable t, int n_species);
  const std::vector<SplineTable>& tables() const { return tables_; }
  // True if every table carries its mean in the variance basis (an exported ScalableGP).
  bool all_basis_means() const;
  // True if every table has a variance basis and the covariance is set.
  bool has_variance() const { return !covariance_.empty(); }
  // Joint posterior covariance of all variance-basis coefficients (row-major, size^2, the
  // tables' blocks in table order); validated against the tables.
  void set_covariance(std::vector<double> c);
  const std::vector<double>& covariance() const { return covariance_; }
  std::size_t variance_size() const { return variance_size_; }

  // phi and d(phi)/d(edge) of c from its table; false (outputs untouched) if there is no
  // table for c's type or c lies outside the tabulated range.
  bool mean(const Cluster& c, double& phi, double* dphi) const;
  // The table of c's body order and type, or nullptr.
  const SplineTable* table_of(const Cluster& c) const {
    const std::vector<int>& look = lookup_[c.nv == 2 ? 0 : 1];
    if (c.type < 0 || c.type >= static_cast<int>(look.size()) || look[c.type] < 0) return nullptr;
    return &tables_[look[c.type]];
  }

  // Free-form JSON report of how the maps were built, stored in the model file.
  std::string info;

 private:
  void assign_offsets(int n_species);
  std::vector<SplineTable> tables_;
  std::vector<int> lookup_[2];  // table index by type, pairs and triplets (-1: none)
  std::vector<double> covariance_;
  std::size_t variance_size_ = 0;  // sum of the tables' orbit counts (set by assign_offsets)
};

// Per-thread work space of the mapped variance of one atom: the three force-row functionals
// and the local-energy functional u_r (r = 0..3) in the variance basis, accumulated cluster
// by cluster, then u_r^T C u_r. A local energy is a linear functional of the cluster
// energies centred at the atom just as a force is of their derivatives, so it rides in the
// fourth SIMD lane, which the three force rows left empty: it costs next to nothing.
// Clusters are added on each table's full coefficient grid, with the four rows side by side
// and without any index indirection; only the box of grid entries the atom touched is then
// folded onto the permutation orbits that C is written in. C is visited only at the touched
// orbits.
class VarianceWorkspace {
 public:
  explicit VarianceWorkspace(const Maps& maps);
  // Adds the four row functionals (force x, y, z, local energy) of c's cutoff-free
  // function, given per row r the coefficients coef[r * (dim + 1) + m] of its value (m = 0)
  // and edge derivatives (as from fold_cutoff). False, adding nothing, if c lies outside
  // its table.
  bool add(const Cluster& c, const double* coef);
  // Writes u_r^T C u_r (r = 0..3) and clears the work space for the next atom.
  void finish(double out[4]);
  // Clears the work space without evaluating.
  void clear();

  static constexpr int kLanes = 4;

 private:
  struct Box {
    int lo[3], hi[3];  // touched grid index range per axis; hi[0] < 0 when untouched
  };
  static const Box kUntouched;
  void fold(std::size_t table);
  template <int S>
  void add_stencil(const SplineTable& t, std::size_t ti, const double* d, const double* coef);
  const Maps* maps_;
  std::vector<std::size_t> grid_start_;  // per table: its first entry in grid_ (coefficients)
  std::vector<double> grid_;             // kLanes per full-grid coefficient of every table
  std::vector<Box> box_;
  std::vector<int> slot_;                // per orbit: its position among the touched, or -1
  std::vector<int> index_;               // touched orbits
  std::vector<double> compact_;          // kLanes per touched orbit (in index_ order)
};

}  // namespace otfgp
