#include "maps.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "cutoff.h"
#include "errors.h"
#include "kernel_block.h"

namespace otfgp {
namespace {

// Uniform cubic B-spline weights of the four coefficients around x, and their derivatives
// with respect to x. `first` is the index of the first of the four in the padded array.
struct AxisWeights {
  int first;
  double w[4], dw[4];
};

inline AxisWeights axis_weights(double x, double lo, double inv_h, int n) {
  AxisWeights a;
  const double u = (x - lo) * inv_h;
  int i = static_cast<int>(u);
  i = std::min(std::max(i, 0), n - 2);  // x == hi falls in the last interval at t = 1
  const double t = u - i, s = 1.0 - t, t2 = t * t;
  a.first = i;
  a.w[0] = s * s * s / 6.0;
  a.w[1] = (3.0 * t2 * t - 6.0 * t2 + 4.0) / 6.0;
  a.w[2] = (-3.0 * t2 * t + 3.0 * t2 + 3.0 * t + 1.0) / 6.0;
  a.w[3] = t2 * t / 6.0;
  a.dw[0] = -0.5 * s * s * inv_h;
  a.dw[1] = (1.5 * t2 - 2.0 * t) * inv_h;
  a.dw[2] = (-1.5 * t2 + t + 0.5) * inv_h;
  a.dw[3] = 0.5 * t2 * inv_h;
  return a;
}

// Uniform quadratic B-spline weights of the three coefficients around x (coefficient j is
// centred at lo + (j - 1/2) h), and their derivatives.
inline AxisWeights axis_weights2(double x, double lo, double inv_h, int n) {
  AxisWeights a;
  const double u = (x - lo) * inv_h;
  int i = static_cast<int>(u);
  i = std::min(std::max(i, 0), n - 2);
  const double t = u - i, s = 1.0 - t;
  a.first = i;
  a.w[0] = 0.5 * s * s;
  a.w[1] = 0.5 + t - t * t;
  a.w[2] = 0.5 * t * t;
  a.w[3] = 0.0;
  a.dw[0] = -s * inv_h;
  a.dw[1] = (1.0 - 2.0 * t) * inv_h;
  a.dw[2] = t * inv_h;
  a.dw[3] = 0.0;
  return a;
}

// Value and (if grad) gradient of one coefficient array at d.
double evaluate(const SplineTable& t, const double* coef, const double* d, double* grad) {
  const double inv_h = t.inv_h;
  const int N = t.n + 2;
  if (t.dim == 1) {
    const AxisWeights a = axis_weights(d[0], t.lo, inv_h, t.n);
    const double* c = coef + a.first;
    double v = 0.0, g = 0.0;
    for (int k = 0; k < 4; ++k) {
      v += a.w[k] * c[k];
      g += a.dw[k] * c[k];
    }
    if (grad) grad[0] = g;
    return v;
  }
  const AxisWeights ax = axis_weights(d[0], t.lo, inv_h, t.n);
  const AxisWeights ay = axis_weights(d[1], t.lo, inv_h, t.n);
  const AxisWeights az = axis_weights(d[2], t.lo, inv_h, t.n);
  // Contract the last axis first (contiguous), then the middle, then the first.
  // Per first-axis index a: the value (vx), and the y- and z-derivatives (gy, gz); the
  // x-derivative comes from vx with the derivative weights of the first axis.
  double vx[4] = {}, gy[4] = {}, gz[4] = {};
  for (int a = 0; a < 4; ++a) {
    double vy = 0.0, vyz = 0.0, dy = 0.0;
    for (int b = 0; b < 4; ++b) {
      const double* c = coef + (static_cast<std::size_t>(ax.first + a) * N + (ay.first + b)) * N + az.first;
      double s = 0.0, sz = 0.0;
      for (int k = 0; k < 4; ++k) {
        s += az.w[k] * c[k];
        sz += az.dw[k] * c[k];
      }
      vy += ay.w[b] * s;
      dy += ay.dw[b] * s;
      vyz += ay.w[b] * sz;
    }
    vx[a] = vy;
    gy[a] = dy;
    gz[a] = vyz;
  }
  double v = 0.0, g0 = 0.0, g1 = 0.0, g2 = 0.0;
  for (int a = 0; a < 4; ++a) {
    v += ax.w[a] * vx[a];
    g0 += ax.dw[a] * vx[a];
    g1 += ax.w[a] * gy[a];
    g2 += ax.w[a] * gz[a];
  }
  if (grad) {
    grad[0] = g0;
    grad[1] = g1;
    grad[2] = g2;
  }
  return v;
}

}  // namespace

void SplineTable::validate(int n_species) const {
  const std::string what = (dim == 1 ? "pair" : "triplet") + std::string(" table of type ") +
                           std::to_string(type);
  if (dim != 1 && dim != 3) throw InputError("spline table dimension must be 1 or 3");
  if (type < 0 || type >= type_count(dim, n_species)) throw InputError(what + ": species type out of range");
  if (n < 4 || n > 4096) throw InputError(what + ": needs 4 to 4096 grid nodes per axis");
  if (!std::isfinite(lo) || !std::isfinite(hi) || !(lo > 0) || !(hi > lo))
    throw InputError(what + ": invalid range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  if (!has_basis_mean() && mean.size() != coefficients())
    throw InputError(what + ": expected " + std::to_string(coefficients()) + " mean coefficients, got " +
                     std::to_string(mean.size()));
  if (nv != 0 && (nv < 4 || nv > 256)) throw InputError(what + ": the variance basis needs 4 to 256 nodes per axis");
  if (vdeg != 2 && vdeg != 3) throw InputError(what + ": the variance basis degree must be 2 or 3");
  for (double x : mean)
    if (!std::isfinite(x)) throw InputError(what + ": coefficients contain NaN or inf");
  if (has_basis_mean()) {
    if (!mean.empty()) throw InputError(what + ": give the mean on the spline grid or in the variance basis, not both");
    if (nv == 0) throw InputError(what + ": a mean in the variance basis needs a variance basis (nv > 0)");
    std::size_t count = 0;
    orbits(n_species, count);
    if (basis_mean.size() != count)
      throw InputError(what + ": expected " + std::to_string(count) + " variance-basis mean coefficients, got " +
                       std::to_string(basis_mean.size()));
    for (double x : basis_mean)
      if (!std::isfinite(x)) throw InputError(what + ": variance-basis mean contains NaN or inf");
  }
}

std::vector<int> SplineTable::orbits(int n_species, std::size_t& count) const {
  const int N = variance_axis();
  const std::size_t total = variance_grid();
  std::vector<int> reduced(total, -1);
  if (dim == 1) {
    for (std::size_t k = 0; k < total; ++k) reduced[k] = static_cast<int>(k);
    count = total;
    return reduced;
  }
  const PermSet ps = allowed_permutations(3, type, n_species);
  std::vector<int> rep(total);
  for (std::size_t k = 0; k < total; ++k) {
    const int idx[3] = {static_cast<int>(k / (N * N)), static_cast<int>((k / N) % N), static_cast<int>(k % N)};
    std::size_t best = k;
    for (int p = 0; p < ps.n; ++p) {
      const std::size_t q = (static_cast<std::size_t>(idx[ps.map[p][0]]) * N + idx[ps.map[p][1]]) * N + idx[ps.map[p][2]];
      best = std::min(best, q);
    }
    rep[k] = static_cast<int>(best);
  }
  int next = 0;
  for (std::size_t k = 0; k < total; ++k)
    if (rep[k] == static_cast<int>(k)) reduced[k] = next++;
  for (std::size_t k = 0; k < total; ++k) reduced[k] = reduced[rep[k]];
  count = static_cast<std::size_t>(next);
  return reduced;
}

bool Maps::all_basis_means() const {
  if (tables_.empty()) return false;
  for (const auto& t : tables_)
    if (!t.has_basis_mean()) return false;
  return true;
}

void Maps::add(SplineTable t, int n_species) {
  t.validate(n_species);
  covariance_.clear();  // its layout follows the tables
  for (auto& old : tables_)
    if (old.dim == t.dim && old.type == t.type) {
      old = std::move(t);
      assign_offsets(n_species);
      return;
    }
  tables_.push_back(std::move(t));
  assign_offsets(n_species);
}

void Maps::assign_offsets(int n_species) {
  std::size_t off = 0;
  for (auto& t : tables_) {
    t.offset = off;
    t.inv_h = 1.0 / t.step();
    t.inv_hv = t.nv > 1 ? (t.nv - 1) / (t.hi - t.lo) : 0.0;
    t.reduced.clear();
    t.n_reduced = 0;
    if (t.nv == 0) continue;
    t.reduced = t.orbits(n_species, t.n_reduced);
    off += t.n_reduced;
  }
  variance_size_ = off;
  for (int k = 0; k < 2; ++k) lookup_[k].assign(type_count(k == 0 ? 1 : 3, n_species), -1);
  for (std::size_t i = 0; i < tables_.size(); ++i)
    lookup_[tables_[i].dim == 1 ? 0 : 1][tables_[i].type] = static_cast<int>(i);
}

void Maps::set_covariance(std::vector<double> c) {
  const std::size_t n = variance_size();
  if (n == 0) throw InputError("a variance covariance needs tables with a variance basis (nv > 0)");
  for (const auto& t : tables_)
    if (t.nv == 0) throw InputError("every table needs a variance basis when the covariance is set");
  if (c.size() != n * n)
    throw InputError("variance covariance must have " + std::to_string(n) + " x " + std::to_string(n) +
                     " entries, got " + std::to_string(c.size()));
  for (double x : c)
    if (!std::isfinite(x)) throw InputError("variance covariance contains NaN or inf");
  for (std::size_t i = 0; i < n; ++i)
    if (c[i * n + i] < 0) throw InputError("variance covariance has a negative diagonal");
  covariance_ = std::move(c);
}

namespace {

// Value and gradient of a table's cutoff-free function S written in its variance basis
// (one coefficient per orbit), at d; the end intervals are continued outside [lo, hi].
template <int S>
double evaluate_basis(const SplineTable& t, const double* d, double* grad) {
  AxisWeights ax[3];
  for (int m = 0; m < t.dim; ++m)
    ax[m] = S == 4 ? axis_weights(d[m], t.lo, t.inv_hv, t.nv) : axis_weights2(d[m], t.lo, t.inv_hv, t.nv);
  const double* w = t.basis_mean.data();
  if (t.dim == 1) {
    double v = 0.0, g = 0.0;
    for (int k = 0; k < S; ++k) {
      v += ax[0].w[k] * w[ax[0].first + k];
      g += ax[0].dw[k] * w[ax[0].first + k];
    }
    grad[0] = g;
    return v;
  }
  const int N = t.variance_axis();
  double v = 0.0, g0 = 0.0, g1 = 0.0, g2 = 0.0;
  for (int a = 0; a < S; ++a)
    for (int b = 0; b < S; ++b) {
      const std::size_t base = (static_cast<std::size_t>(ax[0].first + a) * N + (ax[1].first + b)) * N + ax[2].first;
      double s = 0.0, sz = 0.0;
      for (int e = 0; e < S; ++e) {
        const double c = w[t.reduced[base + e]];
        s += ax[2].w[e] * c;
        sz += ax[2].dw[e] * c;
      }
      v += ax[0].w[a] * ax[1].w[b] * s;
      g0 += ax[0].dw[a] * ax[1].w[b] * s;
      g1 += ax[0].w[a] * ax[1].dw[b] * s;
      g2 += ax[0].w[a] * ax[1].w[b] * sz;
    }
  grad[0] = g0;
  grad[1] = g1;
  grad[2] = g2;
  return v;
}

}  // namespace

bool Maps::mean(const Cluster& c, double& phi, double* dphi) const {
  const SplineTable* t = table_of(c);
  if (!t) return false;
  if (t->has_basis_mean()) {
    // Cluster energy fc(d) S(d): the cutoff is the table's upper end (set_maps checks it).
    double g[3], f, fg[3];
    const double v = t->vdeg == 2 ? evaluate_basis<3>(*t, c.d, g) : evaluate_basis<4>(*t, c.d, g);
    cutoff_function(t->dim, t->hi, c.d, f, fg);
    phi = f * v;
    for (int m = 0; m < t->dim; ++m) dphi[m] = fg[m] * v + f * g[m];
    return true;
  }
  if (!t->contains(c.d)) return false;
  phi = evaluate(*t, t->mean.data(), c.d, dphi);
  return true;
}

namespace {
constexpr int L = VarianceWorkspace::kLanes;
// The three force rows (and a zero fourth lane) as one SIMD vector (GCC/Clang vector
// extension); the unaligned variant reads and writes the work-space grid.
typedef double Lanes __attribute__((vector_size(L * sizeof(double))));
typedef double UnalignedLanes __attribute__((vector_size(L * sizeof(double)), aligned(sizeof(double))));
inline void add_lanes(double* g, Lanes x) { *reinterpret_cast<UnalignedLanes*>(g) += x; }
}  // namespace

const VarianceWorkspace::Box VarianceWorkspace::kUntouched = {{INT_MAX, INT_MAX, INT_MAX}, {-1, -1, -1}};

VarianceWorkspace::VarianceWorkspace(const Maps& maps) : maps_(&maps) {
  std::size_t total = 0;
  for (const auto& t : maps.tables()) {
    grid_start_.push_back(total);
    total += t.variance_grid();
  }
  grid_.assign(total * L, 0.0);
  box_.assign(maps.tables().size(), kUntouched);
  slot_.assign(maps.variance_size(), -1);
}

bool VarianceWorkspace::add(const Cluster& c, const double* coef) {
  const SplineTable* t = maps_->table_of(c);
  if (!t || t->nv == 0 || !t->contains(c.d)) return false;
  const std::size_t ti = static_cast<std::size_t>(t - maps_->tables().data());
  if (t->vdeg == 2)
    add_stencil<3>(*t, ti, c.d, coef);
  else
    add_stencil<4>(*t, ti, c.d, coef);
  return true;
}

template <int S>
void VarianceWorkspace::add_stencil(const SplineTable& t, std::size_t ti, const double* d, const double* coef) {
  // S = degree + 1 coefficients per axis are non-zero at d.
  const int D = t.dim, N = t.variance_axis();
  AxisWeights ax[3];
  Box& box = box_[ti];
  for (int m = 0; m < D; ++m) {
    ax[m] = S == 4 ? axis_weights(d[m], t.lo, t.inv_hv, t.nv) : axis_weights2(d[m], t.lo, t.inv_hv, t.nv);
    box.lo[m] = std::min(box.lo[m], ax[m].first);
    box.hi[m] = std::max(box.hi[m], ax[m].first + S - 1);
  }
  // q[m]: coefficient m of the four rows as the lanes of one vector.
  Lanes q[4] = {};
  for (int r = 0; r < L; ++r)
    for (int m = 0; m <= D; ++m) q[m][r] = coef[r * (D + 1) + m];
  double* grid = grid_.data() + grid_start_[ti] * L;
  if (D == 1) {
    double* g = grid + static_cast<std::size_t>(ax[0].first) * L;
    for (int a = 0; a < S; ++a) add_lanes(g + a * L, q[0] * ax[0].w[a] + q[1] * ax[0].dw[a]);
    return;
  }
  for (int a = 0; a < S; ++a)
    for (int b = 0; b < S; ++b) {
      // Per (a, b): value and derivative weights contracted with each row's coefficients, so
      // the last (contiguous) axis costs two vector products per entry.
      const double wab = ax[0].w[a] * ax[1].w[b];
      const double gab0 = ax[0].dw[a] * ax[1].w[b], gab1 = ax[0].w[a] * ax[1].dw[b];
      const Lanes pw = q[0] * wab + q[1] * gab0 + q[2] * gab1;  // multiplies w_z
      const Lanes pd = q[3] * wab;                                // multiplies dw_z
      double* g = grid + ((static_cast<std::size_t>(ax[0].first + a) * N + (ax[1].first + b)) * N + ax[2].first) * L;
      for (int e = 0; e < S; ++e) add_lanes(g + e * L, pw * ax[2].w[e] + pd * ax[2].dw[e]);
    }
}

void VarianceWorkspace::fold(std::size_t ti) {
  // Moves the touched box of table ti onto the orbits (summing permuted copies) and zeroes it.
  const SplineTable& t = maps_->tables()[ti];
  Box& box = box_[ti];
  if (box.hi[0] < 0) return;
  const int N = t.variance_axis();
  int lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
  for (int m = 0; m < t.dim; ++m) {
    lo[m] = box.lo[m];
    hi[m] = box.hi[m];
  }
  double* grid = grid_.data() + grid_start_[ti] * L;
  for (int a = lo[0]; a <= hi[0]; ++a)
    for (int b = lo[1]; b <= hi[1]; ++b)
      for (int e = lo[2]; e <= hi[2]; ++e) {
        const std::size_t k = t.dim == 1 ? static_cast<std::size_t>(a)
                                         : (static_cast<std::size_t>(a) * N + b) * N + e;
        double* g = grid + k * L;
        if (g[0] == 0.0 && g[1] == 0.0 && g[2] == 0.0 && g[3] == 0.0) continue;
        const int orbit = static_cast<int>(t.offset) + t.reduced[k];
        int& s = slot_[orbit];
        if (s < 0) {
          s = static_cast<int>(index_.size());
          index_.push_back(orbit);
          compact_.insert(compact_.end(), L, 0.0);
        }
        for (int r = 0; r < L; ++r) {
          compact_[static_cast<std::size_t>(s) * L + r] += g[r];
          g[r] = 0.0;
        }
      }
  box = kUntouched;
}

void VarianceWorkspace::finish(double out[4]) {
  for (std::size_t ti = 0; ti < box_.size(); ++ti) fold(ti);
  // u^T C u over the touched orbits; C is symmetric, so only pairs b >= a are visited.
  const std::size_t size = maps_->variance_size();
  const double* C = maps_->covariance().data();
  const double* v = compact_.data();
  const std::size_t nnz = index_.size();
  alignas(32) double acc[L] = {};
  for (std::size_t a = 0; a < nnz; ++a) {
    const double* Ci = C + static_cast<std::size_t>(index_[a]) * size;
    const double* va = v + a * L;
    alignas(32) double s[L];
    const double cii = 0.5 * Ci[index_[a]];
    for (int r = 0; r < L; ++r) s[r] = cii * va[r];
    for (std::size_t b = a + 1; b < nnz; ++b) {
      const double cij = Ci[index_[b]];
      const double* vb = v + b * L;
      for (int r = 0; r < L; ++r) s[r] += cij * vb[r];
    }
    for (int r = 0; r < L; ++r) acc[r] += va[r] * s[r];
  }
  for (int r = 0; r < L; ++r) out[r] = std::max(0.0, 2.0 * acc[r]);
  clear();  // the boxes are folded already: only the touched orbits are reset
}

void VarianceWorkspace::clear() {
  for (std::size_t ti = 0; ti < box_.size(); ++ti) fold(ti);
  for (int o : index_) slot_[o] = -1;
  index_.clear();
  compact_.clear();
}

}  // namespace otfgp
