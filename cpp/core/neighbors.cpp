#include "neighbors.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "errors.h"

namespace otfgp {
namespace {

using Vec3 = std::array<double, 3>;

Vec3 cross(const Vec3& a, const Vec3& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
double norm(const Vec3& a) { return std::sqrt(dot(a, a)); }

// The cell with non-periodic directions replaced by an orthonormal completion, so that it
// is invertible and fractional coordinates along periodic directions are well defined
// even when ASE leaves non-periodic cell vectors at zero.
std::array<Vec3, 3> effective_cell(const Structure& s) {
  std::array<Vec3, 3> v;
  for (int k = 0; k < 3; ++k) v[k] = {s.cell[3 * k], s.cell[3 * k + 1], s.cell[3 * k + 2]};
  std::array<Vec3, 3> basis;  // orthonormal basis of the periodic subspace, then completed
  int nb = 0;
  auto add_orth = [&](Vec3 w) {
    const double n0 = norm(w);
    for (int b = 0; b < nb; ++b) {
      const double p = dot(w, basis[b]);
      for (int t = 0; t < 3; ++t) w[t] -= p * basis[b][t];
    }
    const double n = norm(w);
    // Relative, so that the rule is validate_periodic_cell's (which runs first) at any scale.
    if (!(n0 > 0) || n < 0.1 * kMinCellSine * n0) return false;
    for (int t = 0; t < 3; ++t) w[t] /= n;
    basis[nb++] = w;
    return true;
  };
  for (int k = 0; k < 3; ++k)
    if (s.pbc[k] && !add_orth(v[k]))
      throw InputError("cell vectors along periodic directions are linearly dependent");
  for (int k = 0; k < 3; ++k) {
    if (s.pbc[k]) continue;
    // Try the unit axes until one is independent of what we have.
    for (int axis = 0; axis < 3; ++axis) {
      Vec3 e{0, 0, 0};
      e[axis] = 1.0;
      if (add_orth(e)) {
        v[k] = basis[nb - 1];
        break;
      }
    }
  }
  return v;
}

std::string fmt(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", x);
  return buf;
}

std::string plane_note(double thinnest) {
  if (!std::isfinite(thinnest)) return "";
  return "; the cell's lattice planes along a periodic direction are " + fmt(thinnest) +
         " Angstrom apart";
}

std::string too_many_images(int n, double count, double cutoff, double thinnest) {
  return "the cutoff of " + fmt(cutoff) + " Angstrom needs about " + fmt(count) + " periodic image atoms of the " +
         std::to_string(n) + " atoms, more than the limit of " + fmt(kMaxImageAtoms) + plane_note(thinnest) +
         ": the cell is far smaller than the cutoff (or the cutoff far too long)";
}

std::string too_dense(int i, std::size_t limit, double cutoff, double thinnest) {
  return "atom " + std::to_string(i) + " has more than " + std::to_string(limit) + " neighbours within " +
         fmt(cutoff) + " Angstrom, denser than " + fmt(kMaxNeighborDensity) +
         " atoms/A^3 (diamond, the densest solid, has 0.18)" + plane_note(thinnest) +
         ": check the cell and the positions (the cost of a prediction grows with the square of "
         "the neighbour count)";
}

}  // namespace

NeighborList build_neighbor_list(const Structure& s, double cutoff, double min_distance) {
  const int n = static_cast<int>(s.size());
  const std::array<Vec3, 3> a = effective_cell(s);
  const Vec3 bc = cross(a[1], a[2]), ca = cross(a[2], a[0]), ab = cross(a[0], a[1]);
  const double det = dot(a[0], bc);
  // Rows of the inverse (transposed): frac_k = dot(x, recip[k]).
  const std::array<Vec3, 3> recip = {Vec3{bc[0] / det, bc[1] / det, bc[2] / det},
                                     Vec3{ca[0] / det, ca[1] / det, ca[2] / det},
                                     Vec3{ab[0] / det, ab[1] / det, ab[2] / det}};

  // Wrap atoms into the cell along periodic directions; remember nothing else, because
  // neighbour vectors are invariant under lattice translations.
  std::vector<Vec3> x(n);
  for (int i = 0; i < n; ++i) {
    Vec3 p{s.positions[3 * i], s.positions[3 * i + 1], s.positions[3 * i + 2]};
    for (int k = 0; k < 3; ++k) {
      if (!s.pbc[k]) continue;
      const double f = dot(p, recip[k]);
      const double shift = std::floor(f);
      for (int t = 0; t < 3; ++t) p[t] -= shift * a[k][t];
    }
    x[i] = p;
  }

  // Images: along periodic k the planes are h_k apart, so shifts up to ceil(cutoff / h_k)
  // reach every neighbour of an atom inside the cell.
  std::array<int, 3> reps{0, 0, 0};
  std::array<double, 3> pad{0, 0, 0};  // cutoff in fractional units along k
  // Image atoms the padded cell will hold (in double: a long cutoff in a small cell would
  // overflow any integer), checked before anything is allocated.
  double expected = n;
  double thinnest = std::numeric_limits<double>::infinity();
  for (int k = 0; k < 3; ++k) {
    if (!s.pbc[k]) continue;
    const double h = 1.0 / norm(recip[k]);
    thinnest = std::min(thinnest, h);
    pad[k] = cutoff / h;
    expected *= 1.0 + 2.0 * pad[k];
  }
  if (expected > kMaxImageAtoms)
    throw InputError(too_many_images(n, expected, cutoff, thinnest));
  if (n == 0) return NeighborList{{0}, {}};
  for (int k = 0; k < 3; ++k) reps[k] = static_cast<int>(std::ceil(pad[k]));
  struct Image {
    Vec3 p;
    int atom;
  };
  std::vector<Image> images;
  images.reserve(static_cast<std::size_t>(std::min(expected * 1.1 + 27, kMaxImageAtoms)));
  for (int i0 = -reps[0]; i0 <= reps[0]; ++i0)
    for (int i1 = -reps[1]; i1 <= reps[1]; ++i1)
      for (int i2 = -reps[2]; i2 <= reps[2]; ++i2)
        for (int j = 0; j < n; ++j) {
          Vec3 p = x[j];
          const int sh[3] = {i0, i1, i2};
          for (int k = 0; k < 3; ++k)
            for (int t = 0; t < 3; ++t) p[t] += sh[k] * a[k][t];
          bool keep = true;
          for (int k = 0; k < 3 && keep; ++k) {
            if (!s.pbc[k] || sh[k] == 0) continue;
            const double f = dot(p, recip[k]);
            keep = f > -pad[k] - 1e-9 && f < 1.0 + pad[k] + 1e-9;
          }
          if (!keep) continue;
          if (images.size() >= static_cast<std::size_t>(kMaxImageAtoms))  // the estimate is approximate
            throw InputError(too_many_images(n, static_cast<double>(images.size()) + 1, cutoff, thinnest));
          images.push_back({p, j});
        }

  NeighborList out;
  out.offsets.assign(n + 1, 0);
  if (n == 0) return out;

  // Cell list over the bounding box of the images; bins at least `cutoff` wide, and no more
  // bins than a few per image so sparse non-periodic systems stay cheap.
  Vec3 lo = images[0].p, hi = images[0].p;
  for (const auto& im : images)
    for (int t = 0; t < 3; ++t) {
      lo[t] = std::min(lo[t], im.p[t]);
      hi[t] = std::max(hi[t], im.p[t]);
    }
  double width = std::max(cutoff, 1e-3);
  std::array<long, 3> nbin{};
  const double max_bins = 8.0 * static_cast<double>(images.size()) + 27;
  for (;;) {
    // Counted in double: a huge box (1e12 A) has more cutoff-wide bins than a long holds.
    double total = 1;
    std::array<double, 3> per{};
    for (int t = 0; t < 3; ++t) {
      per[t] = std::max(1.0, std::floor((hi[t] - lo[t]) / width));
      total *= per[t];
    }
    if (total <= max_bins) {
      for (int t = 0; t < 3; ++t) nbin[t] = static_cast<long>(per[t]);
      break;
    }
    width *= 1.5;
  }
  auto bin_of = [&](const Vec3& p, int t) {
    long b = static_cast<long>((p[t] - lo[t]) / (hi[t] - lo[t] + 1e-12) * nbin[t]);
    return std::clamp(b, 0L, nbin[t] - 1);
  };
  const long total_bins = nbin[0] * nbin[1] * nbin[2];
  std::vector<int> bin_start(total_bins + 1, 0), order(images.size());
  std::vector<long> bin_index(images.size());
  for (std::size_t m = 0; m < images.size(); ++m) {
    const auto& p = images[m].p;
    bin_index[m] = (bin_of(p, 0) * nbin[1] + bin_of(p, 1)) * nbin[2] + bin_of(p, 2);
    ++bin_start[bin_index[m] + 1];
  }
  for (long b = 0; b < total_bins; ++b) bin_start[b + 1] += bin_start[b];
  {
    std::vector<int> fill(bin_start.begin(), bin_start.end() - 1);
    for (std::size_t m = 0; m < images.size(); ++m) order[fill[bin_index[m]]++] = static_cast<int>(m);
  }

  const double c2 = cutoff * cutoff;
  const double min2 = min_distance * min_distance;
  const double sphere = 4.0 / 3.0 * 3.14159265358979323846 * cutoff * cutoff * cutoff;
  const std::size_t max_row = static_cast<std::size_t>(
      std::min(1e9, std::max(kDensityCheckNeighbors, kMaxNeighborDensity * sphere)));
  for (int i = 0; i < n; ++i) {
    const Vec3& xi = x[i];
    const long b0 = bin_of(xi, 0), b1 = bin_of(xi, 1), b2 = bin_of(xi, 2);
    for (long d0 = std::max(0L, b0 - 1); d0 <= std::min(nbin[0] - 1, b0 + 1); ++d0)
      for (long d1 = std::max(0L, b1 - 1); d1 <= std::min(nbin[1] - 1, b1 + 1); ++d1)
        for (long d2 = std::max(0L, b2 - 1); d2 <= std::min(nbin[2] - 1, b2 + 1); ++d2) {
          const long b = (d0 * nbin[1] + d1) * nbin[2] + d2;
          for (int q = bin_start[b]; q < bin_start[b + 1]; ++q) {
            const Image& im = images[order[q]];
            const double r0 = im.p[0] - xi[0], r1 = im.p[1] - xi[1], r2 = im.p[2] - xi[2];
            const double dd = r0 * r0 + r1 * r1 + r2 * r2;
            if (dd >= c2) continue;
            if (im.atom == i && dd < 1e-20) continue;  // the atom itself
            if (dd < min2)
              throw InputError("atoms " + std::to_string(i) + " and " + std::to_string(im.atom) +
                               " are " + std::to_string(std::sqrt(dd)) +
                               " Angstrom apart, closer than the minimum " +
                               std::to_string(min_distance) + " Angstrom (overlapping atoms)");
            if (out.items.size() - out.offsets[i] >= max_row)
              throw InputError(too_dense(i, max_row, cutoff, thinnest));
            if (out.items.size() >= static_cast<std::size_t>(kMaxNeighborEntries))
              throw InputError("the neighbour list of " + std::to_string(n) + " atoms within " +
                               fmt(cutoff) + " Angstrom exceeds the limit of " + fmt(kMaxNeighborEntries) +
                               " entries; use a shorter cutoff or a smaller structure");
            out.items.push_back({im.atom, {r0, r1, r2}, std::sqrt(dd)});
          }
        }
    out.offsets[i + 1] = static_cast<int>(out.items.size());
  }
  return out;
}

}  // namespace otfgp
