// compute otfgp/std/atom: per-atom force and local-energy stds from the otfgp pair style.
#include "compute_otfgp_std_atom.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "atom.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "metal_units.h"
#include "pair_otfgp.h"
#include "update.h"

using namespace LAMMPS_NS;

ComputeOTFGPStdAtom::ComputeOTFGPStdAtom(LAMMPS *lmp, int narg, char **arg) : Compute(lmp, narg, arg) {
  otfgp_lammps::require_metal_units(lmp, "compute otfgp/std/atom");
  // Optional keywords: "exact", the exact GP variance even when the model has variance maps;
  // "latent", the GP's latent stds instead of the reported (calibrated) ones.
  for (int i = 3; i < narg; ++i) {
    const std::string key = arg[i];
    if (key == "exact")
      exact_ = true;
    else if (key == "latent")
      latent_ = true;
    else
      error->all(FLERR, "compute otfgp/std/atom: unknown keyword {} (it takes exact and latent)", key);
  }
  peratom_flag = 1;
  size_peratom_cols = kColumns;
  // LAMMPS then records the steps on which output will invoke this compute (matchstep), so
  // the pair style can compute the variances in its force pass on those steps.
  timeflag = 1;
}

ComputeOTFGPStdAtom::~ComputeOTFGPStdAtom() { memory->destroy(stds_); }

void ComputeOTFGPStdAtom::init() {
  pair_ = PairOTFGP::find(lmp, "compute otfgp/std/atom");
  if (exact_ && pair_->model()->mapped_only())
    error->all(FLERR, "compute otfgp/std/atom: keyword exact needs a model with training data; {} is the "
               "maps of an exported ScalableGP, whose mapped variance is its exact one (drop exact)",
               pair_->model_file());
  variance_request_ = pair_->request_variances(
      {[this](bigint step) { return matchstep(step) != 0; }, exact_});
}

void ComputeOTFGPStdAtom::compute_peratom() {
  invoked_peratom = update->ntimestep;
  if (atom->nmax > nmax_) {
    memory->destroy(stds_);
    nmax_ = atom->nmax;
    memory->create(stds_, nmax_, kColumns, "otfgp/std/atom:stds");
    array_atom = stds_;
  }
  const otfgp_lammps::AtomVariances &v = pair_->variances(exact_);
  const std::vector<double> &force = latent_ ? v.latent_force : v.force;
  const std::vector<double> &local = latent_ ? v.latent_local_energy : v.local_energy;
  const int *mask = atom->mask;
  for (int i = 0; i < atom->nlocal; ++i) {
    const bool in = (mask[i] & groupbit) != 0;
    double mx = 0.0;
    for (int t = 0; t < 3; ++t) {
      stds_[i][t] = in ? std::sqrt(force[3 * i + t]) : 0.0;
      mx = std::max(mx, stds_[i][t]);
    }
    stds_[i][3] = mx;
    stds_[i][4] = in ? std::sqrt(local[i]) : 0.0;
  }
}

double ComputeOTFGPStdAtom::memory_usage() { return static_cast<double>(kColumns) * nmax_ * sizeof(double); }
