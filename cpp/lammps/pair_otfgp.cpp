// pair_style otfgp: neighbour list to core environments, forces, and the force pass's variances.
#include "pair_otfgp.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <string>
#include <unordered_map>

#include "atom.h"
#include "comm.h"
#include "elements.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "metal_units.h"
#include "model_io.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

using namespace LAMMPS_NS;

namespace {

// Why a model cannot run here, or "": a Python-only baseline (an ASE calculator) is not part
// of the model's numbers, so without it the forces would be the GP's correction alone,
// silently wrong.
std::string python_only_baseline(const otfgp::Model &m) {
  if (m.external_baseline().empty()) return "";
  return "was trained on top of the Python-only baseline '" + m.external_baseline() +
         "' (an ASE calculator), which LAMMPS cannot evaluate; run it from Python "
         "(otfgp.GPCalculator), or train a model with an analytic baseline (Morse, "
         "LennardJones, ZBL) or none for LAMMPS";
}

}  // namespace

PairOTFGP *PairOTFGP::find(LAMMPS *lmp, const std::string &who) {
  if (auto *pair = dynamic_cast<PairOTFGP *>(lmp->force->pair_match("^otfgp", 0))) return pair;
  // pair_match finds nothing both without an otfgp sub-style and with several
  if (lmp->force->pair_match("^otfgp", 0, 1))
    lmp->error->all(FLERR, "{} supports one pair_style otfgp, but pair_style hybrid holds several", who);
  lmp->error->all(FLERR, "{} requires pair_style otfgp", who);
  return nullptr;
}

PairOTFGP::PairOTFGP(LAMMPS *lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;  // the virial is summed explicitly; ghosts carry no forces
  comm_forward = 1;             // the own force scales of a neighbourhood calibration
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairOTFGP::~PairOTFGP() {
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairOTFGP::settings(int narg, char **) {
  // Here, at the pair_style line: LAMMPS allows no `units` command after the box exists.
  otfgp_lammps::require_metal_units(lmp, "pair_style otfgp");
  if (narg != 0) error->all(FLERR, "Illegal pair_style otfgp command: it takes no arguments");
}

void PairOTFGP::coeff(int narg, char **arg) {
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff otfgp needs: * * model-file followed by {} species symbols "
               "(one per atom type, NULL for a type another hybrid sub-style handles), got {} arguments",
               ntypes, narg);
  if (std::string(arg[0]) != "*" || std::string(arg[1]) != "*")
    error->all(FLERR, "pair_coeff otfgp must be 'pair_coeff * * model-file symbols...'");
  if (!allocated) {
    allocated = 1;
    memory->create(setflag, ntypes + 1, ntypes + 1, "pair:setflag");
    memory->create(cutsq, ntypes + 1, ntypes + 1, "pair:cutsq");
  }
  try {
    model_ = std::make_unique<otfgp::Model>(otfgp::load_model(arg[2]));
  } catch (const std::exception &e) {
    error->all(FLERR, "pair otfgp cannot load model file {}: {}", arg[2], e.what());
  }
  if (!model_->trained())
    error->all(FLERR, "pair otfgp: model file {} holds an untrained model", arg[2]);
  const std::string unusable = python_only_baseline(*model_);
  if (!unusable.empty()) error->all(FLERR, "pair otfgp: model file {} {}", arg[2], unusable);
  model_file_ = arg[2];
  type_symbols_.assign(ntypes + 1, "");
  for (int t = 1; t <= ntypes; ++t) {
    type_symbols_[t] = arg[2 + t];
    // Alone, a NULL type would have no interactions at all; LAMMPS's own message for that
    // ("All pair coeffs are not set") would not say why.
    if (type_symbols_[t] == "NULL" && force->pair == this)
      error->all(FLERR, "pair otfgp: atom type {} is NULL, which needs pair_style hybrid or "
                 "hybrid/overlay with another sub-style for that type", t);
  }
  map_types();
  // As eam/alloy and tersoff: only pairs of mapped types are this style's, so that under
  // pair_style hybrid the NULL types' pairs must be (and can be) given to another style.
  for (int i = 1; i <= ntypes; ++i)
    for (int j = 1; j <= ntypes; ++j) setflag[i][j] = type_species_[i] >= 0 && type_species_[j] >= 0;
}

void PairOTFGP::map_types() {
  const int ntypes = atom->ntypes;
  type_species_.assign(ntypes + 1, -1);
  std::string known;
  for (int z : model_->atomic_numbers()) known += " " + std::to_string(z);
  for (int t = 1; t <= ntypes; ++t) {
    if (type_symbols_[t] == "NULL") continue;  // not ours (pair_style hybrid): stays -1
    const int z = otfgp_lammps::atomic_number(type_symbols_[t]);
    if (z == 0)
      error->all(FLERR, "pair otfgp: '{}' (atom type {}) is not a chemical symbol (or NULL)",
                 type_symbols_[t], t);
    try {
      type_species_[t] = model_->species_index(z);
    } catch (const std::exception &e) {
      error->all(FLERR, "pair otfgp: species {} of atom type {} is not in model {}: {} (under "
                 "pair_style hybrid, NULL leaves a type to another sub-style)",
                 type_symbols_[t], t, model_file_, e.what());
    }
  }
  cutmax_ = model_->interaction_cutoff();  // the GP's cutoffs and the baseline's
}

void PairOTFGP::init_style() {
  if (atom->tag_enable == 0) error->all(FLERR, "pair otfgp requires atom IDs");
  if (!model_) error->all(FLERR, "pair otfgp: pair_coeff has not been given");
  // With bonds, LAMMPS leaves pairs whose special_bonds factors are 0 out of the neighbour
  // list, and the GP would ignore factors between 0 and 1: its energy needs every pair in
  // full, which an lj factor of 1 keeps (whatever the coul factor).
  if (atom->molecular != Atom::ATOMIC)
    for (int k = 1; k < 4; ++k)
      if (force->special_lj[k] != 1.0)
        error->all(FLERR, "pair otfgp: with bonds it needs 'special_bonds lj 1 1 1' (the default 0 0 0 drops "
                   "bonded neighbours from the model's environments; the GP has no special factors)");
  neighbor->add_request(this, NeighConst::REQ_FULL);
  // LAMMPS::init() runs force->init() (which calls this) before modify->init() (the fixes'
  // and computes' init()), on every run and minimize except `run ... pre no`. Clearing the
  // requests here and having consumers register in their init() therefore leaves exactly the
  // current consumers with their current settings, and never an accumulation over runs.
  // Between two inits (`run pre no`) the registrations persist, as every other setting
  // does; a consumer deleted in between releases its handle, so none is ever called dead.
  variance_requests_.clear();
}

std::shared_ptr<const otfgp_lammps::VarianceRequest> PairOTFGP::request_variances(
    otfgp_lammps::VarianceRequest request) {
  auto handle = std::make_shared<const otfgp_lammps::VarianceRequest>(std::move(request));
  variance_requests_.push_back(handle);
  return handle;
}

double PairOTFGP::init_one(int, int) { return cutmax_; }

void PairOTFGP::set_model(std::unique_ptr<otfgp::Model> model) {
  const std::string unusable = python_only_baseline(*model);
  if (!unusable.empty()) error->all(FLERR, "pair otfgp: the new model {}", unusable);
  model_ = std::move(model);
  map_types();
  pass_step_ = -1;  // the force pass's variances belong to the old model
}

const otfgp::LocalEnvironments &PairOTFGP::environments() {
  // Identity keys by atom ID, so every periodic image of an atom shares one key (needed to
  // count an atom once when a small cell makes it its own neighbour). Atoms of NULL types
  // get no key and are neither centres nor neighbours: the model knows nothing of them.
  // (pair_style hybrid already leaves them out of this style's neighbour list; the test
  // here keeps that true for any list.)
  const double *const *x = atom->x;
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const int nall = atom->nlocal + atom->nghost;
  otfgp::LocalEnvironments &env = env_;
  env.key_species.clear();
  env.neighbors.items.clear();
  key_of_tag_.clear();
  key_of_tag_.reserve(nall);
  key_.resize(nall);
  std::vector<int> &key = key_;
  for (int j = 0; j < nall; ++j) {
    const int species = type_species_[type[j]];
    if (species < 0) {
      key[j] = -1;
      continue;
    }
    auto [it, inserted] = key_of_tag_.emplace(tag[j], static_cast<int>(env.key_species.size()));
    if (inserted) env.key_species.push_back(species);
    key[j] = it->second;
  }
  const double cut2 = cutmax_ * cutmax_;
  centres_.clear();
  env.centre_keys.clear();
  env.neighbors.offsets.assign(1, 0);
  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    if (key[i] < 0) continue;
    centres_.push_back(i);
    env.centre_keys.push_back(key[i]);
    const int *jlist = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      if (key[j] < 0) continue;
      const double r0 = x[j][0] - x[i][0], r1 = x[j][1] - x[i][1], r2 = x[j][2] - x[i][2];
      const double d2 = r0 * r0 + r1 * r1 + r2 * r2;
      if (d2 >= cut2) continue;
      env.neighbors.items.push_back({key[j], {r0, r1, r2}, std::sqrt(d2)});
    }
    env.neighbors.offsets.push_back(static_cast<int>(env.neighbors.items.size()));
  }
  return env;
}

otfgp::VarianceMode PairOTFGP::variance_mode(bool exact) const {
  const otfgp::Maps *maps = model_->maps();
  return !exact && maps && maps->has_variance() ? otfgp::VarianceMode::kMapped : otfgp::VarianceMode::kExact;
}

otfgp::VarianceMode PairOTFGP::variance_due() const {
  // On the steps a consumer will ask (e.g. output has scheduled a compute, or a fix checks
  // every N steps) the force pass computes the variance, sharing the clusters with the forces
  // instead of building them a second time. One pass computes one mode: the first due
  // request decides it (computes register before fixes, as LAMMPS inits them in that order);
  // a consumer due on the same step in the other mode gets its own pass, with equal numbers.
  const bigint step = update->ntimestep;
  for (const auto &weak : variance_requests_)
    if (const auto request = weak.lock(); request && request->due && request->due(step))
      return variance_mode(request->exact);
  return otfgp::VarianceMode::kNone;
}

bool PairOTFGP::neighbourhood_scales() const {
  return model_->variance_map(otfgp::VarianceQuantity::kForce).scales_with_neighbourhood();
}

otfgp::LocalPrediction PairOTFGP::predict(bool mean, otfgp::VarianceMode mode, const char *what) {
  otfgp::LocalPrediction p;
  try {
    p = model_->predict_local(environments(), mean, mode);
  } catch (const std::exception &e) {
    error->one(FLERR, "{}: {}", what, e.what());
  }
  if (mode != otfgp::VarianceMode::kNone && neighbourhood_scales()) complete_force_variances(p);
  return p;
}

void PairOTFGP::complete_force_variances(otfgp::LocalPrediction &p) {
  const int nall = atom->nlocal + atom->nghost;
  comm_scales_.assign(nall, std::nan(""));
  for (std::size_t ii = 0; ii < centres_.size(); ++ii) comm_scales_[centres_[ii]] = p.force_scales[ii];
  comm->forward_comm(this);
  std::vector<double> key_scales(env_.key_species.size(), std::nan(""));
  for (int j = 0; j < nall; ++j)
    if (key_[j] >= 0) key_scales[key_[j]] = comm_scales_[j];
  try {
    model_->finish_local_force_variances(env_, key_scales, p);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair otfgp: {}", e.what());
  }
}

int PairOTFGP::pack_forward_comm(int n, int *list, double *buf, int, int *) {
  for (int k = 0; k < n; ++k) buf[k] = comm_scales_[list[k]];
  return n;
}

void PairOTFGP::unpack_forward_comm(int n, int first, double *buf) {
  for (int k = 0; k < n; ++k) comm_scales_[first + k] = buf[k];
}

void PairOTFGP::compute(int eflag, int vflag) {
  ev_init(eflag, vflag);
  const otfgp::VarianceMode due = variance_due();
  const otfgp::LocalPrediction p = predict(true, due, "pair otfgp");
  double **f = atom->f;
  for (std::size_t ii = 0; ii < centres_.size(); ++ii) {
    const int i = centres_[ii];
    for (int t = 0; t < 3; ++t) f[i][t] += p.forces[3 * ii + t];
    if (eflag_global) eng_vdwl += p.energies[ii];
    if (eflag_atom) eatom[i] += p.energies[ii];
    for (int v = 0; v < 6; ++v) {
      if (vflag_global) virial[v] += p.virials[6 * ii + v];
      if (vflag_atom) vatom[i][v] += p.virials[6 * ii + v];
    }
  }
  pass_mode_ = due;
  pass_step_ = update->ntimestep;
  if (due == otfgp::VarianceMode::kNone) return;
  pass_variances_ = local_variances(p);
  const double *x = atom->x[0];
  pass_x_.assign(x, x + 3 * static_cast<std::size_t>(atom->nlocal));
}

std::vector<double> PairOTFGP::local_order(const std::vector<double> &per_centre, int cols) const {
  // Atoms that are no centre of this style (NULL types) keep 0.
  std::vector<double> out(cols * static_cast<std::size_t>(atom->nlocal), 0.0);
  for (std::size_t ii = 0; ii < centres_.size(); ++ii) {
    const int i = centres_[ii];
    for (int t = 0; t < cols; ++t) out[cols * i + t] = per_centre[cols * ii + t];
  }
  return out;
}

otfgp_lammps::AtomVariances PairOTFGP::local_variances(const otfgp::LocalPrediction &p) const {
  return {local_order(p.force_variances, 3), local_order(p.latent_force_variances, 3),
          local_order(p.energy_variances, 1), local_order(p.latent_energy_variances, 1)};
}

const otfgp_lammps::AtomVariances &PairOTFGP::variances(bool exact) {
  const otfgp::VarianceMode mode = variance_mode(exact);
  // The force pass's variances hold if they are of this step and mode and no atom has moved
  // since (a fix could move atoms between the force pass and the output).
  const double *x = atom->x[0];
  const std::size_t n3 = 3 * static_cast<std::size_t>(atom->nlocal);
  int reuse = pass_mode_ == mode && pass_step_ == update->ntimestep && pass_x_.size() == n3 &&
              std::equal(pass_x_.begin(), pass_x_.end(), x);
  // A neighbourhood calibration communicates while predicting, so all processes must agree
  // on whether to predict again.
  if (neighbourhood_scales()) {
    int all = 0;
    MPI_Allreduce(&reuse, &all, 1, MPI_INT, MPI_MIN, world);
    reuse = all;
  }
  if (reuse) return pass_variances_;
  const otfgp::LocalPrediction p = predict(false, mode, "otfgp uncertainty");
  // Kept like a force pass's, so that a second consumer on this step reuses them.
  pass_variances_ = local_variances(p);
  pass_mode_ = mode;
  pass_step_ = update->ntimestep;
  pass_x_.assign(x, x + n3);
  return pass_variances_;
}
