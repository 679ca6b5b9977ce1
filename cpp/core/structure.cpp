#include "structure.h"

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
  const bool any_pbc = s.pbc[0] || s.pbc[1] || s.pbc[2];
  if (any_pbc && s.volume() < 1e-8)
    throw InputError("cell is degenerate (zero volume) but the structure is periodic");
}

}  // namespace otfgp
