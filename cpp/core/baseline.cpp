#include "baseline.h"

#include <cmath>
#include <string>

#include "clusters.h"
#include "errors.h"

namespace otfgp {

namespace {

// ZBL universal screening function: sum_k c_k exp(-d_k x), x = r / a, with
// a = 0.46850 / (Z1^0.23 + Z2^0.23) Angstrom (Ziegler, Biersack, Littmark 1985; the constants
// LAMMPS's pair_style zbl uses) and the Coulomb constant e^2 / (4 pi eps0) in eV Angstrom.
constexpr double kZblC[4] = {0.18175, 0.50986, 0.28022, 0.02817};
constexpr double kZblD[4] = {3.19980, 0.94229, 0.40290, 0.20162};
constexpr double kZblA0 = 0.46850, kZblPower = 0.23;
constexpr double kCoulomb = 14.399645;

const char* kind_name(BaselineKind k) {
  switch (k) {
    case BaselineKind::kMorse: return "Morse";
    case BaselineKind::kLennardJones: return "Lennard-Jones";
    case BaselineKind::kZbl: return "ZBL";
  }
  return "unknown";
}

std::array<double, 3> mix(BaselineKind kind, const std::array<double, 3>& p, const std::array<double, 3>& q) {
  // Morse (D_e, r_e, a): D_e geometric, r_e and a arithmetic; LJ (eps, sigma): Lorentz-Berthelot.
  return {std::sqrt(p[0] * q[0]), 0.5 * (p[1] + q[1]),
          kind == BaselineKind::kMorse ? 0.5 * (p[2] + q[2]) : 0.0};
}

void check_params(BaselineKind kind, const std::array<double, 3>& p, const std::string& what) {
  const int n = kind == BaselineKind::kMorse ? 3 : 2;
  for (int k = 0; k < n; ++k)
    if (!std::isfinite(p[k]) || p[k] <= 0)
      throw InputError(std::string(kind_name(kind)) + " baseline parameters of " + what +
                       " must be positive and finite");
}

}  // namespace

PairBaseline::PairBaseline(BaselineSpec spec, const std::vector<int>& atomic_numbers)
    : spec_(std::move(spec)), ns_(static_cast<int>(atomic_numbers.size())) {
  const BaselineKind kind = spec_.kind;
  if (kind != BaselineKind::kMorse && kind != BaselineKind::kLennardJones && kind != BaselineKind::kZbl)
    throw InputError("unknown baseline kind " + std::to_string(static_cast<int>(kind)));
  if (!std::isfinite(spec_.cutoff) || spec_.cutoff <= kMinDistance)
    throw InputError("baseline cutoff must be finite and exceed " + std::to_string(kMinDistance) +
                     " Angstrom, got " + std::to_string(spec_.cutoff));
  const bool needs_params = kind != BaselineKind::kZbl;
  if (spec_.params.size() != spec_.elements.size())
    throw InputError("baseline needs one parameter triple per element");
  std::vector<std::array<double, 3>> per_species(ns_);
  std::vector<char> have(ns_, 0);
  for (std::size_t k = 0; k < spec_.elements.size(); ++k) {
    const int z = spec_.elements[k];
    check_params(kind, spec_.params[k], "element " + std::to_string(z));
    for (std::size_t l = 0; l < k; ++l)
      if (spec_.elements[l] == z) throw InputError("baseline lists element " + std::to_string(z) + " twice");
    for (int a = 0; a < ns_; ++a)
      if (atomic_numbers[a] == z) {
        per_species[a] = spec_.params[k];
        have[a] = 1;
      }
  }
  table_.assign(static_cast<std::size_t>(ns_) * ns_, {});
  for (int a = 0; a < ns_; ++a)
    for (int b = 0; b < ns_; ++b) {
      auto& t = table_[a * ns_ + b];
      if (!needs_params) {
        const double za = atomic_numbers[a], zb = atomic_numbers[b];
        t = {za, zb, kZblA0 / (std::pow(za, kZblPower) + std::pow(zb, kZblPower))};
        continue;
      }
      bool found = false;
      for (const auto& o : spec_.overrides)
        if ((o.z1 == atomic_numbers[a] && o.z2 == atomic_numbers[b]) ||
            (o.z2 == atomic_numbers[a] && o.z1 == atomic_numbers[b])) {
          check_params(kind, o.params,
                       "pair " + std::to_string(o.z1) + "-" + std::to_string(o.z2));
          t = o.params;
          found = true;
        }
      if (found) continue;
      for (int c : {a, b})
        if (!have[c])
          throw InputError(std::string(kind_name(kind)) + " baseline has no parameters for element " +
                           std::to_string(atomic_numbers[c]) + " (a model species)");
      t = mix(kind, per_species[a], per_species[b]);
    }
  shift_v_.resize(table_.size());
  shift_f_.resize(table_.size());
  for (std::size_t t = 0; t < table_.size(); ++t)
    shift_v_[t] = raw(static_cast<int>(t), spec_.cutoff, shift_f_[t]);
}

double PairBaseline::raw(int type, double r, double& dvdr) const {
  const auto& p = table_[type];
  switch (spec_.kind) {
    case BaselineKind::kMorse: {
      const double e = std::exp(-p[2] * (r - p[1]));
      dvdr = 2.0 * p[0] * p[2] * (e - e * e);
      return p[0] * (e * e - 2.0 * e);
    }
    case BaselineKind::kLennardJones: {
      const double s6 = std::pow(p[1] / r, 6);
      dvdr = 4.0 * p[0] * (-12.0 * s6 * s6 + 6.0 * s6) / r;
      return 4.0 * p[0] * (s6 * s6 - s6);
    }
    case BaselineKind::kZbl: {
      const double pre = kCoulomb * p[0] * p[1], x = r / p[2];
      double phi = 0.0, dphi = 0.0;
      for (int k = 0; k < 4; ++k) {
        const double t = kZblC[k] * std::exp(-kZblD[k] * x);
        phi += t;
        dphi -= kZblD[k] * t / p[2];
      }
      dvdr = pre * (dphi / r - phi / (r * r));
      return pre * phi / r;
    }
  }
  dvdr = 0.0;
  return 0.0;
}

double PairBaseline::pair(int a, int b, double r, double& dvdr) const {
  const double rc = spec_.cutoff;
  if (r >= rc) {
    dvdr = 0.0;
    return 0.0;
  }
  const int t = a * ns_ + b;
  const double v = raw(t, r, dvdr);
  dvdr -= shift_f_[t];
  return v - shift_v_[t] - (r - rc) * shift_f_[t];
}

BaselineResult PairBaseline::evaluate(const Structure& s) const {
  validate_structure(s, ns_);
  const NeighborList nl = build_neighbor_list(s, spec_.cutoff, kMinDistance);
  const int n = static_cast<int>(s.size());
  BaselineResult out;
  out.forces.assign(3 * static_cast<std::size_t>(n), 0.0);
  out.local_energies.assign(n, 0.0);
  for (int i = 0; i < n; ++i) {
    double vir[6] = {0, 0, 0, 0, 0, 0};
    add_centre(s.species[i], s.species, nl.items.data() + nl.offsets[i], nl.items.data() + nl.offsets[i + 1],
               out.local_energies[i], &out.forces[3 * i], vir);
    out.energy += out.local_energies[i];
    // LAMMPS xx yy zz xy xz yz of -dE/d(strain) -> ASE Voigt xx yy zz yz xz xy of +dE/d(strain)
    constexpr int kFromLammps[6] = {0, 1, 2, 5, 4, 3};
    for (int v = 0; v < 6; ++v) out.virial[v] -= vir[kFromLammps[v]];
  }
  return out;
}

void PairBaseline::add_centre(int centre_species, const std::vector<int>& species, const Neighbor* begin,
                              const Neighbor* end, double& e, double* f, double* virial) const {
  // Full neighbour rows: each pair appears once from each end, so the centre takes half the
  // pair energy and half the virial, but the whole force (-dE/dx_i = V'(r) * unit(i->j)).
  constexpr int kPairs[6][2] = {{0, 0}, {1, 1}, {2, 2}, {0, 1}, {0, 2}, {1, 2}};
  for (const Neighbor* nb = begin; nb != end; ++nb) {
    if (nb->d >= spec_.cutoff) continue;
    double dv;
    e += 0.5 * pair(centre_species, species[nb->j], nb->d, dv);
    const double t = dv / nb->d;
    for (int k = 0; k < 3; ++k) f[k] += t * nb->r[k];
    for (int v = 0; v < 6; ++v) virial[v] -= 0.5 * t * nb->r[kPairs[v][0]] * nb->r[kPairs[v][1]];
  }
}

}  // namespace otfgp
