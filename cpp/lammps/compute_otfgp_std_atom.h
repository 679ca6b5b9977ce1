// compute ID group otfgp/std/atom: per-atom predicted force standard deviations of the
// otfgp pair style, columns std_x std_y std_z std_max (eV/Angstrom in metal units).
// Evaluated only when something asks for it (thermo, dump, variable), so steps where
// nobody does cost nothing. With a mapped model (variance maps in the file) the std is the
// mapped one, whose cost does not grow with the training set; `compute ID group
// otfgp/std/atom exact` forces the exact GP variance.
#pragma once

#include "compute.h"

namespace LAMMPS_NS {

class ComputeOTFGPStdAtom : public Compute {
 public:
  ComputeOTFGPStdAtom(class LAMMPS *, int, char **);
  ~ComputeOTFGPStdAtom() override;
  void init() override;
  void compute_peratom() override;
  double memory_usage() override;
  bool exact() const { return exact_; }

 private:
  int nmax_ = 0;
  double **stds_ = nullptr;
  class PairOTFGP *pair_ = nullptr;
  bool exact_ = false;
};

}  // namespace LAMMPS_NS
