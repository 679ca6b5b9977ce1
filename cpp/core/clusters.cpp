#include "clusters.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "errors.h"

namespace otfgp {

int pair_type(int a, int b, int n_species) {
  if (a > b) std::swap(a, b);
  return a * n_species + b;
}

int triplet_type(int a, int b, int c, int n_species) {
  int v[3] = {a, b, c};
  std::sort(v, v + 3);
  return (v[0] * n_species + v[1]) * n_species + v[2];
}

int Cluster::multiplicity(int a) const {
  int m = 0;
  for (int v = 0; v < nv; ++v) m += atoms[v] == a;
  return m;
}

namespace {
void finish_geometry(Cluster& c) {
  for (int m = 0; m < c.n_edges(); ++m) {
    const int a = kEdgeVertices[m][0], b = kEdgeVertices[m][1];
    double dd = 0;
    for (int t = 0; t < 3; ++t) {
      c.edge[m][t] = c.pos[b][t] - c.pos[a][t];
      dd += c.edge[m][t] * c.edge[m][t];
    }
    c.d[m] = std::sqrt(dd);
  }
}
}  // namespace

void Cluster::edge_gradient(int m, int a, double out[3]) const {
  const int va = kEdgeVertices[m][0], vb = kEdgeVertices[m][1];
  const double sign = (atoms[vb] == a ? 1.0 : 0.0) - (atoms[va] == a ? 1.0 : 0.0);
  for (int t = 0; t < 3; ++t) out[t] = sign * edge[m][t] / d[m];
}

void check_triplet_count(const NeighborList& nl, int row, int key, double cutoff3) {
  double near = 0;
  for (int q = nl.offsets[row]; q < nl.offsets[row + 1]; ++q) near += nl.items[q].d < cutoff3 ? 1 : 0;
  const double candidates = 0.5 * near * (near - 1.0);
  if (candidates > kMaxTripletsPerCentre)
    throw InputError("atom " + std::to_string(key) + " has " + std::to_string(static_cast<long long>(near)) +
                     " neighbours within the 3-body cutoff " + std::to_string(cutoff3) + " A (" +
                     std::to_string(static_cast<long long>(candidates)) + " candidate triplets, more than " +
                     std::to_string(static_cast<long long>(kMaxTripletsPerCentre)) +
                     "): 3-body cutoffs are a few Angstrom; is it a typo?");
}

ClusterSet build_clusters(const Structure& s, const NeighborList& nl, double cutoff2,
                          double cutoff3, int n_species) {
  std::vector<int> keys(s.size());
  for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = static_cast<int>(i);
  return build_clusters(keys, s.species, nl, cutoff2, cutoff3, n_species);
}

void append_row_clusters(int row, int i, const std::vector<int>& key_species, const NeighborList& nl,
                         double cutoff2, double cutoff3, int n_species, std::vector<Cluster>& pairs,
                         std::vector<Cluster>& triplets, std::vector<int>& near3) {
  const int si = key_species[i];
  const int begin = nl.offsets[row], end = nl.offsets[row + 1];
  near3.clear();
  for (int q = begin; q < end; ++q) {
    const Neighbor& nb = nl.items[q];
    if (cutoff2 > 0 && nb.d < cutoff2) {
      Cluster c;
      c.nv = 2;
      c.centre = i;
      const int sj = key_species[nb.j];
      // Vertex order by species (stable: centre first when equal).
      const bool swap = sj < si;
      const int v0 = swap ? 1 : 0, v1 = swap ? 0 : 1;
      c.atoms[v0] = i;
      c.atoms[v1] = nb.j;
      for (int t = 0; t < 3; ++t) {
        c.pos[v0][t] = 0.0;
        c.pos[v1][t] = nb.r[t];
      }
      c.type = pair_type(si, sj, n_species);
      finish_geometry(c);
      c.canonical_weight = i < nb.j ? 1.0 : (i == nb.j ? 0.5 : 0.0);
      pairs.push_back(c);
    }
    if (cutoff3 > 0 && nb.d < cutoff3) near3.push_back(q);
  }
  for (std::size_t x = 0; x < near3.size(); ++x)
    for (std::size_t y = x + 1; y < near3.size(); ++y) {
      const Neighbor& a = nl.items[near3[x]];
      const Neighbor& b = nl.items[near3[y]];
      const double cx = b.r[0] - a.r[0], cy = b.r[1] - a.r[1], cz = b.r[2] - a.r[2];
      if (cx * cx + cy * cy + cz * cz >= cutoff3 * cutoff3) continue;
      struct V {
        int atom, sp;
        const double* r;
      };
      const double zero[3] = {0, 0, 0};
      V v[3] = {{i, si, zero}, {a.j, key_species[a.j], a.r}, {b.j, key_species[b.j], b.r}};
      std::stable_sort(v, v + 3, [](const V& p, const V& q) { return p.sp < q.sp; });
      Cluster c;
      c.nv = 3;
      c.centre = i;
      for (int k = 0; k < 3; ++k) {
        c.atoms[k] = v[k].atom;
        for (int t = 0; t < 3; ++t) c.pos[k][t] = v[k].r[t];
      }
      c.type = triplet_type(v[0].sp, v[1].sp, v[2].sp, n_species);
      finish_geometry(c);
      const int lowest = std::min({c.atoms[0], c.atoms[1], c.atoms[2]});
      c.canonical_weight = i == lowest ? 1.0 / c.multiplicity(i) : 0.0;
      triplets.push_back(c);
    }
}

ClusterSet build_clusters(const std::vector<int>& centre_keys, const std::vector<int>& key_species,
                          const NeighborList& nl, double cutoff2, double cutoff3, int n_species) {
  const int n = static_cast<int>(centre_keys.size());
  ClusterSet cs;
  cs.pair_offsets.assign(n + 1, 0);
  cs.triplet_offsets.assign(n + 1, 0);
  std::vector<int> near3;  // neighbours of i inside the 3-body cutoff
  for (int row = 0; row < n; ++row) {
    if (cutoff3 > 0) check_triplet_count(nl, row, centre_keys[row], cutoff3);
    append_row_clusters(row, centre_keys[row], key_species, nl, cutoff2, cutoff3, n_species, cs.pairs,
                        cs.triplets, near3);
    cs.pair_offsets[row + 1] = static_cast<int>(cs.pairs.size());
    cs.triplet_offsets[row + 1] = static_cast<int>(cs.triplets.size());
  }
  return cs;
}

}  // namespace otfgp
