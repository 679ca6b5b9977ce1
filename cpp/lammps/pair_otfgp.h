// pair_style otfgp: the otfgp Gaussian-process force field in LAMMPS.
//
//   pair_style otfgp
//   pair_coeff * * model.otfgp Al Cu      (one species symbol per LAMMPS atom type)
//
//   pair_style hybrid otfgp lj/cut 10.0
//   pair_coeff * * otfgp model.otfgp Al NULL  (NULL: a type the model does not cover; its
//   pair_coeff 1 2 lj/cut ...                  pairs are another sub-style's, as with
//   pair_coeff 2 2 lj/cut ...                  eam/alloy or tersoff)
//
// Each owned atom's energy, force and virial share come from the pairs and triplets centred
// at it (the core's predict_local), so no forces land on ghost atoms and newton on/off give
// identical results.
#pragma once

#include <functional>
#include <memory>
#include <unordered_map>
#include <string>
#include <vector>

#include "lmptype.h"
#include "model.h"
#include "pair.h"

namespace otfgp_lammps {

// Per-local-atom variances at the current positions (atom index order, nlocal rows): the
// reported (calibrated, see the core's calibration.h) and the latent ones, of the three
// force components and of the local energy.
struct AtomVariances {
  std::vector<double> force, latent_force;                // 3 per atom, (eV/A)^2
  std::vector<double> local_energy, latent_local_energy;  // 1 per atom, eV^2
};

// What a consumer of the pair's variances (compute otfgp/std/atom, fix otfgp/learn,
// ...) will ask for, and on which steps, so that the force pass of those steps computes the
// variances alongside the forces (sharing the clusters) instead of a second pass.
struct VarianceRequest {
  std::function<bool(LAMMPS_NS::bigint step)> due;  // true on the steps it will ask
  bool exact = false;  // the exact GP variance even when the model has variance maps
};

}  // namespace otfgp_lammps

namespace LAMMPS_NS {

class PairOTFGP : public Pair {
 public:
  explicit PairOTFGP(class LAMMPS *);
  ~PairOTFGP() override;
  // The otfgp pair style of this LAMMPS instance, for the consumer `who` (its init());
  // a LAMMPS error when there is none, or when pair_style hybrid holds several.
  static PairOTFGP *find(class LAMMPS *lmp, const std::string &who);

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  // Forward communication of each atom's own force scale to the ghost atoms, for a force
  // calibration that scales with the neighbourhood (see complete_force_variances).
  int pack_forward_comm(int n, int *list, double *buf, int pbc_flag, int *pbc) override;
  void unpack_forward_comm(int n, int first, double *buf) override;

  // Per-atom force and local-energy variances, reported and latent, at the current
  // positions, from the pair's current neighbour list. The mapped variance when the model
  // file carries variance maps (unless exact is asked for), else exact; the reported ones
  // apply the model's calibration (in the core, as for Python). Taken from this step's
  // force pass when a registered request made it compute them (see request_variances),
  // else computed here.
  const otfgp_lammps::AtomVariances &variances(bool exact = false);
  // Registers a consumer's request; call it from the consumer's init(). The registration
  // lasts until this pair's next init_style() or until the consumer drops the returned
  // handle, whichever comes first (see init_style for why that is the right lifetime).
  [[nodiscard]] std::shared_ptr<const otfgp_lammps::VarianceRequest> request_variances(
      otfgp_lammps::VarianceRequest request);
  // Replace the model (e.g. after retraining); species must map like the old one.
  void set_model(std::unique_ptr<otfgp::Model> model);
  const otfgp::Model *model() const { return model_.get(); }
  const std::string &model_file() const { return model_file_; }
  const std::vector<std::string> &type_symbols() const { return type_symbols_; }

 private:
  // The current neighbour list as the core's environments, in member buffers that keep
  // their capacity from step to step (re-allocating them cost page faults every step).
  const otfgp::LocalEnvironments &environments();
  void map_types();
  // The variance a registered consumer will ask for on this step, if any.
  otfgp::VarianceMode variance_due() const;
  otfgp::VarianceMode variance_mode(bool exact) const;
  // Per-centre rows (cols values each, neighbour-list order) as per-local-atom rows.
  std::vector<double> local_order(const std::vector<double> &per_centre, int cols) const;
  // The whole prediction with variances for `mode`: predict_local, then, when the force
  // calibration scales with the neighbourhood, the neighbours' scales from their owners
  // (complete_force_variances). Collective: every process calls it together.
  otfgp::LocalPrediction predict(bool mean, otfgp::VarianceMode mode, const char *what);
  // Completes a prediction's pending force variances from the ghost atoms' scales,
  // communicated from their owners (on every process, even one whose ghosts are all its own
  // images, so that the communication stays collective).
  void complete_force_variances(otfgp::LocalPrediction &p);
  bool neighbourhood_scales() const;
  // All four variance arrays of a prediction in per-local-atom order.
  otfgp_lammps::AtomVariances local_variances(const otfgp::LocalPrediction &p) const;

  std::unique_ptr<otfgp::Model> model_;
  std::string model_file_;
  std::vector<std::string> type_symbols_;  // per LAMMPS type (index 1..ntypes)
  std::vector<int> type_species_;          // per LAMMPS type: model species index, -1 for NULL
  double cutmax_ = 0.0;
  otfgp::LocalEnvironments env_;
  std::unordered_map<tagint, int> key_of_tag_;
  std::vector<int> key_;                   // per local+ghost atom: identity key, -1 for NULL types
  std::vector<int> centres_;               // local atom index of each environment's centre
  std::vector<double> comm_scales_;        // per local+ghost atom: own force scale (forward comm)
  // Not owning: a consumer's handle going away (unfix, uncompute) ends its registration.
  std::vector<std::weak_ptr<const otfgp_lammps::VarianceRequest>> variance_requests_;
  // Variances computed in the force pass (or by the last variances() call): step, mode, and
  // the positions they belong to.
  otfgp_lammps::AtomVariances pass_variances_;
  std::vector<double> pass_x_;
  bigint pass_step_ = -1;
  otfgp::VarianceMode pass_mode_ = otfgp::VarianceMode::kNone;
};

}  // namespace LAMMPS_NS
