// Clusters of one body order packed for the kernel engine, sorted by species type.
//
// Each cluster carries its descriptor d (edge lengths) and, for every output row r, a
// coefficient vector (a0, a_1..a_D) that already includes the smooth cutoff (cutoff.h):
// a row is the linear functional  L[phi] = sum_c a0 * S(c) + sum_m a_m * dS/dd_m(c)  of
// the cutoff-free squared-exponential sum S, which is how energies, forces and stresses
// all enter the GP.
#pragma once
#include <vector>

#include "clusters.h"

namespace otfgp {

// Edge permutations induced by the vertex permutations that keep species in place: all 6
// for three equal species, 2 for two, 1 otherwise; pairs only have the identity.
struct PermSet {
  int n = 1;
  int map[6][3] = {{0, 1, 2}};
};
PermSet allowed_permutations(int dim, int type, int n_species);

struct KernelBlock {
  int dim = 1;   // descriptor length: 1 (pairs) or 3 (triplets)
  int rows = 0;  // output rows per cluster
  std::vector<int> type;
  std::vector<double> desc;  // size() * dim
  std::vector<double> coef;  // size() * rows * (1 + dim)
  struct Range {
    int type, begin, end;
    PermSet perms;
    std::size_t packed;  // offset of this range in `packed`
  };
  std::vector<Range> ranges;  // contiguous runs of one type, after finalize()
  // Structure-of-arrays copy for the kernel's inner loop, per range and permutation p:
  // dim arrays of permuted descriptors, then per row the arrays b0 and permuted b_1..b_dim,
  // each of length (end - begin). Contiguous, so the loop over clusters vectorises.
  std::vector<double> packed;
  std::size_t packed_stride() const { return static_cast<std::size_t>(dim + rows * (1 + dim)); }

  KernelBlock() = default;
  KernelBlock(int dim_, int rows_) : dim(dim_), rows(rows_) {}
  int size() const { return static_cast<int>(type.size()); }
  // Appends a cluster; returns a pointer to its rows*(1+dim) zeroed coefficients.
  double* add(int type_, const double* d);
  // Sorts clusters by type (stable), builds `ranges` and the packed copy.
  void finalize(int n_species);
  const Range* find(int type_) const;
};

}  // namespace otfgp
