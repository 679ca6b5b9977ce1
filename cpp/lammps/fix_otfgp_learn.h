// fix ID group otfgp/learn N keyword value ...: on-the-fly learning from an input script.
//
//   fix learn all otfgp/learn 10 threshold 0.05 labeller mylabels:emt
//   fix learn all otfgp/learn 10 threshold 2.0 relative yes labeller mylabels:qe &
//       max_atoms 4 add_threshold 0.03 energy yes output learn_out map yes uncertainty exact
//
// Every N steps the largest predicted force std of the group is compared with the
// threshold (eV/A, or x sigma_n with `relative yes`, never below `min_threshold`). Above it,
// rank 0 gathers the system, calls the Python labeller (module:function, returning an ASE
// calculator or a dict of energy/forces/stress) through otfgp.lammps.learn, adds the most
// uncertain environments, retrains, saves model and frame, and all ranks load the new
// model. With `map yes` (default) the retrained model is re-mapped (spline tables) before
// it is broadcast, so the pair style runs at mapped speed between DFT calls. The decision
// uses the exact GP variance (`uncertainty exact`, default) or the mapped one (`mapped`).
// Global vector for thermo: [DFT calls, training environments, last max std].
#pragma once

#include <memory>
#include <string>

#include "fix.h"

namespace otfgp_lammps {
struct VarianceRequest;
}

namespace LAMMPS_NS {

class FixOTFGPLearn : public Fix {
 public:
  FixOTFGPLearn(class LAMMPS *, int, char **);
  int setmask() override;
  void init() override;
  void end_of_step() override;
  double compute_vector(int) override;

 private:
  void learn(double max_std, const double *per_atom_max);
  double threshold_value() const;

  int every_ = 1;
  double threshold_ = 0.0, add_threshold_ = -1.0, min_threshold_ = 0.005;
  bool relative_ = false, energy_ = false, stress_ = false, map_ = true, mapped_uncertainty_ = false;
  int max_atoms_ = 1, optimize_until_calls_ = 20;
  std::string labeller_, output_dir_ = "otfgp_learn";
  int calls_ = 0;
  double last_max_std_ = 0.0;
  class PairOTFGP *pair_ = nullptr;
  // Our registration with the pair (see PairOTFGP::request_variances); dropping it ends it.
  std::shared_ptr<const otfgp_lammps::VarianceRequest> variance_request_;
};

}  // namespace LAMMPS_NS
