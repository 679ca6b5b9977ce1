// pybind11 module otfgp._core: a thin layer that moves numpy arrays in and out of the core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <optional>

#include "clusters.h"
#include "errors.h"
#include "neighbors.h"
#include "model.h"
#include "model_io.h"

namespace py = pybind11;
using otfgp::Model;

void bind_basis_design(py::module_& m);  // basis_bindings.cpp

namespace {

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using IntArray = py::array_t<int, py::array::c_style | py::array::forcecast>;

otfgp::Structure make_structure(const DoubleArray& cell, const std::array<bool, 3>& pbc,
                                const DoubleArray& positions, const IntArray& species) {
  if (cell.ndim() != 2 || cell.shape(0) != 3 || cell.shape(1) != 3)
    throw otfgp::InputError("cell must have shape (3, 3)");
  if (positions.ndim() != 2 || positions.shape(1) != 3)
    throw otfgp::InputError("positions must have shape (n_atoms, 3)");
  if (species.ndim() != 1 || species.shape(0) != positions.shape(0))
    throw otfgp::InputError("species must have shape (n_atoms,) matching positions");
  otfgp::Structure s;
  std::copy_n(cell.data(), 9, s.cell.begin());
  s.pbc = pbc;
  s.positions.assign(positions.data(), positions.data() + positions.size());
  s.species.assign(species.data(), species.data() + species.size());
  return s;
}

py::array_t<double> to_array(const std::vector<double>& v, std::vector<py::ssize_t> shape) {
  py::array_t<double> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// Python's variance argument: False/None (none), True or "auto" (mapped if the model has
// variance maps, else exact), "exact", "mapped".
otfgp::VarianceMode variance_mode(const Model& mdl, const py::object& v) {
  using otfgp::VarianceMode;
  if (v.is_none()) return VarianceMode::kNone;
  if (py::isinstance<py::bool_>(v)) {
    if (!v.cast<bool>()) return VarianceMode::kNone;
  } else if (py::isinstance<py::str>(v)) {
    const auto s = v.cast<std::string>();
    if (s == "exact") return VarianceMode::kExact;
    if (s == "mapped") return VarianceMode::kMapped;
    if (s != "auto")
      throw otfgp::InputError("variance must be True, False, 'auto', 'exact' or 'mapped', got '" + s + "'");
  } else {
    throw otfgp::InputError("variance must be True, False, 'auto', 'exact' or 'mapped'");
  }
  const auto* maps = mdl.maps();
  return maps && maps->has_variance() ? VarianceMode::kMapped : VarianceMode::kExact;
}

DoubleArray descriptors(const DoubleArray& d, int& dim) {
  if (d.ndim() != 2 || (d.shape(1) != 1 && d.shape(1) != 3))
    throw otfgp::InputError("descriptors must have shape (n, 1) for pairs or (n, 3) for triplets");
  dim = static_cast<int>(d.shape(1));
  return d;
}

std::vector<double> as_vector(const DoubleArray& a) { return {a.data(), a.data() + a.size()}; }

// Maps from Python dicts (see set_maps); a table gives `mean` (spline grid) and/or
// `basis_mean` (the mean in the variance basis).
otfgp::Maps maps_from_python(const otfgp::Model& mdl, const py::list& tables,
                             const std::optional<DoubleArray>& covariance, const std::string& info) {
  otfgp::Maps maps;
  for (const auto& item : tables) {
    const auto t = item.cast<py::dict>();
    otfgp::SplineTable st;
    st.dim = t["dim"].cast<int>();
    st.type = t["type"].cast<int>();
    st.n = t["n"].cast<int>();
    st.lo = t["lo"].cast<double>();
    st.hi = t["hi"].cast<double>();
    if (t.contains("mean") && !t["mean"].is_none()) st.mean = as_vector(t["mean"].cast<DoubleArray>());
    if (t.contains("nv")) st.nv = t["nv"].cast<int>();
    if (t.contains("variance_degree")) st.vdeg = t["variance_degree"].cast<int>();
    if (t.contains("basis_mean")) st.basis_mean = as_vector(t["basis_mean"].cast<DoubleArray>());
    maps.add(std::move(st), mdl.n_species());
  }
  if (covariance) maps.set_covariance(as_vector(*covariance));
  maps.info = info;
  return maps;
}

// Calibration maps as Python sees them: dict(a, p, b, c, e, radius); a tuple (a, p, b, c, e)
// or (a, p, b, c, e, radius) is accepted too. A dict may leave out coefficients, which then
// take the identity's values (radius 0: the atom's own force scale).
otfgp::VarianceMap variance_map_of(const py::handle& h) {
  otfgp::VarianceMap m;
  double* fields[6] = {&m.a, &m.p, &m.b, &m.c, &m.e, &m.radius};
  static const char* names[6] = {"a", "p", "b", "c", "e", "radius"};
  if (py::isinstance<py::dict>(h)) {
    const auto d = h.cast<py::dict>();
    for (auto item : d) {
      const auto key = item.first.cast<std::string>();
      int k = 0;
      while (k < 6 && key != names[k]) ++k;
      if (k == 6)
        throw otfgp::InputError("unknown calibration coefficient '" + key + "' (a, p, b, c, e, radius)");
      *fields[k] = item.second.cast<double>();
    }
  } else {
    const auto t = h.cast<std::vector<double>>();
    if (t.size() != 5 && t.size() != 6)
      throw otfgp::InputError("a calibration map has 5 coefficients (a, p, b, c, e) and optionally a radius");
    for (std::size_t k = 0; k < t.size(); ++k) *fields[k] = t[k];
  }
  return m;
}

py::dict variance_map_dict(const otfgp::VarianceMap& m) {
  py::dict d;
  d["a"] = m.a;
  d["p"] = m.p;
  d["b"] = m.b;
  d["c"] = m.c;
  d["e"] = m.e;
  d["radius"] = m.radius;
  return d;
}

// In the order of otfgp::VarianceQuantity.
constexpr const char* kQuantities[4] = {"force", "energy", "stress", "local_energy"};

otfgp::VarianceMap* calibration_map(otfgp::Calibration& c, int k) {
  otfgp::VarianceMap* maps[4] = {&c.force, &c.energy, &c.stress, &c.local_energy};
  return maps[k];
}

// The baseline crosses as a dict: kind ('morse', 'lennard_jones', 'zbl'), cutoff, elements
// (atomic numbers), params (one triple per element), overrides (list of (z1, z2, triple)).
constexpr const char* kBaselineKinds[4] = {"", "morse", "lennard_jones", "zbl"};

otfgp::BaselineSpec baseline_spec_of(const py::dict& d) {
  otfgp::BaselineSpec b;
  for (auto item : d) {
    const auto key = item.first.cast<std::string>();
    if (key != "kind" && key != "cutoff" && key != "elements" && key != "params" && key != "overrides")
      throw otfgp::InputError("unknown baseline key '" + key + "' (kind, cutoff, elements, params, overrides)");
  }
  if (!d.contains("kind") || !d.contains("cutoff"))
    throw otfgp::InputError("a baseline needs 'kind' and 'cutoff'");
  const auto kind = d["kind"].cast<std::string>();
  int k = 1;
  while (k < 4 && kind != kBaselineKinds[k]) ++k;
  if (k == 4) throw otfgp::InputError("unknown baseline kind '" + kind + "' (morse, lennard_jones, zbl)");
  b.kind = static_cast<otfgp::BaselineKind>(k);
  b.cutoff = d["cutoff"].cast<double>();
  if (d.contains("elements")) b.elements = d["elements"].cast<std::vector<int>>();
  if (d.contains("params")) b.params = d["params"].cast<std::vector<std::array<double, 3>>>();
  if (d.contains("overrides"))
    for (const auto& o : d["overrides"].cast<std::vector<std::tuple<int, int, std::array<double, 3>>>>())
      b.overrides.push_back({std::get<0>(o), std::get<1>(o), std::get<2>(o)});
  return b;
}

py::dict baseline_dict(const otfgp::BaselineSpec& b) {
  py::dict d;
  d["kind"] = kBaselineKinds[static_cast<int>(b.kind)];
  d["cutoff"] = b.cutoff;
  d["elements"] = b.elements;
  d["params"] = b.params;
  py::list overrides;
  for (const auto& o : b.overrides) overrides.append(py::make_tuple(o.z1, o.z2, o.params));
  d["overrides"] = overrides;
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "otfgp C++ core: 2+3-body Gaussian-process force field";
  auto input_error = py::register_exception<otfgp::InputError>(m, "InputError", PyExc_ValueError);
  py::register_exception<otfgp::ModelFileError>(m, "ModelFileError", PyExc_ValueError);
  py::register_exception<otfgp::NotTrainedError>(m, "NotTrainedError", PyExc_RuntimeError);
  bind_basis_design(m);
  (void)input_error;
  m.attr("MODEL_FORMAT_VERSION") = otfgp::kModelFormatVersion;
  m.attr("CALIBRATION_FORMAT_VERSION") = otfgp::kCalibrationFormatVersion;
  m.attr("BASELINE_FORMAT_VERSION") = otfgp::kBaselineFormatVersion;
  m.attr("EXTERNAL_BASELINE_FORMAT_VERSION") = otfgp::kExternalBaselineFormatVersion;
  m.def(
      "evaluate_baseline",
      [](const py::dict& spec, const std::vector<int>& atomic_numbers, const DoubleArray& cell,
         const std::array<bool, 3>& pbc, const DoubleArray& positions, const IntArray& species) {
        const otfgp::PairBaseline b(baseline_spec_of(spec), atomic_numbers);
        const otfgp::Structure s = make_structure(cell, pbc, positions, species);
        const otfgp::BaselineResult r = b.evaluate(s);
        const auto n = static_cast<py::ssize_t>(s.size());
        py::dict d;
        d["energy"] = r.energy;
        d["forces"] = to_array(r.forces, {n, 3});
        d["local_energies"] = to_array(r.local_energies, {n});
        d["virial"] = to_array({r.virial.begin(), r.virial.end()}, {6});
        return d;
      },
      py::arg("spec"), py::arg("atomic_numbers"), py::arg("cell"), py::arg("pbc"), py::arg("positions"),
      py::arg("species"),
      "The baseline alone on a structure (species index atomic_numbers): energy, forces, "
      "local_energies and virial (dE/d strain, eV, Voigt xx yy zz yz xz xy).");

  m.def(
      "apply_variance_map",
      [](const py::object& coefficients, const py::object& latent, const py::object& noise,
         const py::object& mean) {
        const otfgp::VarianceMap map = variance_map_of(coefficients);
        map.validate("the");
        // numpy broadcasting, then the core's rule on contiguous copies.
        auto np = py::module_::import("numpy");
        const py::object mean_or_zero = mean.is_none() ? py::object(py::float_(0.0)) : mean;
        const auto arrays = np.attr("broadcast_arrays")(latent, noise, mean_or_zero).cast<py::tuple>();
        const DoubleArray v = DoubleArray::ensure(np.attr("ascontiguousarray")(arrays[0], "float64"));
        const DoubleArray n = DoubleArray::ensure(np.attr("ascontiguousarray")(arrays[1], "float64"));
        const DoubleArray mu = DoubleArray::ensure(np.attr("ascontiguousarray")(arrays[2], "float64"));
        std::vector<py::ssize_t> shape(v.shape(), v.shape() + v.ndim());
        py::array_t<double> out(shape);
        otfgp::apply_variance_map(map, static_cast<std::size_t>(v.size()), v.data(), n.data(), 1, mu.data(), 1,
                                  out.mutable_data());
        return out;
      },
      py::arg("coefficients"), py::arg("latent"), py::arg("noise"), py::arg("mean") = py::none(),
      "Reported variance a max(latent, 0)^p + b + c mean^2 + e noise (numpy broadcasting), the "
      "core's calibration rule; coefficients: dict(a, p, b, c, e) or a 5-tuple.");
  m.def(
      "force_scale_values",
      [](const py::object& forces) {
        auto np = py::module_::import("numpy");
        const DoubleArray f = DoubleArray::ensure(np.attr("ascontiguousarray")(forces, "float64"));
        std::vector<py::ssize_t> shape(f.shape(), f.shape() + f.ndim());
        py::array_t<double> out(shape);
        otfgp::force_scale_values(static_cast<std::size_t>(f.size()), f.data(), out.mutable_data());
        return out;
      },
      py::arg("forces"),
      "The values a force calibration map scales with: each atom's RMS force component "
      "|F_i|/sqrt(3), repeated for its three components (same shape as forces).");
  m.def(
      "neighbourhood_scale_values",
      [](const DoubleArray& cell, const std::array<bool, 3>& pbc, const DoubleArray& positions,
         const DoubleArray& forces, double radius) {
        if (!(radius >= 0.0)) throw otfgp::InputError("the radius must be non-negative");
        const auto n = static_cast<py::ssize_t>(positions.shape(0));
        if (forces.ndim() != 2 || forces.shape(0) != n || forces.shape(1) != 3)
          throw otfgp::InputError("forces must be N x 3 for N positions");
        IntArray species(std::vector<py::ssize_t>{n});
        std::fill(species.mutable_data(), species.mutable_data() + n, 0);
        const otfgp::Structure s = make_structure(cell, pbc, positions, species);
        std::vector<double> out;
        {
          py::gil_scoped_release release;
          out = otfgp::structure_force_scales(s, forces.data(), radius);
        }
        return to_array(out, {n, 3});
      },
      py::arg("cell"), py::arg("pbc"), py::arg("positions"), py::arg("forces"), py::arg("radius"),
      "The scale values (N x 3) of a force calibration map with this radius on a structure "
      "with predicted forces: the RMS of |F_j|/sqrt(3) over each atom and its neighbours "
      "closer than radius, every periodic image counted (radius 0: force_scale_values).");

  m.def("set_num_threads", [](int n) {
#ifdef _OPENMP
    if (n < 1) throw otfgp::InputError("number of threads must be >= 1");
    omp_set_num_threads(n);
#else
    (void)n;
#endif
  }, "Set the number of OpenMP threads used by the core.");
  m.def("get_max_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });

  py::class_<Model>(m, "Model")
      .def(py::init<std::vector<int>, double, double>(), py::arg("atomic_numbers"),
           py::arg("cutoff2"), py::arg("cutoff3"))
      .def_property_readonly("atomic_numbers", &Model::atomic_numbers)
      .def_property_readonly("cutoff2", &Model::cutoff2)
      .def_property_readonly("cutoff3", &Model::cutoff3)
      .def("species_index", &Model::species_index)
      .def_property(
          "hyperparameters", [](const Model& mdl) { return mdl.hyperparameters().as_array(); },
          [](Model& mdl, const std::array<double, 7>& a) {
            mdl.set_hyperparameters(otfgp::Hyperparameters::from_array(a));
          })
      .def_property("energy_offsets", &Model::energy_offsets, &Model::set_energy_offsets)
      .def(
          "add_training_structure",
          [](Model& mdl, const DoubleArray& cell, const std::array<bool, 3>& pbc,
             const DoubleArray& positions, const IntArray& species, const IntArray& force_atoms,
             const DoubleArray& forces, std::optional<double> energy,
             std::optional<DoubleArray> stress, std::optional<DoubleArray> prior) {
            otfgp::TrainingStructure ts;
            if (prior) ts.prior.assign(prior->data(), prior->data() + prior->size());
            ts.structure = make_structure(cell, pbc, positions, species);
            ts.force_atoms.assign(force_atoms.data(), force_atoms.data() + force_atoms.size());
            ts.forces.assign(forces.data(), forces.data() + forces.size());
            if (energy) {
              ts.has_energy = true;
              ts.energy = *energy;
            }
            if (stress) {
              if (stress->size() != 6) throw otfgp::InputError("stress label must have 6 Voigt components");
              ts.has_stress = true;
              std::copy_n(stress->data(), 6, ts.stress.begin());
            }
            mdl.add_training_structure(std::move(ts));
          },
          py::arg("cell"), py::arg("pbc"), py::arg("positions"), py::arg("species"),
          py::arg("force_atoms"), py::arg("forces"), py::arg("energy") = py::none(),
          py::arg("stress") = py::none(), py::arg("prior") = py::none())
      .def(
          "training_structure",
          [](const Model& mdl, int k) {
            const auto& all = mdl.training_structures();
            if (k < 0 || k >= static_cast<int>(all.size()))
              throw otfgp::InputError("training structure index out of range");
            const auto& ts = all[k];
            const auto n = static_cast<py::ssize_t>(ts.structure.size());
            py::dict d;
            d["cell"] = to_array({ts.structure.cell.begin(), ts.structure.cell.end()}, {3, 3});
            d["pbc"] = ts.structure.pbc;
            d["positions"] = to_array(ts.structure.positions, {n, 3});
            d["species"] = ts.structure.species;
            d["force_atoms"] = ts.force_atoms;
            d["forces"] = to_array(ts.forces, {static_cast<py::ssize_t>(ts.force_atoms.size()), 3});
            d["energy"] = ts.has_energy ? py::object(py::float_(ts.energy)) : py::object(py::none());
            d["stress"] = ts.has_stress ? py::object(to_array({ts.stress.begin(), ts.stress.end()}, {6}))
                                        : py::object(py::none());
            d["prior"] = to_array(ts.prior, {static_cast<py::ssize_t>(ts.prior.size())});
            return d;
          },
          "The k-th training structure and its labels (prior: the external baseline's values "
          "of its label rows, empty without one).")
      .def_property_readonly("n_groups", &Model::n_groups)
      .def_property_readonly("n_labels", &Model::n_labels)
      .def_property_readonly("n_structures",
                             [](const Model& mdl) { return mdl.training_structures().size(); })
      .def_property_readonly("n_force_environments", &Model::n_force_environments)
      .def("group_row_offset", &Model::group_row_offset)
      .def_property_readonly("labels", [](const Model& mdl) {
        return to_array(mdl.labels(), {static_cast<py::ssize_t>(mdl.labels().size())});
      })
      .def_property_readonly("row_kinds", &Model::row_kinds)
      .def_property_readonly("row_structures", &Model::row_structures)
      .def_property_readonly("structure_species", [](const Model& mdl) {
        std::vector<std::vector<int>> out;
        for (const auto& ts : mdl.training_structures()) out.push_back(ts.structure.species);
        return out;
      })
      .def(
          "covariance",
          [](const Model& mdl, int g0, int g1, int h0, int h1, bool grad, std::optional<double> ell2,
             std::optional<double> ell3) {
            const int nr = mdl.group_row_offset(g1) - mdl.group_row_offset(g0);
            const int nc = mdl.group_row_offset(h1) - mdl.group_row_offset(h0);
            py::array_t<double> K2({nr, nc}), K3({nr, nc});
            py::array_t<double> d2(grad ? std::vector<py::ssize_t>{nr, nc} : std::vector<py::ssize_t>{0});
            py::array_t<double> d3(grad ? std::vector<py::ssize_t>{nr, nc} : std::vector<py::ssize_t>{0});
            double *k2 = K2.mutable_data(), *k3 = K3.mutable_data();
            double *p2 = grad ? d2.mutable_data() : nullptr, *p3 = grad ? d3.mutable_data() : nullptr;
            {
              py::gil_scoped_release release;
              mdl.covariance(g0, g1, h0, h1, ell2.value_or(mdl.hyperparameters().ell2),
                             ell3.value_or(mdl.hyperparameters().ell3), k2, k3, p2, p3);
            }
            return py::make_tuple(K2, K3, d2, d3);
          },
          py::arg("g0"), py::arg("g1"), py::arg("h0"), py::arg("h1"), py::arg("grad") = false,
          py::arg("ell2") = py::none(), py::arg("ell3") = py::none(),
          "Unscaled covariance blocks K2, K3 (and d/d ell2, d/d ell3 if grad), at the model's "
          "length scales or at the given ones (the model is left untouched).")
      .def(
          "set_solution",
          [](Model& mdl, const DoubleArray& alpha, const DoubleArray& chol) {
            const auto n = static_cast<py::ssize_t>(mdl.n_labels());
            if (chol.ndim() != 2 || chol.shape(0) != n || chol.shape(1) != n)
              throw otfgp::InputError("Cholesky factor must have shape (n_labels, n_labels)");
            mdl.set_solution(std::vector<double>(alpha.data(), alpha.data() + alpha.size()),
                             std::vector<double>(chol.data(), chol.data() + chol.size()));
          })
      .def_property_readonly("trained", &Model::trained)
      .def_property_readonly("load_warnings", &Model::load_warnings,
                             "What reading the model file repaired (e.g. stale maps dropped).")
      .def_property_readonly("alpha", [](const Model& mdl) {
        return to_array(mdl.alpha(), {static_cast<py::ssize_t>(mdl.alpha().size())});
      })
      .def_property_readonly("cholesky", [](const Model& mdl) {
        const auto n = static_cast<py::ssize_t>(mdl.alpha().size());
        return to_array(mdl.cholesky(), {n, n});
      })
      .def(
          "predict",
          [](const Model& mdl, const DoubleArray& cell, const std::array<bool, 3>& pbc,
             const DoubleArray& positions, const IntArray& species, const py::object& variance) {
            otfgp::Structure s = make_structure(cell, pbc, positions, species);
            const auto mode = variance_mode(mdl, variance);
            otfgp::Prediction p;
            {
              py::gil_scoped_release release;
              p = mdl.predict(s, mode);
            }
            const auto n = static_cast<py::ssize_t>(s.size());
            py::dict d;
            d["energy"] = p.energy;
            d["forces"] = to_array(p.forces, {n, 3});
            d["local_energies"] = to_array(p.local_energies, {n});
            d["stress"] = to_array({p.stress.begin(), p.stress.end()}, {6});
            if (p.has_variance) {
              // Reported (calibrated) variances under the plain names, latent ones prefixed.
              d["energy_variance"] = p.energy_variance;
              d["force_variances"] = to_array(p.force_variances, {n, 3});
              d["local_energy_variances"] = to_array(p.local_energy_variances, {n});
              d["stress_variances"] =
                  to_array({p.stress_variances.begin(), p.stress_variances.end()}, {6});
              d["latent_energy_variance"] = p.latent_energy_variance;
              d["latent_force_variances"] = to_array(p.latent_force_variances, {n, 3});
              d["latent_local_energy_variances"] = to_array(p.latent_local_energy_variances, {n});
              d["latent_stress_variances"] =
                  to_array({p.latent_stress_variances.begin(), p.latent_stress_variances.end()}, {6});
              d["variance_mode"] = mode == otfgp::VarianceMode::kMapped ? "mapped" : "exact";
            }
            return d;
          },
          py::arg("cell"), py::arg("pbc"), py::arg("positions"), py::arg("species"),
          py::arg("variance") = py::bool_(true))
      .def(
          "predict_local",
          [](const Model& mdl, const DoubleArray& cell, const std::array<bool, 3>& pbc,
             const DoubleArray& positions, const IntArray& species, const py::object& variance) {
            // The MD-code path (per-centre environments), driven from a whole structure.
            otfgp::Structure s = make_structure(cell, pbc, positions, species);
            otfgp::validate_structure(s, mdl.n_species());
            otfgp::LocalEnvironments env;
            env.key_species = s.species;
            for (std::size_t i = 0; i < s.size(); ++i) env.centre_keys.push_back(static_cast<int>(i));
            const auto mode = variance_mode(mdl, variance);
            otfgp::LocalPrediction p;
            {
              py::gil_scoped_release release;
              env.neighbors = otfgp::build_neighbor_list(
                  s, mdl.interaction_cutoff(), otfgp::kMinDistance);
              p = mdl.predict_local(env, true, mode);
              // every atom is a centre here and its key its index, so the centres' own scales
              // are every key's
              if (p.force_variances_pending) mdl.finish_local_force_variances(env, p.force_scales, p);
            }
            const auto n = static_cast<py::ssize_t>(s.size());
            py::dict d;
            d["energies"] = to_array(p.energies, {n});
            d["forces"] = to_array(p.forces, {n, 3});
            d["virials"] = to_array(p.virials, {n, 6});
            if (mode != otfgp::VarianceMode::kNone) {
              d["force_variances"] = to_array(p.force_variances, {n, 3});
              d["latent_force_variances"] = to_array(p.latent_force_variances, {n, 3});
              d["local_energy_variances"] = to_array(p.energy_variances, {n});
              d["latent_local_energy_variances"] = to_array(p.latent_energy_variances, {n});
            }
            return d;
          },
          py::arg("cell"), py::arg("pbc"), py::arg("positions"), py::arg("species"),
          py::arg("variance") = py::bool_(false),
          "Per-atom energies, forces, virials (LAMMPS order) via the MD-code path.")
      .def(
          "cluster_counts",
          [](const Model& mdl, const DoubleArray& cell, const std::array<bool, 3>& pbc,
             const DoubleArray& positions, const IntArray& species) {
            const auto cs = mdl.clusters_of(make_structure(cell, pbc, positions, species));
            return py::make_tuple(cs.pair_offsets, cs.triplet_offsets);
          },
          "Per-atom offsets of pair and triplet copies (for diagnostics and tests).")
      .def(
          "cluster_means",
          [](const Model& mdl, int type, const DoubleArray& d_in) {
            int dim = 0;
            const DoubleArray d = descriptors(d_in, dim);
            const auto n = static_cast<py::ssize_t>(d.shape(0));
            py::array_t<double> phi(n), dphi({n, static_cast<py::ssize_t>(dim)});
            {
              py::gil_scoped_release release;
              mdl.cluster_means(dim, type, d.data(), static_cast<int>(n), phi.mutable_data(),
                                dphi.mutable_data());
            }
            return py::make_tuple(phi, dphi);
          },
          py::arg("type"), py::arg("descriptors"),
          "Exact GP mean phi and d(phi)/d(edges) of bare clusters (n, dim) of one type.")
      .def(
          "group_blocks",
          [](const Model& mdl, int g) {
            if (g < 0 || g >= mdl.n_groups()) throw otfgp::InputError("group index out of range");
            const otfgp::LabelGroup& G = mdl.group(g);
            py::dict out;
            for (const auto& [name, blk] : {std::pair<const char*, const otfgp::KernelBlock*>{"two", &G.two},
                                            {"three", &G.three}}) {
              const auto k = static_cast<py::ssize_t>(blk->size());
              py::array_t<int> type(k);
              std::copy(blk->type.begin(), blk->type.end(), type.mutable_data());
              out[name] = py::make_tuple(
                  type, to_array(blk->desc, {k, static_cast<py::ssize_t>(blk->dim)}),
                  to_array(blk->coef, {k, static_cast<py::ssize_t>(blk->rows), static_cast<py::ssize_t>(1 + blk->dim)}));
            }
            out["rows"] = G.rows;
            return out;
          },
          py::arg("group"),
          "Clusters of a training label group per body order: (types, descriptors, coefficients "
          "(clusters, rows, 1 + dim) of each row's functional of the cutoff-free cluster function).")
      .def(
          "triplet_permutations",
          [](const Model& mdl, int type) {
            const auto ps = otfgp::allowed_permutations(3, type, mdl.n_species());
            std::vector<std::array<int, 3>> out;
            for (int p = 0; p < ps.n; ++p) out.push_back({ps.map[p][0], ps.map[p][1], ps.map[p][2]});
            return out;
          },
          "Edge permutations under which the triplet function of a type is symmetric.")
      .def(
          "set_maps",
          [](Model& mdl, const py::list& tables, const std::optional<DoubleArray>& covariance,
             const std::string& info) { mdl.set_maps(maps_from_python(mdl, tables, covariance, info)); },
          py::arg("tables"), py::arg("covariance") = py::none(), py::arg("info") = "",
          "Install spline tables (dicts with dim, type, n, lo, hi, mean and optional nv, the "
          "variance-basis nodes, variance_degree, 3 or 2, and basis_mean, the mean in the "
          "variance basis instead of mean) and optionally the joint covariance of the variance bases.")
      .def(
          "set_mapped_only",
          [](Model& mdl, const py::list& tables, const DoubleArray& covariance, const std::string& info) {
            mdl.set_mapped_only(maps_from_python(mdl, tables, covariance, info));
          },
          py::arg("tables"), py::arg("covariance"), py::arg("info") = "",
          "Make this model (without training data) the given maps alone: every table with its "
          "basis_mean, and the covariance (an exported ScalableGP).")
      .def_property_readonly("mapped_only", &Model::mapped_only)
      .def("clear_maps", &Model::clear_maps)
      .def_property_readonly(
          "maps",
          [](const Model& mdl) -> py::object {
            const auto* maps = mdl.maps();
            if (!maps) return py::none();
            py::list tables;
            for (const auto& t : maps->tables()) {
              py::dict d;
              d["dim"] = t.dim;
              d["type"] = t.type;
              d["n"] = t.n;
              d["lo"] = t.lo;
              d["hi"] = t.hi;
              d["mean"] = to_array(t.mean, {static_cast<py::ssize_t>(t.mean.size())});
              d["nv"] = t.nv;
              d["variance_degree"] = t.vdeg;
              if (t.has_basis_mean())
                d["basis_mean"] = to_array(t.basis_mean, {static_cast<py::ssize_t>(t.basis_mean.size())});
              tables.append(d);
            }
            py::dict out;
            out["tables"] = tables;
            const auto size = static_cast<py::ssize_t>(maps->variance_size());
            out["covariance"] = maps->has_variance()
                                    ? py::object(to_array(maps->covariance(), {size, size}))
                                    : py::object(py::none());
            out["info"] = maps->info;
            return out;
          },
          "The installed maps (tables, covariance, info) or None.")
      .def(
          "epistemic_variances",
          [](const Model& mdl, const std::string& quantity, const py::object& latent) {
            int k = 0;
            while (k < 4 && quantity != kQuantities[k]) ++k;
            if (k == 4) throw otfgp::InputError("unknown quantity '" + quantity + "'");
            auto np = py::module_::import("numpy");
            const DoubleArray v = DoubleArray::ensure(np.attr("ascontiguousarray")(latent, "float64"));
            std::vector<py::ssize_t> shape(v.shape(), v.shape() + v.ndim());
            py::array_t<double> out(shape);
            mdl.epistemic_variances(static_cast<otfgp::VarianceQuantity>(k), static_cast<std::size_t>(v.size()),
                                    v.data(), out.mutable_data());
            return out;
          },
          py::arg("quantity"), py::arg("latent"),
          "The reducible part a latent^p of the reported variances of a quantity ('force', "
          "'energy', 'stress', 'local_energy'): what the on-the-fly DFT decision compares.")
      .def_property(
          "calibration",
          [](const Model& mdl) -> py::object {
            const otfgp::Calibration* cal = mdl.calibration();
            if (!cal) return py::none();
            py::dict d;
            for (int k = 0; k < 4; ++k)
              d[kQuantities[k]] = variance_map_dict(cal->map(static_cast<otfgp::VarianceQuantity>(k)));
            d["info"] = cal->info;
            return d;
          },
          [](Model& mdl, const py::object& value) {
            if (value.is_none()) {
              mdl.clear_calibration();
              return;
            }
            const auto d = value.cast<py::dict>();
            otfgp::Calibration cal;
            for (auto item : d) {
              const auto key = item.first.cast<std::string>();
              if (key == "info") {
                cal.info = item.second.cast<std::string>();
                continue;
              }
              int k = 0;
              while (k < 4 && key != kQuantities[k]) ++k;
              if (k == 4)
                throw otfgp::InputError("unknown calibration key '" + key +
                                        "' (force, energy, stress, local_energy, info)");
              *calibration_map(cal, k) = variance_map_of(item.second);
            }
            mdl.set_calibration(std::move(cal));
          },
          "The variance calibration: dict of force, energy, stress, local_energy (each "
          "dict(a, p, b, c, e); left-out ones are the identity) and info (JSON string), or None "
          "(uncalibrated). Assigning None clears it.")
      .def_property(
          "baseline",
          [](const Model& mdl) -> py::object {
            return mdl.baseline() ? py::object(baseline_dict(mdl.baseline()->spec())) : py::none();
          },
          [](Model& mdl, const py::object& value) {
            if (value.is_none())
              mdl.set_baseline(std::nullopt);
            else
              mdl.set_baseline(baseline_spec_of(value.cast<py::dict>()));
          },
          "The analytic baseline as a dict (kind, cutoff, elements, params, overrides) or None. "
          "Assigning recomputes the training targets and untrains the model.")
      .def_property("external_baseline", &Model::external_baseline, &Model::set_external_baseline,
                    "Spec of the external (Python-evaluated) baseline, '' for none; set on a "
                    "model without training data.")
      .def_property_readonly("interaction_cutoff", &Model::interaction_cutoff)
      .def_property_readonly("format_version", &Model::format_version,
                             "Format version of the file the model was read from (0: built in memory).")
      .def("save", [](const Model& mdl, const std::string& path) { otfgp::save_model(mdl, path); })
      .def_static("load", [](const std::string& path) { return otfgp::load_model(path); })
      .def("to_bytes", [](const Model& mdl) { return py::bytes(otfgp::serialize_model(mdl)); })
      .def_static("from_bytes",
                  [](const py::bytes& b) { return otfgp::deserialize_model(std::string(b)); })
      // pickle, copy.deepcopy and multiprocessing go through the model-file bytes: one
      // serialisation (checksummed, versioned) for files, copies and other processes.
      .def(py::pickle([](const Model& mdl) { return py::make_tuple(py::bytes(otfgp::serialize_model(mdl))); },
                      [](const py::tuple& state) {
                        if (state.size() != 1)
                          throw otfgp::ModelFileError("invalid pickled otfgp model state");
                        return otfgp::deserialize_model(std::string(state[0].cast<py::bytes>()));
                      }));
}
