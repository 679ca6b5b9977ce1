// An atomic structure as the core sees it: cell rows are lattice vectors (ASE convention),
// species are indices into the model's species list.
#pragma once
#include <array>
#include <cstddef>
#include <vector>

namespace otfgp {

struct Structure {
  std::array<double, 9> cell{};     // row-major, rows = lattice vectors a, b, c
  std::array<bool, 3> pbc{};        // periodic along a, b, c
  std::vector<double> positions;    // n_atoms * 3, Cartesian, Angstrom
  std::vector<int> species;         // n_atoms, index into the model's species list

  std::size_t size() const { return species.size(); }
  // Volume of the cell (absolute value of the determinant); 0 if degenerate.
  double volume() const;
};

// Throws InputError naming the problem: shape mismatch, non-finite positions or cell,
// species index out of range, degenerate cell along a periodic direction.
void validate_structure(const Structure& s, int n_species);

}  // namespace otfgp
