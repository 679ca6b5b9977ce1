// pybind11 bindings of the reduced-rank basis design (cpp/core/basis_design.h), kept apart
// from bindings.cpp so that the scalable model's glue lives in one place.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>

#include "basis_design.h"
#include "errors.h"
#include "kernel_block.h"

namespace py = pybind11;

namespace {
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using IntArray = py::array_t<int, py::array::c_style | py::array::forcecast>;
}  // namespace

void bind_basis_design(py::module_& m) {
  using otfgp::BasisDesign;
  using otfgp::BasisSpec;
  py::class_<BasisDesign>(m, "BasisDesign",
                          "Design rows of the reduced-rank GP: labels as linear functionals of "
                          "B-spline coefficients of the cluster functions (basis_design.h).")
      .def(py::init([](int n_species, double cutoff2, double cutoff3, double lower, int nodes2, int nodes3) {
             BasisSpec s;
             s.n_species = n_species;
             s.cutoff2 = cutoff2;
             s.cutoff3 = cutoff3;
             s.lower = lower;
             s.nodes2 = nodes2;
             s.nodes3 = nodes3;
             return BasisDesign(s);
           }),
           py::arg("n_species"), py::arg("cutoff2"), py::arg("cutoff3"), py::arg("lower"), py::arg("nodes2"),
           py::arg("nodes3"))
      .def_property_readonly("columns", &BasisDesign::columns)
      .def(
          "tables",
          [](const BasisDesign& d) {
            py::list out;
            for (const auto& t : d.tables()) {
              py::dict x;
              x["dim"] = t.dim;
              x["type"] = t.type;
              x["degree"] = t.degree;
              x["nodes"] = t.nodes;
              x["lo"] = t.lo;
              x["hi"] = t.hi;
              x["offset"] = t.offset;
              x["size"] = t.size;
              if (t.dim == 3) {
                // Representative (smallest) flat grid index of every orbit, in column order.
                std::vector<int> rep(t.size, -1);
                for (std::size_t k = 0; k < t.orbit.size(); ++k)
                  if (rep[t.orbit[k]] < 0) rep[t.orbit[k]] = static_cast<int>(k);
                x["representatives"] = rep;
                const auto ps = otfgp::allowed_permutations(3, t.type, d.spec().n_species);
                std::vector<std::array<int, 3>> perms;
                for (int p = 0; p < ps.n; ++p) perms.push_back({ps.map[p][0], ps.map[p][1], ps.map[p][2]});
                x["permutations"] = perms;
              }
              out.append(x);
            }
            return out;
          },
          "Column blocks: dim, type, degree, nodes, lo, hi, offset, size (and the orbit "
          "representatives' flat grid indices and edge permutations for triplets).")
      .def(
          "rows",
          [](const BasisDesign& d, const DoubleArray& cell, const std::array<bool, 3>& pbc,
             const DoubleArray& positions, const IntArray& species, const IntArray& force_atoms, bool energy,
             bool stress, bool local_energies) {
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
            const std::vector<int> fa(force_atoms.data(), force_atoms.data() + force_atoms.size());
            otfgp::DesignRows r;
            {
              py::gil_scoped_release release;
              r = d.rows(s, fa, energy, stress, local_energies);
            }
            py::array_t<double> phi({static_cast<py::ssize_t>(r.rows), static_cast<py::ssize_t>(d.columns())});
            std::copy(r.phi.begin(), r.phi.end(), phi.mutable_data());
            return py::make_tuple(phi, r.kinds, r.outside);
          },
          py::arg("cell"), py::arg("pbc"), py::arg("positions"), py::arg("species"), py::arg("force_atoms"),
          py::arg("energy"), py::arg("stress"), py::arg("local_energies") = false,
          "(phi, kinds, outside): design rows (3 per force atom, energy, 6 stress, a local "
          "energy per atom), their kinds (0 force, 1 energy, 2 stress, 3 local energy) and the "
          "number of clusters below the basis among the force and structure rows.");
}
