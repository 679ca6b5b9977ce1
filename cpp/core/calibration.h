// Calibration of the predictive variance: the map from the GP's latent (noise-free)
// variance to the variance the model reports. The GP's latent variance measures distance
// from the training data, but its scale is set by hyperparameters tuned to the training set
// and tends to understate real errors; the caller (Python) fits a map on held-out errors and
// stores it in the model, so that every consumer (Python, the mapped variance, LAMMPS)
// reports the same calibrated number. This file only holds and applies the map.
#pragma once
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "neighbors.h"

namespace otfgp {

// reported = a * max(latent, 0)^p + b + c * mean^2 + e * noise, one general form that the
// fitted forms (scale, scale + floor, power law, ...) are special cases of. `noise` is the
// label-noise variance of the quantity and `mean` its predicted value (so that a form can
// grow with the force magnitude). The defaults are the identity of an uncalibrated model:
// latent + noise, the GP's own predictive variance.
//
// For forces, `mean` is a scale value of the atom (force_scale_values), and `radius` says
// which: 0, the atom's own RMS force component; r > 0, the RMS of that value over the atom and
// its neighbours closer than r (neighbourhood_scale_values). The radius matters only where
// the scale values are computed from a structure; applying the map takes them as given.
struct VarianceMap {
  double a = 1.0, p = 1.0, b = 0.0, c = 0.0, e = 1.0;
  double radius = 0.0;

  double operator()(double latent, double noise, double mean) const {
    // `latent < 0 ? 0 : latent` rather than std::max: a NaN latent (a variance that was
    // not computed) must stay NaN instead of turning into the floor b.
    const double v = latent < 0.0 ? 0.0 : latent;
    const double vp = p == 1.0 ? v : std::pow(v, p);  // the common p == 1 skips pow
    return a * vp + b + c * mean * mean + e * noise;
  }
  // InputError naming `what` unless all finite, a > 0, p > 0 and b, c, e, radius >= 0.
  void validate(const std::string& what) const;
  // The part of the map that more training data can reduce, a * latent^p: the floor, the
  // value-proportional term and the label noise stay whatever the model learns, so the
  // on-the-fly DFT decision looks at this part only (uncalibrated: the latent variance).
  VarianceMap epistemic() const { return VarianceMap{a, p, 0.0, 0.0, 0.0, 0.0}; }
  // Whether the map's force scale averages over neighbours (needs more than the atom).
  bool scales_with_neighbourhood() const { return c > 0.0 && radius > 0.0; }
};

// The quantities a model reports variances of; each has its own map.
enum class VarianceQuantity : int { kForce = 0, kEnergy = 1, kStress = 2, kLocalEnergy = 3 };

struct Calibration {
  VarianceMap force, energy, stress, local_energy;
  // Opaque JSON written by the caller (forms, sample counts, sources); stored, never read.
  std::string info;

  const VarianceMap& map(VarianceQuantity q) const;
  void validate() const;
};

// The one place the map is applied to arrays: out[k] = map(latent[k], noise[k * noise_stride],
// mean[k * mean_stride]) for k < n. A stride of 0 repeats one value; mean may be null (0).
// Used by the model's predictions (and through them the LAMMPS styles) and by the Python
// bindings, so that no two consumers can apply the rule differently.
void apply_variance_map(const VarianceMap& map, std::size_t n, const double* latent, const double* noise,
                        std::size_t noise_stride, const double* mean, std::size_t mean_stride, double* out);

// The value a force map scales with, for n force components (3 per atom): the atom's RMS
// force component |F_i|/sqrt(3), the same for its three components. On held-out Al errors
// it tracked the error better than each component's own value (bench/uq_calibration.py),
// since a model error follows how distorted the atom's environment is rather than the
// direction of its force. Used by the model's predictions and, through the bindings, by the
// calibration fit, so that fit and prediction scale alike.
void force_scale_values(std::size_t n, const double* forces, double* out);

// The neighbourhood scale: for each of n_centres rows of `nl` (neighbours closer than
// `radius` count), the RMS of `own` over the centre and those neighbours, written to the
// centre's three components of out (3 * n_centres). `own` holds one value per index the list
// uses (own[centre_index[i]] for centre i, own[j] for neighbour j): an atom's |F|/sqrt(3). A
// model error follows how distorted the environment is; in a liquid an atom in a disordered
// shell can feel a small net force, which its own value alone misses (bench/calibration_scale.py).
// Every image of an atom counts, as in the neighbour list. NaN in a needed value gives NaN.
void neighbourhood_scale_values(const NeighborList& nl, std::size_t n_centres, const int* centre_index,
                                const double* own, double radius, double* out);

// The scale values (3 per atom) a force map with `radius` uses on a whole structure with
// predicted forces (3 per atom): force_scale_values for radius 0, else the neighbourhood's.
std::vector<double> structure_force_scales(const Structure& s, const double* forces, double radius);

}  // namespace otfgp
