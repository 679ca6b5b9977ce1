// The model's prediction side, from an installed solution: means (exact GP or maps) and
// variances (exact or mapped) for whole structures (predict) and for MD-code environments
// (predict_local), and the exact cluster means that maps tabulate.
#include "model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "cutoff.h"
#include "errors.h"
#include "kernels.h"
#include "label_groups.h"

namespace otfgp {

namespace {

// Cartesian index pairs of LAMMPS's virial components xx yy zz xy xz yz.
constexpr int kLammpsVirial[6][2] = {{0, 0}, {1, 1}, {2, 2}, {0, 1}, {0, 2}, {1, 2}};

// The two conventions in which a cluster's virial is reported.
enum class Virial {
  kStress,  // predict: the whole cluster's dE/d(strain) (stress times volume), ASE Voigt order
  kLammps,  // predict_local: the centre's 1/nv share of -dE/d(strain), LAMMPS order
};

// One cluster's contribution to the mean, shared by predict (each canonical cluster of a
// structure, weight canonical_weight) and predict_local (each copy centred at one atom,
// weight 1) so that both weigh energies, forces and virials alike. Given the cluster energy
// phi, its edge derivatives dphi and the weight w, it returns each vertex's energy share
// w phi / nv, hands each edge's tension w dphi_m to force(m, tension) (the one place the
// paths differ: forces on every atom vs on the centre alone), and accumulates the virial
// w dphi_m e_m (x) e_m / d_m in the convention `kind`. An inline template so that force
// inlines into predict_local, the MD hot loop; the arithmetic is term for term what each
// path did before, so predictions are bit-identical.
template <Virial kind, class Force>
inline double add_cluster_mean(const Cluster& c, double phi, const double* dphi, double w,
                               double* virial, Force&& force) {
  constexpr auto& order = kind == Virial::kStress ? kVoigt : kLammpsVirial;
  const int ne = c.n_edges();
  for (int m = 0; m < ne; ++m) {
    const double dm = w * dphi[m];
    force(m, dm);
    const double den = kind == Virial::kStress ? c.d[m] : c.d[m] * c.nv;
    for (int v = 0; v < 6; ++v) {
      const double t = dm * c.edge[m][order[v][0]] * c.edge[m][order[v][1]] / den;
      if constexpr (kind == Virial::kStress)
        virial[v] += t;
      else
        virial[v] -= t;
    }
  }
  return w * phi / c.nv;
}

}  // namespace

Prediction Model::predict(const Structure& s, VarianceMode variance) const {
  if (!trained_)
    throw NotTrainedError("the model is not trained: add training data and call train() first");
  require_variance_mode(variance);
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
    // Each physical cluster once: its edge tensions act on both ends of the edge.
    const double share = add_cluster_mean<Virial::kStress>(
        c, phi[k], &dphi[3 * k], w, p.stress.data(), [&](int m, double dm) {
          const int a = c.atoms[kEdgeVertices[m][0]], b = c.atoms[kEdgeVertices[m][1]];
          for (int t = 0; t < 3; ++t) {
            const double u = c.edge[m][t] / c.d[m];
            p.forces[3 * a + t] += dm * u;  // -dE/dx_a = +phi' * unit vector a->b
            p.forces[3 * b + t] -= dm * u;
          }
        });
    for (int v = 0; v < c.nv; ++v) p.local_energies[c.atoms[v]] += share;
  }
  if (baseline_) {  // the prior under the GP: added to the mean, no variance of its own
    const BaselineResult b = baseline_->evaluate(s);
    p.energy += b.energy;
    for (std::size_t k = 0; k < p.forces.size(); ++k) p.forces[k] += b.forces[k];
    for (int i = 0; i < n; ++i) p.local_energies[i] += b.local_energies[i];
    for (int r = 0; r < 6; ++r) p.stress[r] += b.virial[r];
  }
  for (int r = 0; r < 6; ++r)
    p.stress[r] = has_volume ? p.stress[r] / volume : std::numeric_limits<double>::quiet_NaN();

  if (variance == VarianceMode::kNone) return p;
  p.has_variance = true;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  p.latent_force_variances.assign(3 * static_cast<std::size_t>(n), 0.0);
  p.latent_local_energy_variances.assign(n, 0.0);
  p.latent_stress_variances.fill(nan);
  if (variance == VarianceMode::kMapped) {
    require_variance_maps();
    p.latent_energy_variance = nan;
#pragma omp parallel
    {
      VarianceWorkspace work(*maps_);
#pragma omp for schedule(dynamic, 8)
      for (int t = 0; t < n; ++t) {
        double var[4];
        force_variance(cs, t, t, work, var);
        std::copy(var, var + 3, &p.latent_force_variances[3 * t]);
        p.latent_local_energy_variances[t] = var[3];
      }
    }
  } else {
    // Exact: one group per atom (3 force rows + local energy) and one for the structure
    // (energy + stress).
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t <= n; ++t) {
      double var[7];
      if (t < n) {
        group_variances(atom_group(cs, t, t, cutoff2_, cutoff3_, true, ns), var);
        for (int r = 0; r < 3; ++r) p.latent_force_variances[3 * t + r] = var[r];
        p.latent_local_energy_variances[t] = var[3];
      } else {
        group_variances(structure_group(cs, volume, cutoff2_, cutoff3_, true, has_volume, ns), var);
        p.latent_energy_variance = var[0];
        if (has_volume) std::copy(var + 1, var + 7, p.latent_stress_variances.begin());
      }
    }
  }
  p.force_variances.resize(p.latent_force_variances.size());
  p.local_energy_variances.resize(n);
  if (const VarianceMap fm = variance_map(VarianceQuantity::kForce); fm.scales_with_neighbourhood()) {
    const std::vector<double> scales = structure_force_scales(s, p.forces.data(), fm.radius);
    report_scaled_force_variances(p.force_variances.size(), p.latent_force_variances.data(), scales.data(),
                                  p.force_variances.data());
  } else {
    report_variances(VarianceQuantity::kForce, p.force_variances.size(), p.latent_force_variances.data(),
                     p.forces.data(), p.force_variances.data());
  }
  report_variances(VarianceQuantity::kLocalEnergy, n, p.latent_local_energy_variances.data(),
                   p.local_energies.data(), p.local_energy_variances.data());
  report_variances(VarianceQuantity::kEnergy, 1, &p.latent_energy_variance, &p.energy, &p.energy_variance);
  report_variances(VarianceQuantity::kStress, 6, p.latent_stress_variances.data(), p.stress.data(),
                   p.stress_variances.data());
  return p;
}

VarianceMap Model::variance_map(VarianceQuantity q) const {
  return calibration_ ? calibration_->map(q) : VarianceMap{};
}

double Model::noise_variance(VarianceQuantity q) const {
  switch (q) {
    case VarianceQuantity::kForce: return hyper_.noise_force * hyper_.noise_force;
    case VarianceQuantity::kEnergy: return hyper_.noise_energy * hyper_.noise_energy;
    case VarianceQuantity::kStress: return hyper_.noise_stress * hyper_.noise_stress;
    case VarianceQuantity::kLocalEnergy: break;
  }
  return 0.0;  // a local energy is never a label, so it has no label noise
}

void Model::report_variances(VarianceQuantity q, std::size_t n, const double* latent, const double* mean,
                             double* out) const {
  if (q != VarianceQuantity::kForce || mean == nullptr || variance_map(q).c == 0.0) {
    const double noise = noise_variance(q);
    apply_variance_map(variance_map(q), n, latent, &noise, 0, mean, 1, out);
    return;
  }
  std::vector<double> scale(n);  // forces scale with their atom's RMS component
  force_scale_values(n, mean, scale.data());
  report_scaled_force_variances(n, latent, scale.data(), out);
}

void Model::report_scaled_force_variances(std::size_t n, const double* latent, const double* scales,
                                          double* out) const {
  const double noise = noise_variance(VarianceQuantity::kForce);
  apply_variance_map(variance_map(VarianceQuantity::kForce), n, latent, &noise, 0, scales, 1, out);
}

void Model::finish_local_force_variances(const LocalEnvironments& env, const std::vector<double>& key_scales,
                                         LocalPrediction& p) const {
  const VarianceMap fm = variance_map(VarianceQuantity::kForce);
  const std::size_t n = env.centre_keys.size();
  if (p.latent_force_variances.size() != 3 * n) throw InputError("no force variances to complete");
  if (key_scales.size() != env.key_species.size())
    throw InputError("one scale per identity key is needed, got " + std::to_string(key_scales.size()) + " for " +
                     std::to_string(env.key_species.size()) + " keys");
  std::vector<double> scales(3 * n);
  neighbourhood_scale_values(env.neighbors, n, env.centre_keys.data(), key_scales.data(), fm.radius,
                             scales.data());
  p.force_variances.resize(3 * n);
  report_scaled_force_variances(3 * n, p.latent_force_variances.data(), scales.data(), p.force_variances.data());
  p.force_variances_pending = false;
}

void Model::epistemic_variances(VarianceQuantity q, std::size_t n, const double* latent, double* out) const {
  const double zero = 0.0;
  apply_variance_map(variance_map(q).epistemic(), n, latent, &zero, 0, nullptr, 1, out);
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
  require_variance_mode(variance);
  LocalPrediction out;
  const int ns = n_species();
  // A calibration that grows with the predicted value (c > 0) needs the mean even when the
  // caller asked for variances only.
  const bool want_mean = mean;
  if (variance != VarianceMode::kNone &&
      (variance_map(VarianceQuantity::kForce).c > 0 || variance_map(VarianceQuantity::kLocalEnergy).c > 0))
    mean = true;
  if (mean) {
    out.energies.assign(n, 0.0);
    out.forces.assign(3 * static_cast<std::size_t>(n), 0.0);
    out.virials.assign(6 * static_cast<std::size_t>(n), 0.0);
  }
  if (variance != VarianceMode::kNone) {
    out.latent_force_variances.assign(3 * static_cast<std::size_t>(n), 0.0);
    out.latent_energy_variances.assign(n, 0.0);
  }
  // Clusters are built centre by centre into per-thread buffers that keep their capacity:
  // materialising every atom's clusters at once cost a large allocation (and page faults)
  // per MD step.
  if (cutoff3_ > 0)
    for (int row = 0; row < n; ++row) check_triplet_count(env.neighbors, row, env.centre_keys[row], cutoff3_);
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
        double f[3] = {0, 0, 0}, vir[6] = {0, 0, 0, 0, 0, 0};
        auto visit = [&](const Cluster& c) {
          double phi, dphi[3], fw[9];
          cluster_energy(c, phi, dphi);
          const int ne = c.n_edges();
          force_row_weights(c, key, fw);
          // Only the centre's force: the edge tensions through its force-row weights.
          e += add_cluster_mean<Virial::kLammps>(c, phi, dphi, 1.0, vir, [&](int m, double dm) {
            for (int t = 0; t < 3; ++t) f[t] += dm * fw[t * ne + m];
          });
          if (fused && inside) inside = add_force_functional(c, fw, *work);
        };
        for (const Cluster& c : cs.pairs) visit(c);
        for (const Cluster& c : cs.triplets) visit(c);
        if (baseline_) {
          const Neighbor* items = env.neighbors.items.data();
          baseline_->add_centre(env.key_species[key], env.key_species, items + env.neighbors.offsets[row],
                                items + env.neighbors.offsets[row + 1], e, f, vir);
        }
        out.energies[row] = e;
        std::copy(f, f + 3, out.forces.begin() + 3 * row);
        std::copy(vir, vir + 6, out.virials.begin() + 6 * row);
      }
      if (variance == VarianceMode::kNone) continue;
      double var[4];
      if (fused)
        finish_force_variance(cs, 0, key, inside, *work, var);
      else if (variance == VarianceMode::kMapped)
        force_variance(cs, 0, key, *work, var);
      else
        group_variances(atom_group(cs, 0, key, cutoff2_, cutoff3_, true, ns), var);
      std::copy(var, var + 3, &out.latent_force_variances[3 * row]);
      out.latent_energy_variances[row] = var[3];
    }
  }
  if (variance != VarianceMode::kNone) {
    out.energy_variances.resize(n);
    if (variance_map(VarianceQuantity::kForce).scales_with_neighbourhood()) {
      // The neighbours' scales may belong to atoms that are no centre here (ghost atoms of
      // other processes): the caller completes them (finish_local_force_variances).
      std::vector<double> own(out.forces.size());
      force_scale_values(own.size(), out.forces.data(), own.data());
      out.force_scales.resize(n);
      for (int i = 0; i < n; ++i) out.force_scales[i] = own[3 * static_cast<std::size_t>(i)];
      out.force_variances_pending = true;
    } else {
      out.force_variances.resize(out.latent_force_variances.size());
      report_variances(VarianceQuantity::kForce, out.force_variances.size(), out.latent_force_variances.data(),
                       mean ? out.forces.data() : nullptr, out.force_variances.data());
    }
    report_variances(VarianceQuantity::kLocalEnergy, n, out.latent_energy_variances.data(),
                     mean ? out.energies.data() : nullptr, out.energy_variances.data());
  }
  if (!want_mean) {  // computed for the calibration only
    out.energies.clear();
    out.forces.clear();
    out.virials.clear();
  }
  return out;
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
  // Force rows: -d(cluster energy)/dx_key; local-energy row: the centre's 1/nv share of the
  // cluster energy. Folded with the cutoff onto the cutoff-free function that the variance
  // basis represents, exactly as atom_group builds the same rows for the exact GP.
  const int ne = c.n_edges();
  const double w0[4] = {0.0, 0.0, 0.0, 1.0 / c.nv};
  double w[12] = {};  // force rows as given, the local-energy row has no derivative weights
  std::copy(weights, weights + 3 * ne, w);
  double coef[16] = {};
  fold_cutoff(ne, ne == 1 ? cutoff2_ : cutoff3_, c.d, 4, w0, w, coef);
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
  group_variances(atom_group(cs, row, key, cutoff2_, cutoff3_, true, n_species()), out);
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

void Model::require_variance_mode(VarianceMode variance) const {
  if (mapped_only_ && variance == VarianceMode::kExact)
    throw InputError("this model is the maps of an exported ScalableGP: it has no exact GP variance, "
                     "only the mapped one");
}

void Model::require_variance_maps() const {
  if (!maps_ || !maps_->has_variance())
    throw InputError("the model has no variance maps: map it with variance, or ask for the exact variance");
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
    group_kernels(G, H, hyper_.ell2, hyper_.ell3, b2.data(), b3.data(), nullptr, nullptr);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < H.rows; ++c)
        kstar[static_cast<std::size_t>(r) * ntrain + group_offsets_[h] + c] =
            s22 * b2[r * H.rows + c] + s33 * b3[r * H.rows + c];
  }
  std::vector<double> self2(static_cast<std::size_t>(R) * R, 0.0), self3(self2.size(), 0.0);
  group_kernels(G, G, hyper_.ell2, hyper_.ell3, self2.data(), self3.data(), nullptr, nullptr);
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

}  // namespace otfgp
