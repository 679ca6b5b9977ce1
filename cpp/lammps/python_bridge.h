// Calling otfgp's Python learning code (otfgp.lammps.learn) from inside LAMMPS.
//
// Under the `lmp` executable there is no Python interpreter: one is started once, set up to
// see the virtual environment the plugin was installed into. When LAMMPS is driven from
// Python (the `lammps` module) the running interpreter is reused. The GIL is held only
// during a call. Call these on one MPI rank only.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace otfgp_lammps {

// The learning-rule keywords of fix otfgp/learn the user gave, typed. Python fills in the
// defaults of the rest and validates the values; the names are the OTFOptions field names
// of the Python learner.
struct LearnOptions {
  std::optional<double> threshold;           // eV/A
  std::optional<double> relative_threshold;  // x sigma_n
  std::optional<double> min_threshold;       // eV/A
  std::optional<double> add_threshold;       // same kind as the threshold
  std::optional<int> max_atoms_added;
  std::optional<bool> add_energy;
  std::optional<bool> add_stress;
  std::optional<int> optimize_until_calls;
  std::optional<bool> map;
  std::optional<std::string> uncertainty;  // "exact" or "mapped"
  std::optional<std::string> force_decision;  // "latent" or "calibrated"
  std::optional<std::string> calibration;     // a form of otfgp.calibration, or "none"
  // Label sanity checks (otfgp.label_checks); infinity (keyword value `none`) turns one off.
  std::optional<double> label_max_force;            // eV/A
  std::optional<double> label_max_energy_per_atom;  // eV/atom
  std::optional<double> label_max_stress;           // GPa
  std::optional<double> label_energy_jump;          // eV/atom
  std::optional<double> label_max_z;                // reported stds
  std::optional<double> label_z_min_error;          // eV/A
  std::optional<int> scalable_after;  // training environments: the automatic switch to a ScalableGP
};

// What otfgp.lammps.learn.start gets: the fix's setup, once per run.
struct StartRequest {
  std::string fix_id, model_file, labeller, output_dir;
  std::string scalable_model;  // the ScalableGP (.npz) model_file is the export of; empty: none
  LearnOptions options;
  bool cell_changes = false;  // the box can change during the run (barostat, deform, ...)
};

// The DFT-call thresholds Python's rules give for a model: on the largest reported force
// std (eV/A) and on the largest reported local-energy std (eV; absent: no such test).
struct Thresholds {
  double force = 0.0;
  std::optional<double> local_energy;
};

// What otfgp.lammps.learn.learn gets: the setup plus the whole system (gathered on rank 0).
struct LearnRequest : StartRequest {
  std::vector<std::string> type_symbols;  // per LAMMPS type, index 1..ntypes
  std::vector<double> positions;          // 3 per atom, sorted by atom ID, box origin at 0
  std::vector<int> types;                 // per atom
  std::vector<double> stds;               // per atom: max reported force-component std (eV/A)
  std::vector<double> cell;               // 9, rows a b c
  std::vector<int> pbc;                   // 3
  long step = 0;
  double max_std = 0.0;                   // the largest of stds over the fix group
  double max_local_energy_std = 0.0;      // the largest reported local-energy std (eV)
  std::string fired;                      // which test called DFT: "force", "local_energy", "audit"
  bool audit = false;                     // labelled on schedule although below the thresholds
};

struct LearnResult {
  std::string model;      // the retrained model file's bytes (a ScalableGP's: its mapped export)
  Thresholds thresholds;  // the DFT-call thresholds for that model
};

// otfgp.lammps.learn.start(request): validates the options and returns the DFT-call
// thresholds for the current model. Throws std::runtime_error with the Python error.
Thresholds python_start(const StartRequest& request);

// otfgp.lammps.learn.learn(request): labels, retrains and returns the new model and its
// thresholds. Throws std::runtime_error with the Python error.
LearnResult python_learn(const LearnRequest& request);

// otfgp.lammps.learn.training_environments(request): the training environments of the
// model the fix learns on (a ScalableGP's count is not in its mapped export, which has no
// training data). Throws std::runtime_error with the Python error.
long python_training_environments(const StartRequest& request);

}  // namespace otfgp_lammps
