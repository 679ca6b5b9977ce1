// pybind11 embedding behind python_bridge.h: interpreter set-up and the request dicts.
#include "python_bridge.h"

#include <dlfcn.h>
#include <pybind11/embed.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <filesystem>
#include <stdexcept>

namespace py = pybind11;

namespace otfgp_lammps {
namespace {

// The venv's python: the plugin lives in <venv>/lib/pythonX.Y/site-packages/otfgp/.
std::string venv_python() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&venv_python), &info) == 0 || !info.dli_fname) return "";
  namespace fs = std::filesystem;
  const fs::path venv = fs::path(info.dli_fname).parent_path().parent_path().parent_path()
                            .parent_path().parent_path();
  for (const char* name : {"bin/python3", "bin/python"})
    if (fs::exists(venv / name)) return (venv / name).string();
  return "";
}

void ensure_interpreter() {
  if (Py_IsInitialized()) return;  // driven from Python: reuse it
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;  // LAMMPS/MPI own the signals
  config.parse_argv = 0;
  const std::string program = venv_python();
  if (!program.empty()) PyConfig_SetBytesString(&config, &config.program_name, program.c_str());
  const PyStatus status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status))
    throw std::runtime_error(std::string("cannot start Python: ") +
                             (status.err_msg ? status.err_msg : "unknown error"));
  // Never finalised (extension modules do not survive re-initialisation); release the GIL
  // so that every call below takes it the same way.
  PyEval_SaveThread();
}

py::array_t<double> as_array(const std::vector<double>& v, std::vector<py::ssize_t> shape) {
  py::array_t<double> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// Only the keywords the user gave, so Python's defaults stay the only defaults.
py::dict options_dict(const LearnOptions& o) {
  py::dict d;
  const auto put = [&d](const char* name, const auto& value) {
    if (value) d[name] = *value;
  };
  put("threshold", o.threshold);
  put("relative_threshold", o.relative_threshold);
  put("min_threshold", o.min_threshold);
  put("add_threshold", o.add_threshold);
  put("max_atoms_added", o.max_atoms_added);
  put("add_energy", o.add_energy);
  put("add_stress", o.add_stress);
  put("optimize_until_calls", o.optimize_until_calls);
  put("map", o.map);
  put("uncertainty", o.uncertainty);
  put("force_decision", o.force_decision);
  if (o.calibration) {
    if (*o.calibration == "none")
      d["calibration"] = py::none();
    else
      d["calibration"] = *o.calibration;
  }
  put("label_max_force", o.label_max_force);
  put("label_max_energy_per_atom", o.label_max_energy_per_atom);
  put("label_max_stress", o.label_max_stress);
  put("label_energy_jump", o.label_energy_jump);
  put("label_max_z", o.label_max_z);
  put("label_z_min_error", o.label_z_min_error);
  put("scalable_after", o.scalable_after);
  return d;
}

py::dict start_dict(const StartRequest& r) {
  py::dict req;
  req["fix_id"] = r.fix_id;
  req["model_file"] = r.model_file;
  req["labeller"] = r.labeller;
  req["output_dir"] = r.output_dir;
  req["scalable_model"] = r.scalable_model.empty() ? py::object(py::none()) : py::object(py::str(r.scalable_model));
  req["options"] = options_dict(r.options);
  req["cell_changes"] = r.cell_changes;
  return req;
}

// (force, local_energy or None) from Python.
Thresholds thresholds_of(const py::handle& h) {
  const auto t = h.cast<py::tuple>();
  if (t.size() != 2) throw py::cast_error();
  Thresholds out;
  out.force = t[0].cast<double>();
  if (!t[1].is_none()) out.local_energy = t[1].cast<double>();
  return out;
}

// Calls otfgp.lammps.learn.<function>(make_request()) and converts its result with
// `convert`. The request is built in here because Python objects need the interpreter and
// the GIL; Python errors and results of the wrong type become runtime_errors.
template <class MakeRequest, class Convert>
auto call_learn_module(const char* function, MakeRequest make_request, Convert convert) {
  ensure_interpreter();
  py::gil_scoped_acquire gil;
  try {
    py::object result = py::module_::import("otfgp.lammps.learn").attr(function)(make_request());
    try {
      return convert(result);
    } catch (const py::cast_error&) {
      throw std::runtime_error(std::string("otfgp.lammps.learn.") + function + " returned " +
                               py::str(py::type::of(result)).cast<std::string>() +
                               ", not the expected type");
    }
  } catch (py::error_already_set& e) {
    throw std::runtime_error(e.what());
  }
}

}  // namespace

Thresholds python_start(const StartRequest& r) {
  return call_learn_module("start", [&r] { return start_dict(r); },
                           [](const py::object& result) { return thresholds_of(result); });
}

LearnResult python_learn(const LearnRequest& r) {
  const auto request = [&r] {
    const auto n = static_cast<py::ssize_t>(r.types.size());
    py::dict req = start_dict(r);
    req["type_symbols"] = r.type_symbols;
    req["positions"] = as_array(r.positions, {n, 3});
    req["types"] = r.types;
    req["stds"] = as_array(r.stds, {n});
    req["cell"] = as_array(r.cell, {3, 3});
    req["pbc"] = r.pbc;
    req["step"] = r.step;
    req["max_std"] = r.max_std;
    req["max_local_energy_std"] = r.max_local_energy_std;
    req["fired"] = r.fired;
    req["audit"] = r.audit;
    return req;
  };
  return call_learn_module("learn", request, [](const py::object& result) {
    const auto triple = result.cast<py::tuple>();
    if (triple.size() != 3) throw py::cast_error();
    return LearnResult{triple[0].cast<py::bytes>(), thresholds_of(py::make_tuple(triple[1], triple[2]))};
  });
}

long python_training_environments(const StartRequest& r) {
  return call_learn_module("training_environments", [&r] { return start_dict(r); },
                           [](const py::object& result) { return result.cast<long>(); });
}

}  // namespace otfgp_lammps
