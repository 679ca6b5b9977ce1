#include "calibration.h"

#include <cmath>
#include <string>

#include "clusters.h"

#include "errors.h"

namespace otfgp {

void VarianceMap::validate(const std::string& what) const {
  const double all[6] = {a, p, b, c, e, radius};
  for (double x : all)
    if (!std::isfinite(x)) throw InputError(what + " calibration: coefficients must be finite");
  if (!(a > 0.0)) throw InputError(what + " calibration: a must be positive, got " + std::to_string(a));
  if (!(p > 0.0)) throw InputError(what + " calibration: p must be positive, got " + std::to_string(p));
  if (b < 0.0 || c < 0.0 || e < 0.0 || radius < 0.0)
    throw InputError(what + " calibration: b, c, e and the radius must be non-negative");
}

const VarianceMap& Calibration::map(VarianceQuantity q) const {
  switch (q) {
    case VarianceQuantity::kForce: return force;
    case VarianceQuantity::kEnergy: return energy;
    case VarianceQuantity::kStress: return stress;
    case VarianceQuantity::kLocalEnergy: break;
  }
  return local_energy;
}

void Calibration::validate() const {
  force.validate("force");
  energy.validate("energy");
  stress.validate("stress");
  local_energy.validate("local energy");
}

void apply_variance_map(const VarianceMap& map, std::size_t n, const double* latent, const double* noise,
                        std::size_t noise_stride, const double* mean, std::size_t mean_stride, double* out) {
  for (std::size_t k = 0; k < n; ++k)
    out[k] = map(latent[k], noise[k * noise_stride], mean ? mean[k * mean_stride] : 0.0);
}

void force_scale_values(std::size_t n, const double* forces, double* out) {
  if (n % 3 != 0) throw InputError("force components come in threes, got " + std::to_string(n));
  for (std::size_t i = 0; i < n; i += 3) {
    const double* f = forces + i;
    out[i] = out[i + 1] = out[i + 2] = std::sqrt((f[0] * f[0] + f[1] * f[1] + f[2] * f[2]) / 3.0);
  }
}

void neighbourhood_scale_values(const NeighborList& nl, std::size_t n_centres, const int* centre_index,
                                const double* own, double radius, double* out) {
  if (nl.offsets.size() < n_centres + 1) throw InputError("neighbour list rows do not match the centres");
  for (std::size_t i = 0; i < n_centres; ++i) {
    const double m = own[centre_index ? centre_index[i] : static_cast<int>(i)];
    double sum = m * m;
    int count = 1;
    for (int k = nl.offsets[i]; k < nl.offsets[i + 1]; ++k) {
      const Neighbor& nb = nl.items[k];
      if (!(nb.d < radius)) continue;
      sum += own[nb.j] * own[nb.j];
      ++count;
    }
    out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = std::sqrt(sum / count);
  }
}

std::vector<double> structure_force_scales(const Structure& s, const double* forces, double radius) {
  const std::size_t n = s.size();
  std::vector<double> scales(3 * n);
  force_scale_values(3 * n, forces, scales.data());
  if (radius <= 0.0 || n == 0) return scales;
  std::vector<double> own(n);
  for (std::size_t i = 0; i < n; ++i) own[i] = scales[3 * i];
  neighbourhood_scale_values(build_neighbor_list(s, radius, kMinDistance), n, nullptr, own.data(), radius,
                             scales.data());
  return scales;
}

}  // namespace otfgp
