#include "maps.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "errors.h"

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

// Value and (if grad) gradient of one coefficient array at d.
double evaluate(const SplineTable& t, const double* coef, const double* d, double* grad) {
  const double inv_h = 1.0 / t.step();
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
  double vx[4] = {}, gx[4] = {}, gy[4] = {}, gz[4] = {};
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
    gx[a] = vy;
  }
  double v = 0.0, g0 = 0.0, g1 = 0.0, g2 = 0.0;
  for (int a = 0; a < 4; ++a) {
    v += ax.w[a] * vx[a];
    g0 += ax.dw[a] * gx[a];
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

std::size_t SplineTable::coefficients() const {
  std::size_t c = 1;
  for (int k = 0; k < dim; ++k) c *= static_cast<std::size_t>(n + 2);
  return c;
}

bool SplineTable::contains(const double* d) const {
  for (int m = 0; m < dim; ++m)
    if (!(d[m] >= lo && d[m] <= hi)) return false;
  return true;
}

void SplineTable::validate(int n_species) const {
  const std::string what = (dim == 1 ? "pair" : "triplet") + std::string(" table of type ") +
                           std::to_string(type);
  if (dim != 1 && dim != 3) throw InputError("spline table dimension must be 1 or 3");
  const int ntypes = dim == 1 ? n_species * n_species : n_species * n_species * n_species;
  if (type < 0 || type >= ntypes) throw InputError(what + ": species type out of range");
  if (n < 4 || n > 4096) throw InputError(what + ": needs 4 to 4096 grid nodes per axis");
  if (!std::isfinite(lo) || !std::isfinite(hi) || !(lo > 0) || !(hi > lo))
    throw InputError(what + ": invalid range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  if (mean.size() != coefficients())
    throw InputError(what + ": expected " + std::to_string(coefficients()) + " mean coefficients, got " +
                     std::to_string(mean.size()));
  if (!variance.empty() && variance.size() != coefficients() * dim)
    throw InputError(what + ": variance coefficients have the wrong size");
  for (const auto* v : {&mean, &variance})
    for (double x : *v)
      if (!std::isfinite(x)) throw InputError(what + ": coefficients contain NaN or inf");
}

void Maps::add(SplineTable t, int n_species) {
  t.validate(n_species);
  for (auto& old : tables_)
    if (old.dim == t.dim && old.type == t.type) {
      old = std::move(t);
      return;
    }
  tables_.push_back(std::move(t));
}

const SplineTable* Maps::find(int dim, int type) const {
  for (const auto& t : tables_)
    if (t.dim == dim && t.type == type) return &t;
  return nullptr;
}

bool Maps::has_variance() const {
  if (tables_.empty()) return false;
  for (const auto& t : tables_)
    if (t.variance.empty()) return false;
  return true;
}

bool Maps::mean(const Cluster& c, double& phi, double* dphi) const {
  const SplineTable* t = find(c.n_edges(), c.type);
  if (!t || !t->contains(c.d)) return false;
  phi = evaluate(*t, t->mean.data(), c.d, dphi);
  return true;
}

bool Maps::gradient_variances(const Cluster& c, double* var) const {
  const SplineTable* t = find(c.n_edges(), c.type);
  if (!t || t->variance.empty() || !t->contains(c.d)) return false;
  const std::size_t block = t->coefficients();
  for (int m = 0; m < t->dim; ++m)
    var[m] = std::max(0.0, evaluate(*t, t->variance.data() + m * block, c.d, nullptr));
  return true;
}

}  // namespace otfgp
