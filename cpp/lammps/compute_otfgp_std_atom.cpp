// compute otfgp/std/atom: per-atom force stds from the otfgp pair style's variances.
#include "compute_otfgp_std_atom.h"

#include <cmath>
#include <string>

#include "atom.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "pair_otfgp.h"
#include "update.h"

using namespace LAMMPS_NS;

ComputeOTFGPStdAtom::ComputeOTFGPStdAtom(LAMMPS *lmp, int narg, char **arg) : Compute(lmp, narg, arg) {
  // Optional keyword "exact": the exact GP variance even when the model has variance maps.
  if (narg == 4 && std::string(arg[3]) == "exact")
    exact_ = true;
  else if (narg != 3)
    error->all(FLERR, "compute otfgp/std/atom takes no arguments or the keyword exact");
  peratom_flag = 1;
  size_peratom_cols = 4;
  // LAMMPS then records the steps on which output will invoke this compute (matchstep), so
  // the pair style can compute the variances in its force pass on those steps.
  timeflag = 1;
}

ComputeOTFGPStdAtom::~ComputeOTFGPStdAtom() { memory->destroy(stds_); }

void ComputeOTFGPStdAtom::init() {
  pair_ = dynamic_cast<PairOTFGP *>(force->pair_match("^otfgp", 0));
  if (!pair_) error->all(FLERR, "compute otfgp/std/atom requires pair_style otfgp");
  variance_request_ = pair_->request_variances(
      {[this](bigint step) { return matchstep(step) != 0; }, exact_});
}

void ComputeOTFGPStdAtom::compute_peratom() {
  invoked_peratom = update->ntimestep;
  if (atom->nmax > nmax_) {
    memory->destroy(stds_);
    nmax_ = atom->nmax;
    memory->create(stds_, nmax_, 4, "otfgp/std/atom:stds");
    array_atom = stds_;
  }
  const std::vector<double> var = pair_->force_variances(exact_);
  const int *mask = atom->mask;
  for (int i = 0; i < atom->nlocal; ++i) {
    double mx = 0.0;
    for (int t = 0; t < 3; ++t) {
      stds_[i][t] = (mask[i] & groupbit) ? std::sqrt(var[3 * i + t]) : 0.0;
      mx = std::max(mx, stds_[i][t]);
    }
    stds_[i][3] = mx;
  }
}

double ComputeOTFGPStdAtom::memory_usage() { return 4.0 * nmax_ * sizeof(double); }
