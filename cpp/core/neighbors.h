// Neighbour search with cell lists: O(N) in atoms, any mix of periodic directions, triclinic
// cells and cutoffs longer than half the cell (one atom may be several neighbours by image).
#pragma once
#include <vector>

#include "structure.h"

namespace otfgp {

struct Neighbor {
  int j;         // atom index in the structure (the image is implied by r)
  double r[3];   // x_j + lattice shift - x_i
  double d;      // |r|
};

// Compressed rows: neighbours of atom i are items[offsets[i] .. offsets[i+1]).
struct NeighborList {
  std::vector<int> offsets;
  std::vector<Neighbor> items;
};

// Limits that turn structures no material has into a clear InputError instead of an
// allocation failure or a search that runs for hours:
// - periodic image atoms in the cutoff-padded cell (32 bytes each): a cell far smaller than
//   the cutoff, e.g. a 1e4 A cutoff in a 4 A cell;
constexpr double kMaxImageAtoms = 1e7;
// - neighbours of one atom within the cutoff sphere beyond this number density (atoms/A^3;
//   diamond, the densest solid, has 0.18, and 0.5 leaves room for strong compression),
//   checked once an atom has more than
//   kDensityCheckNeighbors, e.g. one atom in a 0.6 A periodic cube. The 3-body cost of an
//   environment grows with the square of its neighbour count;
constexpr double kMaxNeighborDensity = 0.5;
constexpr double kDensityCheckNeighbors = 64;
// - entries of the whole neighbour list (40 bytes each).
constexpr double kMaxNeighborEntries = 5e7;

// All neighbours within `cutoff` (strictly less), ordered deterministically.
// Throws InputError if two atoms (or an atom and an image of itself) are closer than
// `min_distance`, or if a limit above is exceeded. Lattice vectors along non-periodic
// directions are not used (they may be zero).
NeighborList build_neighbor_list(const Structure& s, double cutoff, double min_distance);

}  // namespace otfgp
