// Pairs and triplets ("clusters") around each atom. The model's energy is a sum of a pair
// function over pairs within the 2-body cutoff and a triplet function over triangles whose
// three sides are all within the 3-body cutoff; every label (energy, force, stress, local
// energy) is a linear functional of those cluster energies.
#pragma once
#include <vector>

#include "neighbors.h"
#include "structure.h"

namespace otfgp {

// Vertices of each edge (pair: edge 0 only; triplet: (0,1), (0,2), (1,2)).
inline constexpr int kEdgeVertices[3][2] = {{0, 1}, {0, 2}, {1, 2}};
// Cartesian index pairs of the Voigt components xx yy zz yz xz xy (ASE order).
inline constexpr int kVoigt[6][2] = {{0, 0}, {1, 1}, {2, 2}, {1, 2}, {0, 2}, {0, 1}};

struct Cluster {
  int nv = 0;              // vertices: 2 (pair) or 3 (triplet)
  int centre = 0;          // atom whose environment produced this copy
  int atoms[3] = {0, 0, 0};  // atom index of each vertex, vertices sorted by species
  double pos[3][3] = {};   // vertex positions relative to the centre atom
  double edge[3][3] = {};  // edge vectors: pair (0,1); triplet (0,1), (0,2), (1,2)
  double d[3] = {};        // edge lengths = the kernel's descriptor
  int type = 0;            // species combination, see pair_type / triplet_type
  // A physical cluster appears once per vertex that can be its centre. Sums over the
  // structure use only "canonical" copies (centre = smallest vertex atom index) with this
  // weight, 1 / (number of such copies), so each physical cluster counts exactly once.
  double canonical_weight = 0.0;
  int n_edges() const { return nv == 2 ? 1 : 3; }
  // Number of vertices that are atom `a` (> 1 only for self-images in small cells).
  int multiplicity(int a) const;
  // d(edge length m)/d(position of atom a), summed over the vertices that are atom a.
  void edge_gradient(int m, int a, double out[3]) const;
};

// Pair type: index of the unordered species pair; triplet type: of the sorted triple.
int pair_type(int a, int b, int n_species);
int triplet_type(int a, int b, int c, int n_species);
// Size of the type index space of one body order (dim 1: pairs, 3: triplets).
inline int type_count(int dim, int n_species) {
  return dim == 1 ? n_species * n_species : n_species * n_species * n_species;
}

struct ClusterSet {
  std::vector<Cluster> pairs, triplets;
  // Copies centred at atom (row) i: pairs[pair_offsets[i] .. pair_offsets[i+1]), same for
  // triplets.
  std::vector<int> pair_offsets, triplet_offsets;
};

// Clusters of every atom. cutoff2 / cutoff3 <= 0 disable that body order.
ClusterSet build_clusters(const Structure& s, const NeighborList& nl, double cutoff2,
                          double cutoff3, int n_species);

// The same for a set of centres given by an MD code: row r of `nl` holds the neighbours of
// the centre with identity key centre_keys[r]; neighbour items carry identity keys in `j`
// (the same key for every periodic image of one atom), key_species maps keys to species.
// Offsets in the result are per row.
ClusterSet build_clusters(const std::vector<int>& centre_keys, const std::vector<int>& key_species,
                          const NeighborList& nl, double cutoff2, double cutoff3, int n_species);

// The clusters of one centre (row `row` of `nl`, identity key `key`) appended to pairs and
// triplets; `near3` is scratch. Lets an MD code build clusters centre by centre in reused
// buffers instead of materialising those of every atom at once.
void append_row_clusters(int row, int key, const std::vector<int>& key_species, const NeighborList& nl,
                         double cutoff2, double cutoff3, int n_species, std::vector<Cluster>& pairs,
                         std::vector<Cluster>& triplets, std::vector<int>& near3);

// Largest number of neighbour pairs one centre may have inside the 3-body cutoff (its
// candidate triplets): 450 neighbours, an Al cutoff of about 12 A, where 3-body cutoffs are
// 3-6 A. Beyond it a cutoff typo (30 for 3.0) would exhaust the memory (~200 bytes a
// triplet) instead of being named.
constexpr double kMaxTripletsPerCentre = 1e5;

// InputError naming the centre of row `row` (identity key `key`) when it has more
// candidate triplets than kMaxTripletsPerCentre, before anything is allocated. The
// per-centre MD path calls it for every row before its OpenMP region, where an exception
// could not propagate.
void check_triplet_count(const NeighborList& nl, int row, int key, double cutoff3);

// Smallest interatomic distance accepted anywhere (Angstrom).
constexpr double kMinDistance = 0.5;

}  // namespace otfgp
