// Turning labels into the cluster functionals the kernel engine understands.
#pragma once
#include "model.h"

namespace otfgp {

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

}  // namespace otfgp
