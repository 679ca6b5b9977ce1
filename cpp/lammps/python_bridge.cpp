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

}  // namespace

std::string python_learn(const LearnRequest& r) {
  ensure_interpreter();
  py::gil_scoped_acquire gil;
  try {
    const auto n = static_cast<py::ssize_t>(r.types.size());
    py::dict req;
    req["fix_id"] = r.fix_id;
    req["labeller"] = r.labeller;
    req["model_file"] = r.model_file;
    req["output_dir"] = r.output_dir;
    req["type_symbols"] = r.type_symbols;
    req["positions"] = as_array(r.positions, {n, 3});
    req["types"] = r.types;
    req["stds"] = as_array(r.stds, {n});
    req["cell"] = as_array(r.cell, {3, 3});
    req["pbc"] = r.pbc;
    req["step"] = r.step;
    req["options"] = r.options;
    py::object result = py::module_::import("otfgp.lammps.learn").attr("learn")(req);
    return result.cast<std::string>();
  } catch (py::error_already_set& e) {
    throw std::runtime_error(e.what());
  }
}

}  // namespace otfgp_lammps
