// Chemical symbols by atomic number, for mapping pair_coeff element names.
#pragma once
#include <string>

namespace otfgp_lammps {

// Atomic number of a chemical symbol, or 0 if unknown.
int atomic_number(const std::string &symbol);

}  // namespace otfgp_lammps
