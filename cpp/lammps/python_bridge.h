// Calling otfgp's Python training code from inside LAMMPS.
//
// Under the `lmp` executable there is no Python interpreter: one is started once, set up to
// see the virtual environment the plugin was installed into. When LAMMPS is driven from
// Python (the `lammps` module) the running interpreter is reused. The GIL is held only
// during a call.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace otfgp_lammps {

// One labelling + retraining request from fix otfgp/learn (the whole system, on rank 0).
struct LearnRequest {
  std::string fix_id, labeller, model_file, output_dir;
  std::vector<std::string> type_symbols;  // per LAMMPS type, index 1..ntypes
  std::vector<double> positions;          // 3 per atom, sorted by atom ID
  std::vector<int> types;                 // per atom
  std::vector<double> stds;               // per atom: max force-component std (eV/A)
  std::vector<double> cell;               // 9, rows a b c
  std::vector<int> pbc;                   // 3
  long step = 0;
  std::map<std::string, double> options;  // max_atoms, add_threshold, energy, stress, ...
};

// Runs otfgp.lammps.learn.learn(request) and returns the retrained model file bytes.
// Throws std::runtime_error carrying the Python exception text.
std::string python_learn(const LearnRequest& request);

}  // namespace otfgp_lammps
