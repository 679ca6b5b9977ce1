// compute ID group otfgp/std/atom [exact] [latent]: per-atom predicted standard deviations of
// the otfgp pair style, columns std_x std_y std_z std_max (force components, eV/Angstrom in
// metal units) and std_local_energy (eV). They are the model's reported stds: its
// calibration (stored in the model file, fitted in Python) applied to the GP's latent
// variance, which for an uncalibrated model is latent + label noise (none for the local
// energy); the same numbers as Python's GPCalculator. `latent` gives the latent (noise-free)
// stds instead. Evaluated only when something asks for it (thermo, dump, variable), so steps
// where nobody does cost nothing. With a mapped model (variance maps in the file) the
// variance is the mapped one, whose cost does not grow with the training set; `exact`
// forces the exact GP variance.
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

  static constexpr int kColumns = 5;

 private:
  int nmax_ = 0;
  double **stds_ = nullptr;
  class PairOTFGP *pair_ = nullptr;
  bool exact_ = false;
  bool latent_ = false;
  // Our registration with the pair (see PairOTFGP::request_variances); dropping it ends it.
  std::shared_ptr<const otfgp_lammps::VarianceRequest> variance_request_;
};

}  // namespace LAMMPS_NS
