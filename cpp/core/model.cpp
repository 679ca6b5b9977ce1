#include "model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "cutoff.h"
#include "errors.h"
#include "kernels.h"
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
  trained_ = false;
}

void Model::set_energy_offsets(const std::vector<double>& e) {
  if (e.size() != atomic_numbers_.size())
    throw InputError("energy offsets need one value per species");
  for (double v : e)
    if (!std::isfinite(v)) throw InputError("energy offsets must be finite");
  energy_offsets_ = e;
  trained_ = false;
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
  std::vector<LabelGroup> groups = groups_of(ts);  // may throw: nothing changed yet
  training_.push_back(std::move(ts));
  const int si = static_cast<int>(training_.size()) - 1;
  const TrainingStructure& t = training_.back();
  for (std::size_t k = 0; k < t.force_atoms.size(); ++k)
    for (int r = 0; r < 3; ++r) {
      labels_.push_back(t.forces[3 * k + r]);
      row_kinds_.push_back(kForceRow);
      row_structures_.push_back(si);
    }
  if (t.has_energy) {
    labels_.push_back(t.energy);
    row_kinds_.push_back(kEnergyRow);
    row_structures_.push_back(si);
  }
  if (t.has_stress)
    for (int r = 0; r < 6; ++r) {
      labels_.push_back(t.stress[r]);
      row_kinds_.push_back(kStressRow);
      row_structures_.push_back(si);
    }
  for (auto& g : groups) {
    group_offsets_.push_back(group_offsets_.back() + g.rows);
    groups_.push_back(std::move(g));
  }
  trained_ = false;
}

namespace {

// Both body orders of one block pair, unscaled, into buffers of rows(G) x rows(H).
void group_pair(const LabelGroup& G, const LabelGroup& H, const Hyperparameters& hp,
                double* k2, double* k3, double* d2, double* d3) {
  block_kernel(G.two, H.two, hp.ell2, k2, d2);
  block_kernel(G.three, H.three, hp.ell3, k3, d3);
}

}  // namespace

void Model::covariance(int g0, int g1, int h0, int h1, double* K2, double* K3, double* dK2,
                       double* dK3) const {
  const int ng = n_groups();
  if (g0 < 0 || g1 > ng || g0 > g1 || h0 < 0 || h1 > ng || h0 > h1)
    throw InputError("group range out of bounds");
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
      group_pair(G, H, hyper_, b2.data(), b3.data(), grad ? e2.data() : nullptr,
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
  maps_.reset();  // tabulated from the old solution
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

Prediction Model::predict(const Structure& s, VarianceMode variance) const {
  if (!trained_)
    throw NotTrainedError("the model is not trained: add training data and call train() first");
  const ClusterSet cs = clusters_of(s);
  const int n = static_cast<int>(s.size());
  const double volume = s.volume();
  const bool has_volume = volume > 1e-8 && s.pbc[0] && s.pbc[1] && s.pbc[2];
  const int ns = n_species();
  Prediction p;
  p.forces.assign(3 * static_cast<std::size_t>(n), 0.0);
  p.local_energies.assign(n, 0.0);
  p.stress.fill(0.0);

  // Mean: cluster energies phi = sigma^2 f(d) Phi(d) of the canonical copies only.
  std::vector<const Cluster*> canon;
  for (const auto* list : {&cs.pairs, &cs.triplets})
    for (const auto& c : *list)
      if (c.canonical_weight > 0) canon.push_back(&c);
  const long nc = static_cast<long>(canon.size());
  std::vector<double> phi(nc), dphi(3 * static_cast<std::size_t>(nc), 0.0);
#pragma omp parallel for schedule(dynamic, 16)
  for (long k = 0; k < nc; ++k) cluster_energy(*canon[k], phi[k], &dphi[3 * k]);
  // Scatter serially so the sums do not depend on the thread count.
  for (int i = 0; i < n; ++i) {
    const double e0 = energy_offsets_[s.species[i]];
    p.local_energies[i] = e0;
    p.energy += e0;
  }
  for (long k = 0; k < nc; ++k) {
    const Cluster& c = *canon[k];
    const double w = c.canonical_weight;
    p.energy += w * phi[k];
    for (int v = 0; v < c.nv; ++v) p.local_energies[c.atoms[v]] += w * phi[k] / c.nv;
    for (int m = 0; m < c.n_edges(); ++m) {
      const double dm = w * dphi[3 * k + m];
      const int a = c.atoms[kEdgeVertices[m][0]], b = c.atoms[kEdgeVertices[m][1]];
      for (int t = 0; t < 3; ++t) {
        const double u = c.edge[m][t] / c.d[m];
        p.forces[3 * a + t] += dm * u;  // -dE/dx_a = +phi' * unit vector a->b
        p.forces[3 * b + t] -= dm * u;
      }
      for (int r = 0; r < 6; ++r)
        p.stress[r] += dm * c.edge[m][kVoigt[r][0]] * c.edge[m][kVoigt[r][1]] / c.d[m];
    }
  }
  for (int r = 0; r < 6; ++r)
    p.stress[r] = has_volume ? p.stress[r] / volume : std::numeric_limits<double>::quiet_NaN();

  if (variance == VarianceMode::kNone) return p;
  p.has_variance = true;
  if (variance == VarianceMode::kMapped) {
    require_variance_maps();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    p.force_variances.assign(3 * static_cast<std::size_t>(n), 0.0);
    p.local_energy_variances.assign(n, nan);
    p.energy_variance = nan;
    p.stress_variances.fill(nan);
#pragma omp parallel
    {
      VarianceWorkspace work(*maps_);
#pragma omp for schedule(dynamic, 8)
      for (int t = 0; t < n; ++t) force_variance(cs, t, t, work, &p.force_variances[3 * t]);
    }
    return p;
  }

  // Variances: one group per atom (3 force rows + local energy) and one for the structure
  // (energy + stress).
  p.force_variances.assign(3 * static_cast<std::size_t>(n), 0.0);
  p.local_energy_variances.assign(n, 0.0);
  p.stress_variances.fill(std::numeric_limits<double>::quiet_NaN());
#pragma omp parallel for schedule(dynamic, 1)
  for (int t = 0; t <= n; ++t) {
    double var[7];
    if (t < n) {
      group_variances(atom_group(cs, t, t, cutoff2_, cutoff3_, true, ns), var);
      for (int r = 0; r < 3; ++r) p.force_variances[3 * t + r] = var[r];
      p.local_energy_variances[t] = var[3];
    } else {
      group_variances(structure_group(cs, volume, cutoff2_, cutoff3_, true, has_volume, ns), var);
      p.energy_variance = var[0];
      if (has_volume) std::copy(var + 1, var + 7, p.stress_variances.begin());
    }
  }
  return p;
}

void Model::cluster_mean(const Cluster& c, double& phi, double* dphi) const {
  const int D = c.n_edges();
  const bool two = c.nv == 2;
  const double s2 = two ? hyper_.sigma2 * hyper_.sigma2 : hyper_.sigma3 * hyper_.sigma3;
  double f, fg[3], val, g[3];
  cutoff_function(D, two ? cutoff2_ : cutoff3_, c.d, f, fg);
  contracted_value(D, c.d, c.type, two ? contracted2_ : contracted3_,
                   two ? hyper_.ell2 : hyper_.ell3, val, g);
  phi = s2 * f * val;
  for (int m = 0; m < D; ++m) dphi[m] = s2 * (fg[m] * val + f * g[m]);
}

void Model::cluster_energy(const Cluster& c, double& phi, double* dphi) const {
  if (maps_ && maps_->mean(c, phi, dphi)) return;
  cluster_mean(c, phi, dphi);
}

namespace {

// A bare cluster of the given type and descriptor: all that the kernels look at.
Cluster descriptor_cluster(int dim, int type, const double* d) {
  Cluster c;
  c.nv = dim == 1 ? 2 : 3;
  c.type = type;
  for (int m = 0; m < dim; ++m) c.d[m] = d[m];
  return c;
}

void check_descriptors(int dim, int type, const double* d, int n, int n_species, double rc) {
  if (dim != 1 && dim != 3) throw InputError("cluster descriptors have 1 (pair) or 3 (triplet) edges");
  if (type < 0 || type >= type_count(dim, n_species)) throw InputError("cluster type out of range");
  if (!(rc > 0)) throw InputError("that body order is disabled in this model");
  for (long k = 0; k < static_cast<long>(n) * dim; ++k)
    if (!(d[k] > 0) || !(d[k] <= rc))
      throw InputError("cluster edge lengths must lie in (0, cutoff]; got " + std::to_string(d[k]));
}

}  // namespace

void Model::cluster_means(int dim, int type, const double* d, int n, double* phi, double* dphi) const {
  if (!trained_) throw NotTrainedError("the model is not trained");
  check_descriptors(dim, type, d, n, n_species(), dim == 1 ? cutoff2_ : cutoff3_);
#pragma omp parallel for schedule(dynamic, 64)
  for (int k = 0; k < n; ++k) {
    double g[3];
    cluster_mean(descriptor_cluster(dim, type, d + static_cast<std::size_t>(k) * dim), phi[k], g);
    std::copy(g, g + dim, dphi + static_cast<std::size_t>(k) * dim);
  }
}

bool Model::add_force_functional(const Cluster& c, const double* weights, VarianceWorkspace& work) const {
  // Force rows: -d(cluster energy)/dx_key, folded with the cutoff onto the cutoff-free
  // function that the variance basis represents (as atom_group does for the exact GP).
  const int ne = c.n_edges();
  const double w0[3] = {0.0, 0.0, 0.0};
  double coef[12] = {};
  fold_cutoff(ne, ne == 1 ? cutoff2_ : cutoff3_, c.d, 3, w0, weights, coef);
  return work.add(c, coef);
}

void Model::finish_force_variance(const ClusterSet& cs, int row, int key, bool inside,
                                  VarianceWorkspace& work, double* out) const {
  if (inside) {
    work.finish(out);
    return;
  }
  // A cluster outside the tables (shorter than any training distance): exact for this atom.
  work.clear();
  group_variances(atom_group(cs, row, key, cutoff2_, cutoff3_, false, n_species()), out);
}

void Model::force_variance(const ClusterSet& cs, int row, int key, VarianceWorkspace& work,
                           double* out) const {
  bool inside = true;
  auto visit = [&](const Cluster& c) {
    double w[9];
    force_row_weights(c, key, w);
    return add_force_functional(c, w, work);
  };
  for (int k = cs.pair_offsets[row]; inside && k < cs.pair_offsets[row + 1]; ++k) inside = visit(cs.pairs[k]);
  for (int k = cs.triplet_offsets[row]; inside && k < cs.triplet_offsets[row + 1]; ++k)
    inside = visit(cs.triplets[k]);
  finish_force_variance(cs, row, key, inside, work, out);
}

void Model::require_variance_maps() const {
  if (!maps_ || !maps_->has_variance())
    throw InputError("the model has no variance maps: map it with variance, or ask for the exact variance");
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

void Model::group_variances(const LabelGroup& G, double* out) const {
  // var = k(x,x) - |L^-1 k(X,x)|^2, row by row.
  const int R = G.rows;
  const int ntrain = n_labels();
  const double s22 = hyper_.sigma2 * hyper_.sigma2, s33 = hyper_.sigma3 * hyper_.sigma3;
  std::vector<double> kstar(static_cast<std::size_t>(R) * ntrain, 0.0), b2, b3, v(ntrain);
  for (int h = 0; h < n_groups(); ++h) {
    const LabelGroup& H = groups_[h];
    const std::size_t bs = static_cast<std::size_t>(R) * H.rows;
    b2.assign(bs, 0.0);
    b3.assign(bs, 0.0);
    group_pair(G, H, hyper_, b2.data(), b3.data(), nullptr, nullptr);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < H.rows; ++c)
        kstar[static_cast<std::size_t>(r) * ntrain + group_offsets_[h] + c] =
            s22 * b2[r * H.rows + c] + s33 * b3[r * H.rows + c];
  }
  std::vector<double> self2(static_cast<std::size_t>(R) * R, 0.0), self3(self2.size(), 0.0);
  group_pair(G, G, hyper_, self2.data(), self3.data(), nullptr, nullptr);
  for (int r = 0; r < R; ++r) {
    const double* kr = kstar.data() + static_cast<std::size_t>(r) * ntrain;
    double explained = 0.0;
    for (int i = 0; i < ntrain; ++i) {  // forward substitution L v = k
      const double* Li = cholesky_.data() + static_cast<std::size_t>(i) * ntrain;
      double acc = kr[i];
      for (int j = 0; j < i; ++j) acc -= Li[j] * v[j];
      v[i] = acc / Li[i];
      explained += v[i] * v[i];
    }
    out[r] = std::max(0.0, s22 * self2[r * R + r] + s33 * self3[r * R + r] - explained);
  }
}

LocalPrediction Model::predict_local(const LocalEnvironments& env, bool mean, VarianceMode variance) const {
  if (!trained_)
    throw NotTrainedError("the model is not trained: add training data and call train() first");
  const int n = static_cast<int>(env.centre_keys.size());
  if (static_cast<int>(env.neighbors.offsets.size()) != n + 1)
    throw InputError("neighbour list rows do not match the centres");
  for (int sp : env.key_species)
    if (sp < 0 || sp >= n_species()) throw InputError("species index out of range");
  for (const Neighbor& nb : env.neighbors.items)
    if (!(nb.d >= kMinDistance))
      throw InputError("two atoms are " + std::to_string(nb.d) + " Angstrom apart, closer than " +
                       std::to_string(kMinDistance) + " Angstrom (overlapping atoms or NaN positions)");
  if (variance == VarianceMode::kMapped) require_variance_maps();
  LocalPrediction out;
  const int ns = n_species();
  if (mean) {
    out.energies.assign(n, 0.0);
    out.forces.assign(3 * static_cast<std::size_t>(n), 0.0);
    out.virials.assign(6 * static_cast<std::size_t>(n), 0.0);
  }
  if (variance != VarianceMode::kNone) out.force_variances.assign(3 * static_cast<std::size_t>(n), 0.0);
  static constexpr int kVirial[6][2] = {{0, 0}, {1, 1}, {2, 2}, {0, 1}, {0, 2}, {1, 2}};
  // Clusters are built centre by centre into per-thread buffers that keep their capacity:
  // materialising every atom's clusters at once cost a large allocation (and page faults)
  // per MD step.
#pragma omp parallel
  {
    ClusterSet cs;  // one centre at a time: row 0
    cs.pair_offsets = {0, 0};
    cs.triplet_offsets = {0, 0};
    std::vector<int> near3;
    std::optional<VarianceWorkspace> work;
    if (variance == VarianceMode::kMapped) work.emplace(*maps_);
#pragma omp for schedule(dynamic, 8)
    for (int row = 0; row < n; ++row) {
      const int key = env.centre_keys[row];
      cs.pairs.clear();
      cs.triplets.clear();
      append_row_clusters(row, key, env.key_species, env.neighbors, cutoff2_, cutoff3_, ns, cs.pairs,
                          cs.triplets, near3);
      cs.pair_offsets[1] = static_cast<int>(cs.pairs.size());
      cs.triplet_offsets[1] = static_cast<int>(cs.triplets.size());
      // The mapped variance shares the clusters and their force weights with the mean.
      const bool fused = mean && variance == VarianceMode::kMapped;
      bool inside = true;
      if (mean) {
        double e = energy_offsets_[env.key_species[key]];
        double f[3] = {0, 0, 0}, w[6] = {0, 0, 0, 0, 0, 0};
        auto visit = [&](const Cluster& c) {
          double phi, dphi[3], fw[9];
          cluster_energy(c, phi, dphi);
          e += phi / c.nv;
          const int ne = c.n_edges();
          force_row_weights(c, key, fw);
          for (int m = 0; m < ne; ++m) {
            for (int t = 0; t < 3; ++t) f[t] += dphi[m] * fw[t * ne + m];
            for (int v = 0; v < 6; ++v)
              w[v] -= dphi[m] * c.edge[m][kVirial[v][0]] * c.edge[m][kVirial[v][1]] / (c.d[m] * c.nv);
          }
          if (fused && inside) inside = add_force_functional(c, fw, *work);
        };
        for (const Cluster& c : cs.pairs) visit(c);
        for (const Cluster& c : cs.triplets) visit(c);
        out.energies[row] = e;
        std::copy(f, f + 3, out.forces.begin() + 3 * row);
        std::copy(w, w + 6, out.virials.begin() + 6 * row);
      }
      double* var = variance != VarianceMode::kNone ? &out.force_variances[3 * row] : nullptr;
      if (fused)
        finish_force_variance(cs, 0, key, inside, *work, var);
      else if (variance == VarianceMode::kMapped)
        force_variance(cs, 0, key, *work, var);
      else if (variance == VarianceMode::kExact)
        group_variances(atom_group(cs, 0, key, cutoff2_, cutoff3_, false, ns), var);
    }
  }
  return out;
}

}  // namespace otfgp
