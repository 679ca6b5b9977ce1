// The one units rule of the otfgp styles: models are in eV and Angstrom, LAMMPS's `units
// metal`. Any other units would read positions and report energies and forces in the wrong
// units without a warning, so every otfgp style refuses them. Header-only: three callers,
// one function.
#pragma once

#include <cstring>

#include "error.h"
#include "lammps.h"
#include "update.h"

namespace otfgp_lammps {

// LAMMPS error naming the style and the units in force unless they are metal.
inline void require_metal_units(LAMMPS_NS::LAMMPS *lmp, const char *style) {
  const char *units = lmp->update->unit_style;
  if (units && std::strcmp(units, "metal") != 0)
    lmp->error->all(FLERR, "{} needs 'units metal' (otfgp models are in eV and Angstrom), "
                    "but the units are {}", style, units);
}

}  // namespace otfgp_lammps
