// Analytic pair baselines (priors) for Delta-learning: the GP learns label - baseline and the
// model predicts baseline + GP. Morse, Lennard-Jones and ZBL pair potentials, each smoothly
// cut off at its own cutoff.
//
// Smoothing: the "shifted-force" form V_s(r) = V(r) - V(rc) - (r - rc) V'(rc) for r < rc and 0
// beyond. Energy and force go to zero continuously at rc (no energy jump, no force jump, so MD
// conserves energy); the price is a linear term, which is negligible when V has decayed at rc
// (for Morse and LJ pick rc where V'(rc) is small) and is exact bookkeeping in any case: the
// GP learns the difference to whatever the baseline is, and Python, the maps and LAMMPS all
// evaluate this one function.
#pragma once
#include <array>
#include <vector>

#include "neighbors.h"
#include "structure.h"

namespace otfgp {

enum class BaselineKind : int {
  kMorse = 1,         // params per element (D_e eV, r_e A, a 1/A): D [e^{-2a(r-re)} - 2 e^{-a(r-re)}]
  kLennardJones = 2,  // params per element (epsilon eV, sigma A, unused): 4 eps [(s/r)^12 - (s/r)^6]
  kZbl = 3,           // no parameters: the universal screened nuclear repulsion of the atomic numbers
};

// Parameters of one unlike (or like) pair that replace the mixing rule.
struct PairOverride {
  int z1 = 0, z2 = 0;  // atomic numbers (either order)
  std::array<double, 3> params{};
};

// What the user specifies (and the model file stores): parameters by atomic number.
// Mixing rules for pairs without an override: Morse D_e geometric mean, r_e and a arithmetic
// means; Lennard-Jones Lorentz-Berthelot (epsilon geometric, sigma arithmetic). ZBL needs none
// (its screening length is defined for any pair of nuclear charges).
struct BaselineSpec {
  BaselineKind kind = BaselineKind::kMorse;
  double cutoff = 0.0;                          // Angstrom
  std::vector<int> elements;                    // atomic numbers with per-element parameters
  std::vector<std::array<double, 3>> params;    // one triple per element (ZBL: may be empty)
  std::vector<PairOverride> overrides;
};

// A baseline's contribution to one structure (same conventions as Prediction).
struct BaselineResult {
  double energy = 0.0;
  std::vector<double> forces;          // n_atoms * 3
  std::vector<double> local_energies;  // n_atoms: half of each pair energy to each atom
  std::array<double, 6> virial{};      // dE/d(strain), ASE Voigt order xx yy zz yz xz xy (eV)
};

// A spec resolved for one model's species list: the mixed parameters of every species pair.
class PairBaseline {
 public:
  // InputError naming the problem: unknown kind, cutoff not positive/finite, parameters not
  // positive/finite, a model species without parameters, an element listed twice.
  PairBaseline(BaselineSpec spec, const std::vector<int>& atomic_numbers);

  const BaselineSpec& spec() const { return spec_; }
  double cutoff() const { return spec_.cutoff; }

  // Smoothed pair energy of species a and b at distance r and its derivative dV/dr (both 0
  // at r >= cutoff).
  double pair(int a, int b, double r, double& dvdr) const;

  // Energy, forces, local energies and virial of a structure (its own neighbour list).
  BaselineResult evaluate(const Structure& s) const;

  // One centre's share from its neighbour row (items[begin, end) of a list whose j index
  // `species`): adds half of each pair energy to e, the full pair force on the centre to f
  // and the centre's half of -dE/d(strain) to virial in LAMMPS order xx yy zz xy xz yz.
  void add_centre(int centre_species, const std::vector<int>& species, const Neighbor* begin,
                  const Neighbor* end, double& e, double* f, double* virial) const;

 private:
  double raw(int type, double r, double& dvdr) const;  // unsmoothed V and V'

  BaselineSpec spec_;
  int ns_;
  std::vector<std::array<double, 3>> table_;  // ns*ns: mixed params (ZBL: Z1 Z2, screening length)
  std::vector<double> shift_v_, shift_f_;     // V(rc) and V'(rc) per species pair
};

}  // namespace otfgp
