// Design rows of the reduced-rank ("basis") GP: every cluster function written in a fixed
// B-spline basis, so that every label (force, energy, stress) is a linear functional of the
// basis coefficients, i.e. one row of a design matrix Phi (labels x coefficients).
//
// Pairs use uniform cubic B-splines (nodes + 2 coefficients per axis), triplets uniform
// quadratic tensor-product B-splines (nodes + 1 per axis, 27 non-zero per triplet), the
// conventions of the mapped variance (maps.h, mapping.py). Like species make a triplet
// function symmetric under edge permutations, so its coefficients are one per permutation
// orbit and a column sums the orbit's members. Phi depends only on the structures and the
// basis, never on the hyperparameters: the caller accumulates Phi^T Phi once and does all
// likelihood and posterior algebra in coefficient space.
#pragma once
#include <cstddef>
#include <vector>

#include "structure.h"

namespace otfgp {

struct BasisSpec {
  int n_species = 1;
  double cutoff2 = 0.0, cutoff3 = 0.0;  // <= 0 disables that body order
  double lower = 0.5;                   // lower end of every axis (Angstrom)
  int nodes2 = 64, nodes3 = 12;         // grid nodes per axis over [lower, cutoff]
};

// One block of columns: one body order and species type.
struct BasisTable {
  int dim = 1, type = 0, degree = 3, nodes = 0;
  double lo = 0.0, hi = 0.0, inv_h = 0.0;
  std::size_t offset = 0, size = 0;  // columns [offset, offset + size)
  // Triplets: full-grid flat index -> column within the block (its orbit).
  std::vector<int> orbit;
  int axis() const { return nodes + degree - 1; }
};

// Rows of one structure: 3 per force atom (in the given order), then the energy, then the
// 6 Voigt stress components (ASE sign), then (if asked) the local energy of every atom,
// each a row of `columns` coefficients.
struct DesignRows {
  int rows = 0;
  std::vector<double> phi;   // rows x columns, row-major
  std::vector<int> kinds;    // 0 force, 1 energy, 2 stress (as RowKind), 3 local energy
  std::size_t outside = 0;   // clusters with an edge below `lower` (extrapolated)
};

class BasisDesign {
 public:
  explicit BasisDesign(const BasisSpec& spec);  // validates; InputError naming the problem
  const BasisSpec& spec() const { return spec_; }
  const std::vector<BasisTable>& tables() const { return tables_; }
  std::size_t columns() const { return columns_; }
  // OpenMP over the atoms; each row is written by one thread in a fixed order, so the
  // result does not depend on the number of threads.
  DesignRows rows(const Structure& s, const std::vector<int>& force_atoms, bool energy,
                  bool stress, bool local_energies = false) const;

 private:
  BasisSpec spec_;
  std::vector<BasisTable> tables_;
  std::vector<int> lookup_[2];  // table index by type (-1: none)
  std::size_t columns_ = 0;
};

}  // namespace otfgp
