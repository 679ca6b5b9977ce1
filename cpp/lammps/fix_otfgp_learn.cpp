// fix otfgp/learn: keyword parsing, the every-N-steps uncertainty test and the MPI side of a
// DFT call; the learning rule itself is Python's (otfgp.lammps.learn, via python_bridge).
#include "fix_otfgp_learn.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "metal_units.h"
#include "model_io.h"
#include "modify.h"
#include "pair_otfgp.h"
#include "update.h"
#include "utils.h"

using namespace LAMMPS_NS;
using namespace FixConst;

namespace {

// Returns on every rank once rank 0 has called it, the other ranks sleeping meanwhile.
// A blocking collective (MPI_Bcast, MPI_Barrier) busy-polls in MPICH: while rank 0 runs a
// DFT call of minutes, every other rank would burn a core that pw.x could use. A
// non-blocking barrier tested between sleeps costs no CPU; the sleep grows from 1 ms to
// 50 ms, so a quick call (EMT, an import) adds about a millisecond and a long one at most
// 50 ms, nothing against the DFT.
void idle_until_rank0_arrives(MPI_Comm world, int me) {
  MPI_Request arrived;
  MPI_Ibarrier(world, &arrived);
  if (me == 0) {
    MPI_Wait(&arrived, MPI_STATUS_IGNORE);  // the others are already in: returns at once
    return;
  }
  constexpr std::chrono::milliseconds kLongestSleep{50};
  std::chrono::microseconds sleep{1000};
  for (int done = 0;;) {
    MPI_Test(&arrived, &done, MPI_STATUS_IGNORE);
    if (done) return;
    std::this_thread::sleep_for(sleep);
    sleep = std::min<std::chrono::microseconds>(2 * sleep, kLongestSleep);
  }
}

// Broadcasts a string from rank 0 (resized on the others).
void broadcast(std::string &s, MPI_Comm world) {
  long size = static_cast<long>(s.size());
  MPI_Bcast(&size, 1, MPI_LONG, 0, world);
  s.resize(size);
  MPI_Bcast(s.data(), static_cast<int>(size), MPI_CHAR, 0, world);
}

// Broadcasts rank 0's thresholds.
void broadcast(otfgp_lammps::Thresholds &t, MPI_Comm world) {
  double values[3] = {t.force, t.local_energy ? 1.0 : 0.0, t.local_energy.value_or(0.0)};
  MPI_Bcast(values, 3, MPI_DOUBLE, 0, world);
  t.force = values[0];
  t.local_energy.reset();
  if (values[1] != 0.0) t.local_energy = values[2];
}

// The option a label-check keyword sets (nullptr: not such a keyword); the values are
// checked by Python (otfgp.learning.LearningOptions).
std::optional<double> *label_check(otfgp_lammps::LearnOptions &o, const std::string &key) {
  if (key == "label_max_force") return &o.label_max_force;
  if (key == "label_max_energy_per_atom") return &o.label_max_energy_per_atom;
  if (key == "label_max_stress") return &o.label_max_stress;
  if (key == "label_energy_jump") return &o.label_energy_jump;
  if (key == "label_max_z") return &o.label_max_z;
  if (key == "label_z_min_error") return &o.label_z_min_error;
  return nullptr;
}

}  // namespace

FixOTFGPLearn::FixOTFGPLearn(LAMMPS *lmp, int narg, char **arg) : Fix(lmp, narg, arg) {
  if (narg < 4) error->all(FLERR, "fix otfgp/learn needs: ID group otfgp/learn N keyword value ...");
  otfgp_lammps::require_metal_units(lmp, "fix otfgp/learn");
  nevery = utils::inumeric(FLERR, arg[3], false, lmp);
  if (nevery < 1) error->all(FLERR, "fix otfgp/learn: N must be a positive integer");
  setup_.fix_id = id;
  setup_.output_dir = "otfgp_learn";
  parse_keywords(narg - 4, arg + 4);
  vector_flag = 1;
  size_vector = 4;
  global_freq = 1;
  extvector = 0;
}

void FixOTFGPLearn::parse_keywords(int narg, char **arg) {
  // The spellings before the keywords took the Python learner's names; accepted for one
  // release with a warning. `relative yes` turned `threshold X` into relative_threshold X.
  static constexpr std::pair<const char *, const char *> kRenamed[] = {
      {"max_atoms", "max_atoms_added"}, {"energy", "add_energy"}, {"stress", "add_stress"},
      {"optimize_until", "optimize_until_calls"}, {"output", "output_dir"}};
  const auto deprecated = [this](const std::string &old_use, const std::string &new_use) {
    if (comm->me == 0)
      error->warning(FLERR, "fix otfgp/learn: '{}' is deprecated, use '{}'", old_use, new_use);
  };
  otfgp_lammps::LearnOptions &o = setup_.options;
  bool relative = false;
  for (int i = 0; i < narg; i += 2) {
    std::string key = arg[i];
    if (i + 1 >= narg) error->all(FLERR, "fix otfgp/learn: keyword {} needs a value", key);
    const char *value = arg[i + 1];
    for (const auto &[old_name, new_name] : kRenamed)
      if (key == old_name) {
        deprecated(key, new_name);
        key = new_name;
      }
    const auto real = [&] { return utils::numeric(FLERR, value, false, lmp); };
    const auto integer = [&] { return utils::inumeric(FLERR, value, false, lmp); };
    const auto yes_no = [&] { return utils::logical(FLERR, value, false, lmp) == 1; };
    const auto one_of = [&](const char *a, const char *b) {
      const std::string v = value;
      if (v != a && v != b) error->all(FLERR, "fix otfgp/learn: {} must be {} or {}, got {}", key, a, b, v);
      return v;
    };
    if (key == "threshold") {
      o.threshold = real();
    } else if (key == "relative_threshold") {
      o.relative_threshold = real();
    } else if (key == "relative") {
      relative = yes_no();
      deprecated(std::string("relative ") + value,
                 relative ? "relative_threshold X' instead of 'threshold X" : "threshold X");
    } else if (key == "min_threshold") {
      o.min_threshold = real();
    } else if (key == "add_threshold") {
      o.add_threshold = real();
    } else if (key == "max_atoms_added") {
      o.max_atoms_added = integer();
    } else if (key == "add_energy") {
      o.add_energy = yes_no();
    } else if (key == "add_stress") {
      o.add_stress = yes_no();
    } else if (key == "optimize_until_calls") {
      o.optimize_until_calls = integer();
    } else if (key == "map") {
      o.map = yes_no();
    } else if (key == "uncertainty") {
      // Parsed here too: the fix must know which variance to ask the pair for.
      o.uncertainty = one_of("exact", "mapped");
      mapped_uncertainty_ = *o.uncertainty == "mapped";
    } else if (key == "force_decision") {
      // Parsed here too: the fix compares the force std itself.
      o.force_decision = one_of("latent", "calibrated");
      latent_force_decision_ = *o.force_decision == "latent";
    } else if (key == "calibration") {
      o.calibration = std::string(value);  // a form or none, checked by Python
    } else if (key == "audit_every") {
      // A schedule, like N: the fix's own (Python's learning rule is the same for audits).
      audit_every_ = utils::bnumeric(FLERR, value, false, lmp);
      if (audit_every_ < 1 || audit_every_ % nevery != 0)
        error->all(FLERR, "fix otfgp/learn: audit_every must be a positive multiple of N ({}), got {}",
                   nevery, audit_every_);
    } else if (std::optional<double> *check = label_check(o, key)) {
      // `none` switches a check off: infinity, which no label exceeds (Python's rule too).
      *check = std::string(value) == "none" ? std::numeric_limits<double>::infinity() : real();
    } else if (key == "scalable_after") {
      o.scalable_after = integer();  // checked by Python (a positive number of environments)
    } else if (key == "scalable_model") {
      setup_.scalable_model = value;
    } else if (key == "output_dir") {
      setup_.output_dir = value;
    } else if (key == "labeller") {
      setup_.labeller = value;
    } else {
      error->all(FLERR, "fix otfgp/learn: unknown keyword {}", key);
    }
  }
  if (relative && o.threshold && !o.relative_threshold) {
    o.relative_threshold = o.threshold;
    o.threshold.reset();
  }
  if (o.threshold.has_value() == o.relative_threshold.has_value())
    error->all(FLERR, "fix otfgp/learn: give exactly one of 'threshold X' (eV/A) and "
               "'relative_threshold X' (x sigma_n)");
  // The labeller (module:function or a registered name such as emt) is checked by Python's
  // labeller registry in init(), where a labeller that does not import is reported too.
  if (setup_.labeller.empty()) error->all(FLERR, "fix otfgp/learn: give 'labeller module:function'");
}

int FixOTFGPLearn::setmask() { return END_OF_STEP; }

std::optional<std::string> FixOTFGPLearn::on_rank0(const std::function<void()> &call) const {
  int failed = 0;
  std::string message;
  if (comm->me == 0) {
    try {
      call();
    } catch (const std::exception &e) {
      failed = 1;
      message = e.what();
    }
  }
  idle_until_rank0_arrives(world, comm->me);
  MPI_Bcast(&failed, 1, MPI_INT, 0, world);
  if (!failed) return std::nullopt;
  broadcast(message, world);
  return message;
}

void FixOTFGPLearn::init() {
  pair_ = PairOTFGP::find(lmp, "fix otfgp/learn");
  // Each fix retrains its own copy of the pair's model and then replaces the pair's model
  // and file with it: two would discard each other's labels at every DFT call.
  if (modify->get_fix_by_style("^otfgp/learn$").size() > 1)
    error->all(FLERR, "fix otfgp/learn: only one otfgp/learn fix may learn the pair's model; unfix the others");
  // A 2-d box is one layer in a z-periodic cell of thickness zprd: a labeller given that
  // cell labels a stack of layers zprd apart, not the system LAMMPS simulates.
  if (domain->dimension == 2)
    error->all(FLERR, "fix otfgp/learn: dimension 2 is not supported (the labeller would see a 3-d periodic "
               "stack of layers); simulate a slab in 3-d with vacuum instead");
  // The labeller labels the whole system and the model learns all of it, so every type
  // must be a species of the model.
  const std::vector<std::string> &symbols = pair_->type_symbols();
  for (std::size_t t = 1; t < symbols.size(); ++t)
    if (symbols[t] == "NULL")
      error->all(FLERR, "fix otfgp/learn: atom type {} is NULL in pair_coeff otfgp; on-the-fly "
                 "learning needs every atom type mapped to a species of the model", t);
  request_variances();
  // Every run: the pair's model (file) may have changed since the last one, and so may the
  // fixes that change the box (Domain::init, which sets box_change, runs before the fixes').
  setup_.model_file = pair_->model_file();
  setup_.cell_changes = domain->box_change != 0;
  if (const auto failure = on_rank0([this] {
        thresholds_ = otfgp_lammps::python_start(setup_);
        training_environments_ = otfgp_lammps::python_training_environments(setup_);
      }))
    error->all(FLERR, "fix otfgp/learn: {}", *failure);
  broadcast(thresholds_, world);
  MPI_Bcast(&training_environments_, 1, MPI_LONG, 0, world);
}

void FixOTFGPLearn::request_variances() {
  // The check of end_of_step(), every N steps; exact unless the mapped variance is asked for
  // or the model is mapped-only (an exported ScalableGP): it has no exact GP variance, and
  // its maps are the ScalableGP's own variance (to rounding), so they are the exact one.
  exact_variance_ = !mapped_uncertainty_ && !pair_->model()->mapped_only();
  variance_request_ = pair_->request_variances({[this](bigint step) { return step % nevery == 0; }, exact_variance_});
}

void FixOTFGPLearn::setup(int) {
  // The stds of the starting configuration, so that f_ID[3] and f_ID[4] are meaningful in
  // the first thermo row (LAMMPS sets fixes up after the setup force pass and before that
  // output). Only measured: DFT is still first considered at the first N-th step.
  measure_uncertainty();
}

std::vector<double> FixOTFGPLearn::measure_uncertainty() {
  const int nlocal = atom->nlocal;
  // The decision uses the exact GP variance unless the mapped one is asked for; for forces
  // the latent or the epistemic std (force_decision), for local energies the epistemic part
  // of the calibrated std (what a DFT call can reduce), as the Python learner does.
  const otfgp_lammps::AtomVariances &var = pair_->variances(exact_variance_);
  std::vector<double> force(var.latent_force), local_energy(var.latent_local_energy.size());
  const otfgp::Model &model = *pair_->model();
  if (!latent_force_decision_)
    model.epistemic_variances(otfgp::VarianceQuantity::kForce, force.size(), var.latent_force.data(), force.data());
  model.epistemic_variances(otfgp::VarianceQuantity::kLocalEnergy, local_energy.size(),
                            var.latent_local_energy.data(), local_energy.data());
  std::vector<double> per_atom(nlocal, 0.0);
  double local_max[2] = {0.0, 0.0};  // force, local energy
  for (int i = 0; i < nlocal; ++i) {
    if (!(atom->mask[i] & groupbit)) continue;
    for (int t = 0; t < 3; ++t) per_atom[i] = std::max(per_atom[i], std::sqrt(force[3 * i + t]));
    local_max[0] = std::max(local_max[0], per_atom[i]);
    local_max[1] = std::max(local_max[1], std::sqrt(local_energy[i]));
  }
  double global_max[2];
  MPI_Allreduce(local_max, global_max, 2, MPI_DOUBLE, MPI_MAX, world);
  last_max_std_ = global_max[0];
  last_max_local_energy_std_ = global_max[1];
  return per_atom;
}

void FixOTFGPLearn::end_of_step() {
  const std::vector<double> per_atom = measure_uncertainty();
  const bool audit = audit_every_ > 0 && update->ntimestep % audit_every_ == 0;
  const char *fired = nullptr;
  if (last_max_std_ > thresholds_.force)
    fired = "force";
  else if (thresholds_.local_energy && last_max_local_energy_std_ > *thresholds_.local_energy)
    fired = "local_energy";
  else if (audit)
    fired = "audit";
  if (fired) learn(per_atom.data(), fired);
}

void FixOTFGPLearn::learn(const double *per_atom_max, const char *fired) {
  const bool audit = std::string(fired) == "audit";
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

  otfgp_lammps::LearnResult result;
  const auto failure = on_rank0([&] {
    const std::size_t n = all_std.size();
    std::vector<std::size_t> order(n);
    for (std::size_t k = 0; k < n; ++k) order[k] = k;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return all[5 * a] < all[5 * b]; });
    otfgp_lammps::LearnRequest req;
    static_cast<otfgp_lammps::StartRequest &>(req) = setup_;
    req.type_symbols = pair_->type_symbols();
    req.step = static_cast<long>(update->ntimestep);
    for (std::size_t k : order) {
      req.types.push_back(static_cast<int>(all[5 * k + 1]));
      for (int t = 0; t < 3; ++t) req.positions.push_back(all[5 * k + 2 + t] - domain->boxlo[t]);
      req.stds.push_back(all_std[k]);
    }
    req.cell = {domain->xprd, 0.0, 0.0, domain->xy, domain->yprd, 0.0, domain->xz, domain->yz, domain->zprd};
    req.pbc = {domain->periodicity[0], domain->periodicity[1], domain->periodicity[2]};
    req.max_std = last_max_std_;
    req.max_local_energy_std = last_max_local_energy_std_;
    req.fired = fired;
    req.audit = audit;
    result = otfgp_lammps::python_learn(req);
    training_environments_ = otfgp_lammps::python_training_environments(setup_);
  });
  if (failure)
    error->all(FLERR, "fix otfgp/learn: DFT call at step {}: {}", update->ntimestep, *failure);
  broadcast(result.model, world);
  broadcast(result.thresholds, world);
  MPI_Bcast(&training_environments_, 1, MPI_LONG, 0, world);
  try {
    pair_->set_model(std::make_unique<otfgp::Model>(otfgp::deserialize_model(result.model)));
  } catch (const std::exception &e) {
    error->all(FLERR, "fix otfgp/learn: retrained model is unusable: {}", e.what());
  }
  // The model may have become mapped-only (the automatic switch to a ScalableGP).
  if (exact_variance_ != (!mapped_uncertainty_ && !pair_->model()->mapped_only())) request_variances();
  ++calls_;
  if (comm->me == 0) {
    // Which test fired, with both stds against their thresholds.
    const bool force_fired = std::string(fired) == "force";
    std::string local_energy = "no local-energy test";
    if (thresholds_.local_energy)
      local_energy = fmt::format("max local-energy std {:.4g} eV {} threshold {:.4g} eV", last_max_local_energy_std_,
                                 last_max_local_energy_std_ > *thresholds_.local_energy ? ">" : "<=",
                                 *thresholds_.local_energy);
    utils::logmesg(lmp, "otfgp/learn: step {} {} test fired: max force std {:.4g} eV/A {} threshold {:.4g} eV/A, "
                   "{}: DFT call {}{}, {} training environments\n", update->ntimestep, fired,
                   last_max_std_, force_fired ? ">" : "<=", thresholds_.force, local_energy, calls_,
                   audit ? " (audit)" : "", training_environments_);
  }
  thresholds_ = result.thresholds;
}

double FixOTFGPLearn::compute_vector(int n) {
  if (n == 0) return calls_;
  if (n == 1) return static_cast<double>(training_environments_);
  if (n == 2) return last_max_std_;
  return last_max_local_energy_std_;
}
