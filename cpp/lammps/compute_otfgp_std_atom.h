// compute ID group otfgp/std/atom: per-atom predicted force standard deviations of the
// otfgp pair style, columns std_x std_y std_z std_max (eV/Angstrom in metal units).
// Evaluated only when something asks for it (thermo, dump, variable), so steps where
// nobody does cost nothing. With a mapped model (variance maps in the file) the std is the
// mapped one, whose cost does not grow with the training set; `compute ID group
// otfgp/std/atom exact` forces the exact GP variance.
#pragma once

#include <memory>

#include "compute.h"

namespace otfgp_lammps {
struct VarianceRequest;
}

namespace LAMMPS_NS {

class ComputeOTFGPStdAtom : public Compute {
 public:
  ComputeOTFGPStdAtom(class LAMMPS *, int, char **);
  ~ComputeOTFGPStdAtom() override;
  void init() override;
  void compute_peratom() override;
  double memory_usage() override;

 private:
  int nmax_ = 0;
  double **stds_ = nullptr;
  class PairOTFGP *pair_ = nullptr;
  bool exact_ = false;
  // Our registration with the pair (see PairOTFGP::request_variances); dropping it ends it.
  std::shared_ptr<const otfgp_lammps::VarianceRequest> variance_request_;
};

}  // namespace LAMMPS_NS
