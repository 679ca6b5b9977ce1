#include "calibration.h"

#include <cmath>
#include <string>

#include "errors.h"

namespace otfgp {

void VarianceMap::validate(const std::string& what) const {
  const double all[5] = {a, p, b, c, e};
  for (double x : all)
    if (!std::isfinite(x)) throw InputError(what + " calibration: coefficients must be finite");
  if (!(a > 0.0)) throw InputError(what + " calibration: a must be positive, got " + std::to_string(a));
  if (!(p > 0.0)) throw InputError(what + " calibration: p must be positive, got " + std::to_string(p));
  if (b < 0.0 || c < 0.0 || e < 0.0)
    throw InputError(what + " calibration: b, c and e must be non-negative");
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

}  // namespace otfgp
