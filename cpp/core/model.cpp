// The model's training side: species, hyperparameters and energy offsets, the labelled
// training structures and their label groups, covariance assembly between label groups,
// and installing a solution (alpha, Cholesky factor) or maps. Prediction from that
// solution is in model_predict.cpp.
#include "model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "errors.h"
#include "label_groups.h"
#include "neighbors.h"

namespace otfgp {

std::array<double, 7> Hyperparameters::as_array() const {
  return {sigma2, ell2, sigma3, ell3, noise_force, noise_energy, noise_stress};
}

Hyperparameters Hyperparameters::from_array(const std::array<double, 7>& a) {
  return {a[0], a[1], a[2], a[3], a[4], a[5], a[6]};
}

Model::Model(std::vector<int> atomic_numbers, double cutoff2, double cutoff3)
    : atomic_numbers_(std::move(atomic_numbers)), cutoff2_(cutoff2), cutoff3_(cutoff3) {
  if (atomic_numbers_.empty()) throw InputError("the model needs at least one species");
  for (std::size_t a = 0; a < atomic_numbers_.size(); ++a) {
    if (atomic_numbers_[a] < 1 || atomic_numbers_[a] > 118)
      throw InputError("invalid atomic number " + std::to_string(atomic_numbers_[a]));
    for (std::size_t b = 0; b < a; ++b)
      if (atomic_numbers_[a] == atomic_numbers_[b])
        throw InputError("species " + std::to_string(atomic_numbers_[a]) + " listed twice");
  }
  if (!std::isfinite(cutoff2) || !std::isfinite(cutoff3) || cutoff2 < 0 || cutoff3 < 0 ||
      (cutoff2 == 0 && cutoff3 == 0))
    throw InputError("cutoffs must be positive (0 disables one body order, not both); got " +
                     std::to_string(cutoff2) + " and " + std::to_string(cutoff3));
  if (cutoff2 > 0 && cutoff2 <= kMinDistance)
    throw InputError("2-body cutoff must exceed " + std::to_string(kMinDistance) + " Angstrom");
  if (cutoff3 > 0 && cutoff3 <= kMinDistance)
    throw InputError("3-body cutoff must exceed " + std::to_string(kMinDistance) + " Angstrom");
  energy_offsets_.assign(atomic_numbers_.size(), 0.0);
}

int Model::species_index(int z) const {
  for (std::size_t a = 0; a < atomic_numbers_.size(); ++a)
    if (atomic_numbers_[a] == z) return static_cast<int>(a);
  std::string known;
  for (int k : atomic_numbers_) known += (known.empty() ? "" : ", ") + std::to_string(k);
  throw InputError("unknown species: atomic number " + std::to_string(z) +
                   " is not in the model (model species: " + known + ")");
}

void Model::set_hyperparameters(const Hyperparameters& h) {
  static const char* names[7] = {"sigma2", "ell2", "sigma3", "ell3",
                                 "noise_force", "noise_energy", "noise_stress"};
  const auto a = h.as_array();
  for (int k = 0; k < 7; ++k)
    if (!std::isfinite(a[k]) || a[k] <= 0)
      throw InputError(std::string("hyperparameter ") + names[k] +
                       " must be positive and finite, got " + std::to_string(a[k]));
  hyper_ = h;
  invalidate_solution();
}

void Model::invalidate_solution() {
  trained_ = false;
  mapped_only_ = false;
  maps_.reset();
}

void Model::set_energy_offsets(const std::vector<double>& e) {
  if (e.size() != atomic_numbers_.size())
    throw InputError("energy offsets need one value per species");
  for (double v : e)
    if (!std::isfinite(v)) throw InputError("energy offsets must be finite");
  energy_offsets_ = e;
  // The offsets are subtracted from the energy-row targets, so they change the solution only
  // when there are energy rows; without them they are a pure reference shift (fitted after
  // training, see GaussianProcess.set_energy_reference) and the solution and maps stay valid.
  const bool energy_rows =
      std::find(row_kinds_.begin(), row_kinds_.end(), static_cast<int>(kEnergyRow)) != row_kinds_.end();
  if (energy_rows) invalidate_solution();
}

void Model::append_labels(int si, const BaselineResult& base) {
  const TrainingStructure& t = training_[si];
  const double volume = t.structure.volume();
  // The external baseline's values come in row order (t.prior); index them as rows append.
  const std::size_t first = labels_.size();
  const auto prior = [&]() { return t.prior.empty() ? 0.0 : t.prior[labels_.size() - first]; };
  for (std::size_t k = 0; k < t.force_atoms.size(); ++k)
    for (int r = 0; r < 3; ++r) {
      const double b = baseline_ ? base.forces[3 * t.force_atoms[k] + r] : prior();
      labels_.push_back(t.forces[3 * k + r] - b);
      row_kinds_.push_back(kForceRow);
      row_structures_.push_back(si);
    }
  if (t.has_energy) {
    labels_.push_back(t.energy - (baseline_ ? base.energy : prior()));
    row_kinds_.push_back(kEnergyRow);
    row_structures_.push_back(si);
  }
  if (t.has_stress)
    for (int r = 0; r < 6; ++r) {
      labels_.push_back(t.stress[r] - (baseline_ ? base.virial[r] / volume : prior()));
      row_kinds_.push_back(kStressRow);
      row_structures_.push_back(si);
    }
}

void Model::set_external_baseline(std::string spec) {
  if (spec == external_baseline_) return;
  if (!training_.empty())
    throw InputError("the external baseline is set on a model without training data (the "
                     "stored targets depend on it)");
  if (!spec.empty() && baseline_)
    throw InputError("a model has one baseline: it already has an analytic one, so it cannot "
                     "also take the external baseline '" + spec + "'");
  external_baseline_ = std::move(spec);
  invalidate_solution();
}

void Model::set_baseline(std::optional<BaselineSpec> spec) {
  if (spec && !external_baseline_.empty())
    throw InputError("a model has one baseline: it already has the external baseline '" +
                     external_baseline_ + "', so it cannot also take an analytic one");
  std::optional<PairBaseline> b;
  if (spec) b.emplace(std::move(*spec), atomic_numbers_);  // validates: nothing changed yet
  // Evaluate on every training structure first, so that a failure (e.g. a neighbour limit
  // at the baseline cutoff) leaves the model unchanged.
  std::vector<BaselineResult> base(training_.size());
  if (b)
    for (std::size_t si = 0; si < training_.size(); ++si) base[si] = b->evaluate(training_[si].structure);
  baseline_ = std::move(b);
  labels_.clear();
  row_kinds_.clear();
  row_structures_.clear();
  for (std::size_t si = 0; si < training_.size(); ++si) append_labels(static_cast<int>(si), base[si]);
  invalidate_solution();
}

double Model::interaction_cutoff() const {
  const double gp = std::max(cutoff2_, cutoff3_);
  return baseline_ ? std::max(gp, baseline_->cutoff()) : gp;
}

ClusterSet Model::clusters_of(const Structure& s) const {
  validate_structure(s, n_species());
  const NeighborList nl = build_neighbor_list(s, std::max(cutoff2_, cutoff3_), kMinDistance);
  return build_clusters(s, nl, cutoff2_, cutoff3_, n_species());
}

std::vector<LabelGroup> Model::groups_of(const TrainingStructure& ts) const {
  const ClusterSet cs = clusters_of(ts.structure);
  std::vector<LabelGroup> out;
  for (int a : ts.force_atoms) out.push_back(atom_group(cs, a, a, cutoff2_, cutoff3_, false, n_species()));
  if (ts.has_energy || ts.has_stress)
    out.push_back(structure_group(cs, ts.structure.volume(), cutoff2_, cutoff3_,
                                  ts.has_energy, ts.has_stress, n_species()));
  return out;
}

int Model::n_force_environments() const {
  int n = 0;
  for (const auto& ts : training_) n += static_cast<int>(ts.force_atoms.size());
  return n;
}

void Model::add_training_structure(TrainingStructure ts) {
  if (mapped_only_)
    throw InputError("this model is only the maps of an exported ScalableGP and takes no training data: "
                     "add the data to the ScalableGP, train it and export it again");
  const Structure& s = ts.structure;
  validate_structure(s, n_species());
  const int n = static_cast<int>(s.size());
  if (ts.forces.size() != 3 * ts.force_atoms.size())
    throw InputError("force labels must have shape (" + std::to_string(ts.force_atoms.size()) +
                     ", 3), got " + std::to_string(ts.forces.size()) + " values");
  std::vector<char> seen(n, 0);
  for (int a : ts.force_atoms) {
    if (a < 0 || a >= n)
      throw InputError("atom index " + std::to_string(a) + " out of range for " +
                       std::to_string(n) + " atoms");
    if (seen[a]++) throw InputError("atom index " + std::to_string(a) + " given twice");
  }
  for (double f : ts.forces)
    if (!std::isfinite(f)) throw InputError("force labels contain NaN or inf");
  if (ts.has_energy && !std::isfinite(ts.energy)) throw InputError("energy label is not finite");
  if (ts.has_stress) {
    for (double v : ts.stress)
      if (!std::isfinite(v)) throw InputError("stress label contains NaN or inf");
    if (s.volume() < 1e-8 || !(s.pbc[0] && s.pbc[1] && s.pbc[2]))
      throw InputError("a stress label needs a fully periodic cell with a volume");
  }
  if (ts.force_atoms.empty() && !ts.has_energy && !ts.has_stress)
    throw InputError("no labels: give force atoms, an energy or a stress");
  const std::size_t rows = 3 * ts.force_atoms.size() + (ts.has_energy ? 1 : 0) + (ts.has_stress ? 6 : 0);
  if (external_baseline_.empty() && !ts.prior.empty())
    throw InputError("baseline values given for a model without an external baseline");
  if (!external_baseline_.empty() && ts.prior.size() != rows)
    throw InputError("the external baseline '" + external_baseline_ + "' needs its value of each of the " +
                     std::to_string(rows) + " label rows, got " + std::to_string(ts.prior.size()));
  for (double v : ts.prior)
    if (!std::isfinite(v)) throw InputError("the external baseline's values contain NaN or inf");
  std::vector<LabelGroup> groups = groups_of(ts);  // may throw: nothing changed yet
  const BaselineResult base = baseline_ ? baseline_->evaluate(ts.structure) : BaselineResult{};
  training_.push_back(std::move(ts));
  append_labels(static_cast<int>(training_.size()) - 1, base);
  for (auto& g : groups) {
    group_offsets_.push_back(group_offsets_.back() + g.rows);
    groups_.push_back(std::move(g));
  }
  invalidate_solution();
}

void Model::covariance(int g0, int g1, int h0, int h1, double ell2, double ell3, double* K2,
                       double* K3, double* dK2, double* dK3) const {
  const int ng = n_groups();
  if (g0 < 0 || g1 > ng || g0 > g1 || h0 < 0 || h1 > ng || h0 > h1)
    throw InputError("group range out of bounds");
  if (!(std::isfinite(ell2) && ell2 > 0 && std::isfinite(ell3) && ell3 > 0))
    throw InputError("length scales must be positive and finite, got " + std::to_string(ell2) +
                     " and " + std::to_string(ell3));
  const bool grad = dK2 != nullptr && dK3 != nullptr;
  const bool symmetric = g0 == h0 && g1 == h1;
  const int ncols = group_offsets_[h1] - group_offsets_[h0];
  const int nrows = group_offsets_[g1] - group_offsets_[g0];
  std::vector<std::pair<int, int>> tasks;
  for (int g = g0; g < g1; ++g)
    for (int h = symmetric ? g : h0; h < h1; ++h) tasks.emplace_back(g, h);
  const std::size_t total = static_cast<std::size_t>(nrows) * ncols;
  std::fill(K2, K2 + total, 0.0);
  std::fill(K3, K3 + total, 0.0);
  if (grad) {
    std::fill(dK2, dK2 + total, 0.0);
    std::fill(dK3, dK3 + total, 0.0);
  }
  const long ntasks = static_cast<long>(tasks.size());
#pragma omp parallel
  {
    std::vector<double> b2, b3, e2, e3;
#pragma omp for schedule(dynamic, 1)
    for (long t = 0; t < ntasks; ++t) {
      const auto [g, h] = tasks[t];
      const LabelGroup& G = groups_[g];
      const LabelGroup& H = groups_[h];
      const std::size_t bs = static_cast<std::size_t>(G.rows) * H.rows;
      b2.assign(bs, 0.0);
      b3.assign(bs, 0.0);
      e2.assign(grad ? bs : 0, 0.0);
      e3.assign(grad ? bs : 0, 0.0);
      group_kernels(G, H, ell2, ell3, b2.data(), b3.data(), grad ? e2.data() : nullptr,
                    grad ? e3.data() : nullptr);
      if (g == h) {
        // A diagonal block is symmetric in exact arithmetic; make it so in floating point.
        for (auto* buf : {&b2, &b3, &e2, &e3}) {
          if (buf->empty()) continue;
          for (int r = 0; r < G.rows; ++r)
            for (int c = r + 1; c < G.rows; ++c) {
              double& x = (*buf)[static_cast<std::size_t>(r) * G.rows + c];
              double& y = (*buf)[static_cast<std::size_t>(c) * G.rows + r];
              x = y = 0.5 * (x + y);
            }
        }
      }
      const int r0 = group_offsets_[g] - group_offsets_[g0];
      const int c0 = group_offsets_[h] - group_offsets_[h0];
      for (int r = 0; r < G.rows; ++r)
        for (int c = 0; c < H.rows; ++c) {
          const std::size_t src = static_cast<std::size_t>(r) * H.rows + c;
          const std::size_t dst = static_cast<std::size_t>(r0 + r) * ncols + (c0 + c);
          K2[dst] = b2[src];
          K3[dst] = b3[src];
          if (grad) {
            dK2[dst] = e2[src];
            dK3[dst] = e3[src];
          }
          if (symmetric && g != h) {  // mirror: the kernel is symmetric by construction
            const std::size_t mir = static_cast<std::size_t>(c0 + c) * ncols + (r0 + r);
            K2[mir] = b2[src];
            K3[mir] = b3[src];
            if (grad) {
              dK2[mir] = e2[src];
              dK3[mir] = e3[src];
            }
          }
        }
    }
  }
}

void Model::set_solution(std::vector<double> alpha, std::vector<double> cholesky) {
  const std::size_t n = labels_.size();
  if (n == 0) throw InputError("no training data");
  if (alpha.size() != n) throw InputError("alpha has the wrong length");
  if (cholesky.size() != n * n) throw InputError("Cholesky factor has the wrong shape");
  for (double v : alpha)
    if (!std::isfinite(v)) throw InputError("alpha contains NaN or inf");
  for (std::size_t i = 0; i < n; ++i)
    if (!(cholesky[i * n + i] > 0)) throw InputError("Cholesky factor has a non-positive diagonal");
  alpha_ = std::move(alpha);
  cholesky_ = std::move(cholesky);
  invalidate_solution();  // the maps tabulate the old solution; trained once contracted below
  // Contract the training side once: each training cluster gets the alpha-weighted sum of
  // its row coefficients, so the mean costs one kernel sweep per test cluster.
  contracted2_ = KernelBlock(1, 1);
  contracted3_ = KernelBlock(3, 1);
  for (int g = 0; g < n_groups(); ++g) {
    const LabelGroup& G = groups_[g];
    const double* a = alpha_.data() + group_offsets_[g];
    for (auto [src, dst] : {std::pair<const KernelBlock*, KernelBlock*>{&G.two, &contracted2_},
                            {&G.three, &contracted3_}}) {
      const int D = src->dim, stride = src->rows * (1 + D);
      for (int c = 0; c < src->size(); ++c) {
        double* out = dst->add(src->type[c], src->desc.data() + static_cast<std::size_t>(c) * D);
        for (int r = 0; r < src->rows; ++r)
          for (int k = 0; k <= D; ++k) out[k] += a[r] * src->coef[c * stride + r * (1 + D) + k];
      }
    }
  }
  contracted2_.finalize(n_species());
  contracted3_.finalize(n_species());
  trained_ = true;
}

void Model::set_maps(Maps maps) {
  if (!trained_) throw NotTrainedError("maps tabulate a trained model: train it first");
  for (const auto& t : maps.tables()) {
    t.validate(n_species());
    const double rc = t.dim == 1 ? cutoff2_ : cutoff3_;
    if (!(rc > 0)) throw InputError("a spline table for a body order the model does not use");
    if (std::abs(t.hi - rc) > 1e-9 * rc)
      throw InputError("a spline table must end at the cutoff " + std::to_string(rc) + ", not " +
                       std::to_string(t.hi));
  }
  maps_ = std::move(maps);
}

void Model::set_mapped_only(Maps maps) {
  if (n_labels() != 0) throw InputError("a mapped-only model has no training data; this one has labels");
  if (!maps.all_basis_means() || !maps.has_variance())
    throw InputError("a mapped-only model needs every table's mean in the variance basis and the covariance");
  for (int dim : {1, 3}) {
    const double rc = dim == 1 ? cutoff2_ : cutoff3_;
    if (!(rc > 0)) continue;
    const auto count = std::count_if(maps.tables().begin(), maps.tables().end(),
                                     [dim](const SplineTable& t) { return t.dim == dim; });
    // No table would mean the exact GP's mean, which a model without data does not have.
    const long ns = n_species();  // unordered species pairs / triples (types are a <= b <= c)
    const long types = dim == 1 ? ns * (ns + 1) / 2 : ns * (ns + 1) * (ns + 2) / 6;
    if (count != types)
      throw InputError("a mapped-only model needs a table for every " + std::string(dim == 1 ? "pair" : "triplet") +
                       " type");
  }
  trained_ = true;  // set_maps requires it, and checks that the tables fit the model
  try {
    set_maps(std::move(maps));
  } catch (...) {
    trained_ = false;
    throw;
  }
  contracted2_ = KernelBlock(1, 1);
  contracted3_ = KernelBlock(3, 1);
  contracted2_.finalize(n_species());
  contracted3_.finalize(n_species());
  mapped_only_ = true;
}

void Model::set_calibration(Calibration c) {
  c.validate();
  // An MD code's environments hold neighbours up to the interaction cutoff only, so a wider
  // neighbourhood would be averaged over fewer atoms there than in a whole-structure prediction.
  const double cut = std::max(cutoff2_, cutoff3_);
  for (const VarianceMap* vm : {&c.force, &c.energy, &c.stress, &c.local_energy})
    if (vm->radius > cut)
      throw InputError("calibration: the force-scale radius " + std::to_string(vm->radius) +
                       " A exceeds the model's cutoff " + std::to_string(cut) + " A");
  calibration_ = std::move(c);
}

}  // namespace otfgp
