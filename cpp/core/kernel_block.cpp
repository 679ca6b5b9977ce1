#include "kernel_block.h"

#include <algorithm>
#include <numeric>

namespace otfgp {

double* KernelBlock::add(int type_, const double* d) {
  type.push_back(type_);
  desc.insert(desc.end(), d, d + dim);
  const std::size_t stride = static_cast<std::size_t>(rows) * (1 + dim);
  coef.resize(coef.size() + stride, 0.0);
  return coef.data() + coef.size() - stride;
}

PermSet allowed_permutations(int dim, int type, int n_species) {
  PermSet ps;
  if (dim == 1) return ps;
  const int sp[3] = {type / (n_species * n_species), (type / n_species) % n_species,
                     type % n_species};
  // New vertex k = old vertex perm[k]; new edge (u,v) is old edge (perm[u], perm[v]).
  static constexpr int kVertexPerms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                             {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
  static constexpr int kEdges[3][2] = {{0, 1}, {0, 2}, {1, 2}};
  ps.n = 0;
  for (const auto& perm : kVertexPerms) {
    if (sp[perm[0]] != sp[0] || sp[perm[1]] != sp[1] || sp[perm[2]] != sp[2]) continue;
    for (int e = 0; e < 3; ++e) {
      int u = perm[kEdges[e][0]], v = perm[kEdges[e][1]];
      if (u > v) std::swap(u, v);
      ps.map[ps.n][e] = (u == 0) ? (v == 1 ? 0 : 1) : 2;
    }
    ++ps.n;
  }
  return ps;
}

void KernelBlock::finalize(int n_species) {
  const int n = size();
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return type[a] < type[b]; });
  const std::size_t stride = static_cast<std::size_t>(rows) * (1 + dim);
  std::vector<int> t2(n);
  std::vector<double> d2(desc.size()), c2(coef.size());
  for (int k = 0; k < n; ++k) {
    const int o = order[k];
    t2[k] = type[o];
    std::copy_n(desc.begin() + static_cast<std::size_t>(o) * dim, dim, d2.begin() + static_cast<std::size_t>(k) * dim);
    std::copy_n(coef.begin() + o * stride, stride, c2.begin() + k * stride);
  }
  type.swap(t2);
  desc.swap(d2);
  coef.swap(c2);
  ranges.clear();
  for (int k = 0; k < n; ++k) {
    if (ranges.empty() || ranges.back().type != type[k])
      ranges.push_back({type[k], k, k, allowed_permutations(dim, type[k], n_species), 0});
    ranges.back().end = k + 1;
  }
  std::size_t total = 0;
  for (auto& r : ranges) {
    r.packed = total;
    total += static_cast<std::size_t>(r.perms.n) * packed_stride() * (r.end - r.begin);
  }
  packed.assign(total, 0.0);
  for (const auto& r : ranges) {
    const std::size_t m = r.end - r.begin;
    for (int p = 0; p < r.perms.n; ++p) {
      const int* map = r.perms.map[p];
      double* base = packed.data() + r.packed + p * packed_stride() * m;
      for (std::size_t i = 0; i < m; ++i) {
        const std::size_t c = r.begin + i;
        for (int k = 0; k < dim; ++k) base[k * m + i] = desc[c * dim + map[k]];
        for (int row = 0; row < rows; ++row) {
          const double* b = coef.data() + c * stride + row * (1 + dim);
          double* out = base + (dim + row * (1 + dim)) * m;
          out[i] = b[0];
          for (int k = 0; k < dim; ++k) out[(1 + k) * m + i] = b[1 + map[k]];
        }
      }
    }
  }
}

const KernelBlock::Range* KernelBlock::find(int type_) const {
  for (const auto& r : ranges)
    if (r.type == type_) return &r;
  return nullptr;
}

}  // namespace otfgp
