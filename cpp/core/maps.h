// Tabulated ("mapped") cluster functions: the GP mean phi of each species type as a uniform
// cubic B-spline in the edge lengths (1-D for pairs, 3-D tensor product for triplets), plus
// optional tables of the posterior variances of d(phi)/d(edge), the ingredients of the
// mapped force uncertainty. Evaluating a table costs the same whatever the training-set size.
//
// The coefficients are fitted by the caller (Python); this file only stores and evaluates
// them, so the energy is exactly the spline and the forces exactly its derivative.
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
  // Empty, or dim blocks of (n+2)^dim coefficients: block m tabulates the posterior
  // variance of d(phi)/d(edge m).
  std::vector<double> variance;

  std::size_t coefficients() const;  // (n+2)^dim
  double step() const { return (hi - lo) / (n - 1); }
  bool contains(const double* d) const;
  // Throws InputError naming the problem (shape, range, non-finite values).
  void validate(int n_species) const;
};

class Maps {
 public:
  // Validates the table and adds it, replacing any table of the same body order and type.
  void add(SplineTable t, int n_species);
  const std::vector<SplineTable>& tables() const { return tables_; }
  const SplineTable* find(int dim, int type) const;
  // True if every table carries variance channels.
  bool has_variance() const;

  // phi and d(phi)/d(edge) of c from its table; false (outputs untouched) if there is no
  // table for c's type or c lies outside the tabulated range.
  bool mean(const Cluster& c, double& phi, double* dphi) const;
  // Posterior variances of d(phi)/d(edge m), clamped at zero; false as above.
  bool gradient_variances(const Cluster& c, double* var) const;

  // Calibration of the mapped force variance, var = variance_scale * raw^variance_exponent
  // (see Model::mapped_force_variance), and a free-form JSON report of how the maps were
  // built; all stored in the model file.
  double variance_scale = 1.0;
  double variance_exponent = 1.0;
  std::string info;

 private:
  std::vector<SplineTable> tables_;
};

}  // namespace otfgp
