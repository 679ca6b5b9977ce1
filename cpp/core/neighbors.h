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

// All neighbours within `cutoff` (strictly less), ordered deterministically.
// Throws InputError if two atoms (or an atom and an image of itself) are closer than
// `min_distance`.
NeighborList build_neighbor_list(const Structure& s, double cutoff, double min_distance);

}  // namespace otfgp
