// Turning labels into the cluster functionals the kernel engine understands: label groups
// (the rows that share one set of clusters) and how force, energy and stress rows are built.
// Below model.h in the include order: the model stores label groups, not the other way round.
#pragma once
#include "clusters.h"
#include "kernel_block.h"

namespace otfgp {

// The clusters behind a set of label rows that share them (one atom's force components,
// or one structure's energy and stress).
struct LabelGroup {
  int rows = 0;
  KernelBlock two{1, 0}, three{3, 0};
};

// Weights of the 3 force rows of centre `key` on cluster c's edge derivatives:
// w[r * n_edges + m] = -d(edge m)/dx_key[r] / multiplicity (a self-image counts once).
void force_row_weights(const Cluster& c, int key, double* w);

// Force components of atom s (3 rows: -dE/dx_s), optionally followed by its local energy.
// Uses the copies centred at s; a copy that contains s at several vertices (a self-image
// in a small periodic cell) is counted once, hence the 1/multiplicity.
// `row` is the centre's row in the cluster set, `key` its identity (equal for structures).
LabelGroup atom_group(const ClusterSet& cs, int row, int key, double rc2, double rc3,
                      bool local_energy, int n_species);

// Whole-structure rows: total energy (if energy) then Voigt stress (if stress), from the
// canonical copies of every cluster.
LabelGroup structure_group(const ClusterSet& cs, double volume, double rc2, double rc3,
                           bool energy, bool stress, int n_species);

// Unscaled covariance between the rows of two label groups, both body orders: k2 and k3
// (rows(G) x rows(H), row-major) and, if d2 / d3 are non-null, their derivatives with
// respect to ell2 / ell3. Shared by the training covariance and the exact variance.
void group_kernels(const LabelGroup& G, const LabelGroup& H, double ell2, double ell3, double* k2,
                   double* k3, double* d2, double* d3);

}  // namespace otfgp
