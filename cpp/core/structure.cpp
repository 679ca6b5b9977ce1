#include "structure.h"

#include <array>
#include <cmath>
#include <string>

#include "errors.h"

namespace otfgp {

double Structure::volume() const {
  const auto& c = cell;
  const double det = c[0] * (c[4] * c[8] - c[5] * c[7]) - c[1] * (c[3] * c[8] - c[5] * c[6]) +
                     c[2] * (c[3] * c[7] - c[4] * c[6]);
  return std::fabs(det);
}

void validate_structure(const Structure& s, int n_species) {
  if (s.positions.size() != 3 * s.species.size())
    throw InputError("positions must have shape (n_atoms, 3) matching " +
                     std::to_string(s.species.size()) + " species entries, got " +
                     std::to_string(s.positions.size()) + " coordinates");
  for (std::size_t i = 0; i < s.positions.size(); ++i)
    if (!std::isfinite(s.positions[i]))
      throw InputError("position of atom " + std::to_string(i / 3) +
                       " is not finite (NaN or inf)");
  for (double v : s.cell)
    if (!std::isfinite(v)) throw InputError("cell contains NaN or inf");
  for (std::size_t i = 0; i < s.species.size(); ++i)
    if (s.species[i] < 0 || s.species[i] >= n_species)
      throw InputError("atom " + std::to_string(i) + " has a species the model does not know");
  validate_periodic_cell(s);
}

void validate_periodic_cell(const Structure& s) {
  // Only the lattice vectors of periodic directions matter: the neighbour search completes
  // the cell along non-periodic ones by itself. So a zero (or any) vector along a
  // non-periodic direction is fine, as ASE leaves it for slabs and wires without vacuum,
  // while the periodic vectors must be non-zero and independent (else there is no lattice
  // to take images along). Independence is judged scale-free: the volume (area) they span
  // relative to the product of their lengths, i.e. the sines of the angles between them.
  static const char* axis[3] = {"a", "b", "c"};
  std::array<double, 3> v[3];
  int np = 0;
  double lengths = 1.0;
  for (int k = 0; k < 3; ++k) {
    if (!s.pbc[k]) continue;
    const double* c = &s.cell[3 * k];
    const double len = std::sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]);
    if (!(len > 0))
      throw InputError(std::string("cell is degenerate: lattice vector ") + axis[k] +
                       " has zero length but the structure is periodic along it (set pbc False "
                       "there, or give it a length)");
    v[np++] = {c[0], c[1], c[2]};
    lengths *= len;
  }
  if (np < 2) return;
  const std::array<double, 3> x = {v[0][1] * v[1][2] - v[0][2] * v[1][1],
                                   v[0][2] * v[1][0] - v[0][0] * v[1][2],
                                   v[0][0] * v[1][1] - v[0][1] * v[1][0]};
  const double spanned = np == 2 ? std::sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2])
                                 : std::fabs(x[0] * v[2][0] + x[1] * v[2][1] + x[2] * v[2][2]);
  if (spanned < kMinCellSine * lengths)
    throw InputError(std::string("cell is degenerate: the lattice vectors along periodic directions ") +
                     "are (nearly) linearly dependent (" + (np == 2 ? "area " : "volume ") +
                     std::to_string(spanned) + " for lengths whose product is " + std::to_string(lengths) +
                     ")");
}

}  // namespace otfgp
