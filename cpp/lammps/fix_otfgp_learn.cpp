#include "fix_otfgp_learn.h"

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "model_io.h"
#include "pair_otfgp.h"
#include "python_bridge.h"
#include "update.h"
#include "utils.h"

using namespace LAMMPS_NS;
using namespace FixConst;

FixOTFGPLearn::FixOTFGPLearn(LAMMPS *lmp, int narg, char **arg) : Fix(lmp, narg, arg) {
  if (narg < 4) error->all(FLERR, "fix otfgp/learn needs: ID group otfgp/learn N keyword value ...");
  every_ = utils::inumeric(FLERR, arg[3], false, lmp);
  if (every_ < 1) error->all(FLERR, "fix otfgp/learn: N must be a positive integer");
  nevery = every_;
  bool have_threshold = false;
  for (int i = 4; i < narg; i += 2) {
    const std::string key = arg[i];
    if (i + 1 >= narg) error->all(FLERR, "fix otfgp/learn: keyword {} needs a value", key);
    const char *value = arg[i + 1];
    if (key == "threshold") {
      threshold_ = utils::numeric(FLERR, value, false, lmp);
      have_threshold = true;
    } else if (key == "relative") {
      relative_ = utils::logical(FLERR, value, false, lmp) == 1;
    } else if (key == "add_threshold") {
      add_threshold_ = utils::numeric(FLERR, value, false, lmp);
    } else if (key == "min_threshold") {
      min_threshold_ = utils::numeric(FLERR, value, false, lmp);
    } else if (key == "labeller") {
      labeller_ = value;
    } else if (key == "max_atoms") {
      max_atoms_ = utils::inumeric(FLERR, value, false, lmp);
    } else if (key == "optimize_until") {
      optimize_until_calls_ = utils::inumeric(FLERR, value, false, lmp);
    } else if (key == "energy") {
      energy_ = utils::logical(FLERR, value, false, lmp) == 1;
    } else if (key == "stress") {
      stress_ = utils::logical(FLERR, value, false, lmp) == 1;
    } else if (key == "output") {
      output_dir_ = value;
    } else if (key == "map") {
      map_ = utils::logical(FLERR, value, false, lmp) == 1;
    } else if (key == "uncertainty") {
      const std::string v = value;
      if (v != "exact" && v != "mapped")
        error->all(FLERR, "fix otfgp/learn: uncertainty must be exact or mapped, got {}", v);
      mapped_uncertainty_ = v == "mapped";
    } else {
      error->all(FLERR, "fix otfgp/learn: unknown keyword {}", key);
    }
  }
  if (!have_threshold || !(threshold_ > 0))
    error->all(FLERR, "fix otfgp/learn: give a positive 'threshold' (eV/A, or x sigma_n with relative yes)");
  if (labeller_.find(':') == std::string::npos)
    error->all(FLERR, "fix otfgp/learn: 'labeller' must be module:function, got '{}'", labeller_);
  if (max_atoms_ < 1) error->all(FLERR, "fix otfgp/learn: max_atoms must be >= 1");
  if (mapped_uncertainty_ && !map_)
    error->all(FLERR, "fix otfgp/learn: uncertainty mapped needs map yes");
  vector_flag = 1;
  size_vector = 3;
  global_freq = 1;
  extvector = 0;
}

int FixOTFGPLearn::setmask() { return END_OF_STEP; }

void FixOTFGPLearn::init() {
  pair_ = dynamic_cast<PairOTFGP *>(force->pair_match("^otfgp", 0));
  if (!pair_) error->all(FLERR, "fix otfgp/learn requires pair_style otfgp");
  // The check of end_of_step(), every N steps; exact unless the mapped variance is asked for.
  variance_request_ = pair_->request_variances(
      {[this](bigint step) { return step % nevery == 0; }, !mapped_uncertainty_});
}

double FixOTFGPLearn::threshold_value() const {
  if (!relative_) return threshold_;
  return std::max(threshold_ * pair_->model()->hyperparameters().noise_force, min_threshold_);
}

void FixOTFGPLearn::end_of_step() {
  const int nlocal = atom->nlocal;
  // The decision uses the exact GP variance unless the mapped one is asked for.
  const std::vector<double> var = pair_->force_variances(!mapped_uncertainty_);
  std::vector<double> per_atom(nlocal, 0.0);
  double local_max = 0.0;
  for (int i = 0; i < nlocal; ++i) {
    if (!(atom->mask[i] & groupbit)) continue;
    for (int t = 0; t < 3; ++t) per_atom[i] = std::max(per_atom[i], std::sqrt(var[3 * i + t]));
    local_max = std::max(local_max, per_atom[i]);
  }
  MPI_Allreduce(&local_max, &last_max_std_, 1, MPI_DOUBLE, MPI_MAX, world);
  if (last_max_std_ > threshold_value()) learn(last_max_std_, per_atom.data());
}

void FixOTFGPLearn::learn(double max_std, const double *per_atom_max) {
  // Gather ID, type, position and std of every atom on rank 0.
  const int nlocal = atom->nlocal;
  std::vector<double> mine(5 * static_cast<std::size_t>(nlocal));
  for (int i = 0; i < nlocal; ++i) {
    mine[5 * i] = static_cast<double>(atom->tag[i]);
    mine[5 * i + 1] = atom->type[i];
    for (int t = 0; t < 3; ++t) mine[5 * i + 2 + t] = atom->x[i][t];
  }
  std::vector<double> mine_std(per_atom_max, per_atom_max + nlocal);
  int nprocs = comm->nprocs, me = comm->me;
  std::vector<int> counts(nprocs), displs(nprocs);
  int n5 = 5 * nlocal;
  MPI_Gather(&n5, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, world);
  if (me == 0)
    for (int p = 1; p < nprocs; ++p) displs[p] = displs[p - 1] + counts[p - 1];
  std::vector<double> all(me == 0 ? displs.back() + counts.back() : 0);
  MPI_Gatherv(mine.data(), n5, MPI_DOUBLE, all.data(), counts.data(), displs.data(), MPI_DOUBLE, 0, world);
  std::vector<int> counts1(nprocs), displs1(nprocs);
  MPI_Gather(&nlocal, 1, MPI_INT, counts1.data(), 1, MPI_INT, 0, world);
  if (me == 0)
    for (int p = 1; p < nprocs; ++p) displs1[p] = displs1[p - 1] + counts1[p - 1];
  std::vector<double> all_std(me == 0 ? displs1.back() + counts1.back() : 0);
  MPI_Gatherv(mine_std.data(), nlocal, MPI_DOUBLE, all_std.data(), counts1.data(), displs1.data(),
              MPI_DOUBLE, 0, world);

  int status = 0;
  std::string payload;
  if (me == 0) {
    const std::size_t n = all_std.size();
    std::vector<std::size_t> order(n);
    for (std::size_t k = 0; k < n; ++k) order[k] = k;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return all[5 * a] < all[5 * b]; });
    otfgp_lammps::LearnRequest req;
    req.fix_id = id;
    req.labeller = labeller_;
    req.model_file = pair_->model_file();
    req.output_dir = output_dir_;
    req.type_symbols = pair_->type_symbols();
    req.step = static_cast<long>(update->ntimestep);
    for (std::size_t k : order) {
      req.types.push_back(static_cast<int>(all[5 * k + 1]));
      for (int t = 0; t < 3; ++t) req.positions.push_back(all[5 * k + 2 + t] - domain->boxlo[t]);
      req.stds.push_back(all_std[k]);
    }
    req.cell = {domain->xprd, 0.0, 0.0, domain->xy, domain->yprd, 0.0, domain->xz, domain->yz, domain->zprd};
    req.pbc = {domain->periodicity[0], domain->periodicity[1], domain->periodicity[2]};
    req.options = {{"max_atoms", max_atoms_},
                   {"add_threshold", add_threshold_ > 0 ? (relative_ ? add_threshold_ * pair_->model()->hyperparameters().noise_force : add_threshold_) : threshold_value()},
                   {"energy", energy_ ? 1.0 : 0.0},
                   {"stress", stress_ ? 1.0 : 0.0},
                   {"optimize_until_calls", optimize_until_calls_},
                   {"map", map_ ? 1.0 : 0.0},
                   {"map_variance", mapped_uncertainty_ ? 1.0 : 0.0},
                   {"max_std", max_std},
                   {"threshold", threshold_value()}};
    try {
      payload = otfgp_lammps::python_learn(req);
    } catch (const std::exception &e) {
      status = 1;
      payload = e.what();
    }
  }
  // Status first, then the payload, so an exception on rank 0 ends every rank cleanly.
  MPI_Bcast(&status, 1, MPI_INT, 0, world);
  long size = static_cast<long>(payload.size());
  MPI_Bcast(&size, 1, MPI_LONG, 0, world);
  payload.resize(size);
  MPI_Bcast(payload.data(), static_cast<int>(size), MPI_CHAR, 0, world);
  if (status != 0)
    error->all(FLERR, "fix otfgp/learn: labeller {} failed at step {}: {}", labeller_,
               update->ntimestep, payload);
  try {
    pair_->set_model(std::make_unique<otfgp::Model>(otfgp::deserialize_model(payload)));
  } catch (const std::exception &e) {
    error->all(FLERR, "fix otfgp/learn: retrained model is unusable: {}", e.what());
  }
  ++calls_;
  if (me == 0)
    utils::logmesg(lmp, "otfgp/learn: step {} max std {:.4g} eV/A > threshold {:.4g} eV/A: DFT call {}, "
                   "{} training environments\n", update->ntimestep, max_std, threshold_value(), calls_,
                   pair_->model()->n_force_environments());
}

double FixOTFGPLearn::compute_vector(int n) {
  if (n == 0) return calls_;
  if (n == 1) return pair_ ? pair_->model()->n_force_environments() : 0.0;
  return last_max_std_;
}
