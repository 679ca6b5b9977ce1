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

// The cell part of validate_structure: the lattice vectors along periodic directions are
// non-zero and independent (sines of their angles, or the volume they span over the product
// of their lengths, at least kMinCellSine); vectors along non-periodic directions are not
// used and may be zero.
void validate_periodic_cell(const Structure& s);
constexpr double kMinCellSine = 1e-6;

}  // namespace otfgp
