// fix ID group otfgp/learn N keyword value ...: on-the-fly learning from an input script.
//
//   fix learn all otfgp/learn 10 threshold 0.05 labeller mylabels:emt
//   fix learn all otfgp/learn 10 relative_threshold 2.0 labeller mylabels:qe &
//       max_atoms_added 4 add_threshold 1.5 add_energy yes output_dir learn_out uncertainty exact
//
// Every N steps the largest force std of the group is compared with a threshold (eV/A): the
// latent one, or with `force_decision calibrated` its epistemic part; and the largest
// epistemic local-energy std with a second threshold (eV) when Python gives one.
// Epistemic: the part of the model's reported (calibrated) stds that more data reduce. The
// ASE learner compares the same, so a threshold means the same in both; `calibration FORM`
// (or none) is the form refitted after every retrain (default neighbourhood). Above either, rank 0 gathers the system and hands it to Python
// (otfgp.lammps.learn), which labels it with the user's labeller (module:function), decides
// what to add, retrains, re-maps, saves, and returns the new model and the thresholds for
// it; all ranks load the new model. Everything of the learning rule but those comparisons
// is Python's, including the thresholds themselves (absolute, or relative to sigma_n with a
// floor): the keywords are passed on as typed options and validated there. The decision
// uses the exact GP variance (`uncertainty exact`, default) or the mapped one (`mapped`),
// which this fix requests from the pair.
// With `audit_every M` (a multiple of N) the frame of every M-th step is labelled even below
// the threshold: an audit, whose error before learning is an unbiased sample of the real
// error (learn_log.jsonl "pre_update"). Global vector for thermo: [DFT calls, training
// environments, last max force std, last max local-energy std]; the stds are measured at
// the run's setup too, so the first thermo row shows those of the starting configuration.
// While rank 0 is in Python (labelling, retraining) the other ranks sleep, not spin.
// With `scalable_after M` Python switches to a ScalableGP once the training set passes M
// environments, and `scalable_model FILE` starts from one (the pair's model file being its
// mapped export); the pair then gets the mapped export, whose maps are the model's own
// variance, so the fix asks the pair for the mapped variance from then on.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fix.h"
#include "python_bridge.h"

namespace otfgp_lammps {
struct VarianceRequest;
}

namespace LAMMPS_NS {

class FixOTFGPLearn : public Fix {
 public:
  FixOTFGPLearn(class LAMMPS *, int, char **);
  int setmask() override;
  void init() override;
  void setup(int) override;
  void end_of_step() override;
  double compute_vector(int) override;

 private:
  void parse_keywords(int narg, char **arg);
  // (Re-)registers the every-N-steps variance request with the pair for its current model.
  void request_variances();
  // The group's largest force and local-energy stds (into last_max_*, on every rank);
  // returns each local atom's largest force-component std.
  std::vector<double> measure_uncertainty();
  // `fired`: which test called DFT ("force", "local_energy" or "audit").
  void learn(const double *per_atom_max, const char *fired);
  // Runs `call` on rank 0 only and broadcasts the outcome: nullopt on every rank if it
  // succeeded, else its error message, so an exception on rank 0 ends every rank cleanly.
  // The other ranks sleep meanwhile instead of spinning in MPI (idle_until_rank0_arrives).
  std::optional<std::string> on_rank0(const std::function<void()> &call) const;

  otfgp_lammps::StartRequest setup_;  // fix ID, labeller, output dir, options; model at init
  bool mapped_uncertainty_ = false;   // keyword uncertainty mapped
  bool latent_force_decision_ = true;  // keyword force_decision (latent, default, or calibrated)
  bool exact_variance_ = true;        // what the current request asks for (request_variances)
  bigint audit_every_ = 0;            // keyword audit_every (MD steps; 0: no audits)
  otfgp_lammps::Thresholds thresholds_;  // from Python for the current model
  int calls_ = 0;
  long training_environments_ = 0;  // of the model Python learns on (thermo f_ID[2])
  double last_max_std_ = 0.0;            // eV/A
  double last_max_local_energy_std_ = 0.0;  // eV
  class PairOTFGP *pair_ = nullptr;
  // Our registration with the pair (see PairOTFGP::request_variances); dropping it ends it.
  std::shared_ptr<const otfgp_lammps::VarianceRequest> variance_request_;
};

}  // namespace LAMMPS_NS
