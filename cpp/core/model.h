// The Gaussian-process model: training data, covariance assembly and prediction
// (implemented in model.cpp, the training side, and model_predict.cpp, the prediction side).
//
// Linear algebra on the training covariance (Cholesky, likelihood, optimisation) lives in
// the caller (Python/scipy); the model assembles covariance blocks and, once given the
// solution (alpha = K^-1 y and the Cholesky factor L), predicts means and variances.
#pragma once
#include <array>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "baseline.h"
#include "calibration.h"
#include "clusters.h"
#include "neighbors.h"
#include "kernel_block.h"
#include "label_groups.h"
#include "maps.h"
#include "structure.h"

namespace otfgp {

struct Hyperparameters {
  double sigma2 = 1.0;       // 2-body signal std (eV)
  double ell2 = 1.0;         // 2-body length scale (Angstrom)
  double sigma3 = 0.1;       // 3-body signal std (eV)
  double ell3 = 1.0;         // 3-body length scale (Angstrom)
  double noise_force = 0.05;   // eV/Angstrom
  double noise_energy = 0.05;  // eV per structure
  double noise_stress = 0.005; // eV/Angstrom^3
  std::array<double, 7> as_array() const;
  static Hyperparameters from_array(const std::array<double, 7>& a);
};

// One labelled structure in the training set.
struct TrainingStructure {
  Structure structure;
  std::vector<int> force_atoms;   // atoms whose force components are labels
  std::vector<double> forces;     // 3 per force atom, eV/Angstrom
  bool has_energy = false;
  double energy = 0.0;            // eV
  bool has_stress = false;
  std::array<double, 6> stress{}; // Voigt xx yy zz yz xz xy, eV/Angstrom^3 (ASE sign)
  // With an external baseline (Model::external_baseline): the baseline's value of each label
  // row of this structure, in row order (forces of force_atoms, energy, stress), computed
  // by the caller; empty otherwise. Kept with the raw labels, so the targets
  // label - baseline are rebuilt exactly without re-evaluating the baseline.
  std::vector<double> prior;
};

enum RowKind : int { kForceRow = 0, kEnergyRow = 1, kStressRow = 2 };

// Which predictive variance to compute: none, the exact GP variance (cost grows with the
// training set), or the mapped variance (needs maps with variance tables; per-atom cost
// independent of the training set; force and local-energy variances only).
enum class VarianceMode : int { kNone = 0, kExact = 1, kMapped = 2 };

struct Prediction {
  double energy = 0.0;
  std::vector<double> forces;          // n_atoms * 3
  std::vector<double> local_energies;  // n_atoms
  std::array<double, 6> stress{};      // NaN when the cell has no volume
  bool has_variance = false;
  // Reported variances: the model's calibration applied to the latent ones (see
  // calibration.h; without a calibration latent + label noise, local energies latent only).
  double energy_variance = 0.0;
  std::vector<double> force_variances;         // n_atoms * 3
  std::vector<double> local_energy_variances;  // n_atoms
  std::array<double, 6> stress_variances{};
  // The GP's latent (noise-free) variances the reported ones are computed from.
  double latent_energy_variance = 0.0;
  std::vector<double> latent_force_variances;
  std::vector<double> latent_local_energy_variances;
  std::array<double, 6> latent_stress_variances{};
};

// Atomic environments handed over by an MD code (LAMMPS): one neighbour-list row per centre.
struct LocalEnvironments {
  std::vector<int> centre_keys;  // identity key of each centre atom
  std::vector<int> key_species;  // species index of every key
  NeighborList neighbors;        // items' j are identity keys (all images of an atom share one)
};

// Per-centre results; summing energies, forces and virials over all atoms of a system gives
// the same totals as Model::predict.
struct LocalPrediction {
  std::vector<double> energies;         // local energy of each centre (eV)
  std::vector<double> forces;           // 3 per centre: the total force on that atom
  std::vector<double> virials;          // 6 per centre, LAMMPS order xx yy zz xy xz yz (eV)
  // When variances are requested: reported (calibrated) and latent, 3 per centre for the
  // force and 1 for the local energy.
  std::vector<double> force_variances, latent_force_variances;
  std::vector<double> energy_variances, latent_energy_variances;
  // A force map that scales with the neighbourhood (VarianceMap::radius) needs the scale of
  // every neighbour, and a neighbour may be no centre here (a ghost atom another process
  // owns): force_variances stay empty, `force_scales` holds each centre's own scale and the
  // caller completes them with Model::finish_local_force_variances once it has the
  // neighbours'.
  bool force_variances_pending = false;
  std::vector<double> force_scales;
};

class Model {
 public:
  Model(std::vector<int> atomic_numbers, double cutoff2, double cutoff3);

  const std::vector<int>& atomic_numbers() const { return atomic_numbers_; }
  int n_species() const { return static_cast<int>(atomic_numbers_.size()); }
  // Index of an atomic number in the species list; InputError naming it if unknown.
  int species_index(int atomic_number) const;
  double cutoff2() const { return cutoff2_; }
  double cutoff3() const { return cutoff3_; }

  const Hyperparameters& hyperparameters() const { return hyper_; }
  // Validates (all positive and finite). Invalidates the solution (and drops the maps).
  void set_hyperparameters(const Hyperparameters& h);
  const std::vector<double>& energy_offsets() const { return energy_offsets_; }
  void set_energy_offsets(const std::vector<double>& e);

  // The analytic baseline (prior), absent by default. With one, the training targets
  // (labels()) are the stored labels minus the baseline's energy, forces and stress, and
  // every prediction (predict, predict_local, and so the maps and LAMMPS) adds the baseline
  // to the GP mean; variances are the GP's alone. Setting or clearing it recomputes the
  // targets and so invalidates the solution (and drops the maps).
  void set_baseline(std::optional<BaselineSpec> spec);
  const PairBaseline* baseline() const { return baseline_ ? &*baseline_ : nullptr; }
  // An external (caller-evaluated, e.g. a Python ASE calculator) baseline, identified by its
  // spec string; empty for none. The core never evaluates it: every training structure
  // carries the baseline's value of its label rows (TrainingStructure::prior), the targets
  // are label - prior, and predictions are the GP part only (the caller adds the baseline).
  // MD codes (LAMMPS) cannot evaluate it and refuse such models. Set only on a model
  // without training data and without an analytic baseline (InputError otherwise).
  void set_external_baseline(std::string spec);
  const std::string& external_baseline() const { return external_baseline_; }
  // Neighbour cutoff that predict_local's environments must cover: the GP's and the
  // baseline's.
  double interaction_cutoff() const;

  // Validates and appends; the solution stays valid for the old rows only, so the model
  // is untrained (and unmapped) until set_solution() is called again.
  void add_training_structure(TrainingStructure ts);
  const std::vector<TrainingStructure>& training_structures() const { return training_; }
  int n_groups() const { return static_cast<int>(groups_.size()); }
  int n_labels() const { return static_cast<int>(labels_.size()); }
  int n_force_environments() const;
  int group_row_offset(int g) const { return group_offsets_.at(g); }
  const LabelGroup& group(int g) const { return groups_.at(g); }
  const std::vector<double>& labels() const { return labels_; }
  const std::vector<int>& row_kinds() const { return row_kinds_; }
  const std::vector<int>& row_structures() const { return row_structures_; }

  // Unscaled covariance blocks between label groups [g0, g1) and [h0, h1): K2 and K3
  // (row-major, rows of g by rows of h) and, if non-null, their derivatives with respect
  // to ell2 and ell3. The signal is sigma2^2 K2 + sigma3^2 K3. OpenMP over block pairs.
  // At the model's length scales, or at given ones (the likelihood explores others
  // without touching the model's hyperparameters, and so without invalidating it).
  void covariance(int g0, int g1, int h0, int h1, double* K2, double* K3, double* dK2,
                  double* dK3) const {
    covariance(g0, g1, h0, h1, hyper_.ell2, hyper_.ell3, K2, K3, dK2, dK3);
  }
  void covariance(int g0, int g1, int h0, int h1, double ell2, double ell3, double* K2, double* K3,
                  double* dK2, double* dK3) const;

  // alpha = K^-1 (y - offsets), L lower Cholesky factor of K (row-major n x n).
  void set_solution(std::vector<double> alpha, std::vector<double> cholesky);
  bool trained() const { return trained_; }
  const std::vector<double>& alpha() const { return alpha_; }
  const std::vector<double>& cholesky() const { return cholesky_; }

  // Mean (always) and variances (if requested) of energy, forces, stress, local energies.
  // The mean comes from the maps where they cover a cluster, else from the exact GP. With
  // VarianceMode::kMapped only force and local-energy variances are produced (the others
  // are NaN).
  Prediction predict(const Structure& s, VarianceMode variance) const;

  // Mean (if mean) and force and local-energy variances (if variance != kNone) for
  // MD-code environments.
  // Each atom's force comes from the clusters centred at it alone, so no forces on ghost
  // atoms are produced and the result does not depend on Newton's-third-law bookkeeping.
  LocalPrediction predict_local(const LocalEnvironments& env, bool mean, VarianceMode variance) const;
  // Completes the pending force variances of a predict_local result (see LocalPrediction):
  // key_scales[k] is the own scale (|F|/sqrt(3)) of the atom with identity key k, for every
  // key of the environments' centres and neighbours.
  void finish_local_force_variances(const LocalEnvironments& env, const std::vector<double>& key_scales,
                                    LocalPrediction& p) const;

  // Exact GP quantities of single clusters given by their species type and descriptor
  // (edge lengths, dim = 1 for pairs and 3 for triplets; any lengths in (0, cutoff], they
  // need not form a triangle), n clusters, OpenMP-parallel. These are what maps tabulate.
  void cluster_means(int dim, int type, const double* d, int n, double* phi, double* dphi) const;

  // Tabulated mean and variance (see maps.h). set_maps checks that the tables fit the model
  // (types, upper ends at the cutoffs). Maps tabulate one solution, so whatever invalidates
  // it (new data, hyperparameters, energy offsets, a new solution) drops them too: a model
  // never holds maps without the solution they came from (that is what keeps every saved
  // model loadable).
  void set_maps(Maps maps);
  // A model that is only its maps (a ScalableGP exported for LAMMPS, see
  // src/otfgp/scalable_maps.py): no training data, every table's mean in the variance basis
  // with a table for every species type of each body order, and the covariance. It counts as
  // trained; it takes no training data and has no exact variance (both are InputErrors).
  void set_mapped_only(Maps maps);
  bool mapped_only() const { return mapped_only_; }
  void clear_maps() {
    maps_.reset();
    if (mapped_only_) invalidate_solution();
  }
  const Maps* maps() const { return maps_ ? &*maps_ : nullptr; }

  // The variance calibration (see calibration.h); absent means uncalibrated (identity
  // maps). Unlike the maps it is kept when the solution changes: it describes how the
  // latent variance relates to real errors, which retraining does not reset; the caller
  // refits it when it sees fit. set_calibration validates.
  void set_calibration(Calibration c);
  void clear_calibration() { calibration_.reset(); }
  const Calibration* calibration() const { return calibration_ ? &*calibration_ : nullptr; }
  // The map of one quantity (the identity when uncalibrated) and its label-noise variance.
  VarianceMap variance_map(VarianceQuantity q) const;
  double noise_variance(VarianceQuantity q) const;
  // Reported variances of n values of quantity q from their latent variances and means
  // (mean may be null when the map does not use it): the calibration rule, applied the same
  // way for Python's predictions, the mapped variance and the LAMMPS styles. Forces come as
  // 3 components per atom and are scaled by the atom's RMS component (see the definition);
  // a force map that scales with the neighbourhood is applied by the callers, which know the
  // neighbours (predict, predict_local).
  void report_variances(VarianceQuantity q, std::size_t n, const double* latent, const double* mean,
                        double* out) const;
  // The force map applied to n force components whose scale values (one per component,
  // force_scale_values or neighbourhood_scale_values) the caller computed: the one place the
  // force noise meets the force map.
  void report_scaled_force_variances(std::size_t n, const double* latent, const double* scales, double* out) const;
  // The reducible (epistemic) part of the reported variances: VarianceMap::epistemic.
  void epistemic_variances(VarianceQuantity q, std::size_t n, const double* latent, double* out) const;

  // Format version of the model file this model was read from (0: built in memory), so
  // that callers can say what an older file lacked.
  unsigned format_version() const { return format_version_; }
  void set_format_version(unsigned v) { format_version_ = v; }
  // What reading the model file repaired (e.g. stale maps dropped), for the caller to log.
  const std::vector<std::string>& load_warnings() const { return load_warnings_; }
  void add_load_warning(std::string w) { load_warnings_.push_back(std::move(w)); }

  // Label groups and clusters of a structure, exposed for tests and diagnostics.
  ClusterSet clusters_of(const Structure& s) const;

 private:
  std::vector<LabelGroup> groups_of(const TrainingStructure& ts) const;
  // Diagonal of the posterior covariance of a group's rows (latent, without noise).
  void group_variances(const LabelGroup& G, double* out) const;
  // Mean cluster energy and its gradient with respect to the edge lengths (exact GP).
  void cluster_mean(const Cluster& c, double& phi, double* dphi) const;
  // The same from the maps where they cover c, else exact.
  void cluster_energy(const Cluster& c, double& phi, double* dphi) const;
  // Latent variances of the three force components and the local energy (out[0..3]) of
  // the centre of row `row` (identity `key`): from the maps' reduced GP when all its
  // clusters lie in the tables, else exactly.
  void force_variance(const ClusterSet& cs, int row, int key, VarianceWorkspace& work,
                      double* out) const;
  // The pieces of force_variance: adds one cluster given its force-row weights (as from
  // force_row_weights; false if c lies outside the tables) together with its local-energy
  // functional, and the variances once all clusters are in (exact if some cluster was
  // outside).
  bool add_force_functional(const Cluster& c, const double* weights, VarianceWorkspace& work) const;
  void finish_force_variance(const ClusterSet& cs, int row, int key, bool inside, VarianceWorkspace& work,
                             double* out) const;
  // InputError unless the model has maps with a variance basis.
  void require_variance_maps() const;
  // InputError for the exact variance of a mapped-only model (it has no training data).
  void require_variance_mode(VarianceMode variance) const;
  void append_groups(int structure_index);
  // Appends the training targets (label - baseline, base: the baseline's result on that
  // structure, unused without a baseline) and row bookkeeping of one structure.
  void append_labels(int structure_index, const BaselineResult& base);
  // The single place where the solution stops being current: untrained and unmapped.
  void invalidate_solution();

  std::vector<int> atomic_numbers_;
  double cutoff2_, cutoff3_;
  Hyperparameters hyper_;
  std::vector<double> energy_offsets_;
  std::optional<PairBaseline> baseline_;
  std::string external_baseline_;
  std::vector<TrainingStructure> training_;
  std::vector<LabelGroup> groups_;
  std::vector<int> group_offsets_{0};
  std::vector<double> labels_;
  std::vector<int> row_kinds_, row_structures_;
  bool trained_ = false;
  bool mapped_only_ = false;
  std::vector<double> alpha_, cholesky_;
  KernelBlock contracted2_{1, 1}, contracted3_{3, 1};
  std::optional<Maps> maps_;
  std::optional<Calibration> calibration_;
  unsigned format_version_ = 0;
  std::vector<std::string> load_warnings_;
};

}  // namespace otfgp
