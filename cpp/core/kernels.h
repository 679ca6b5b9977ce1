// The squared-exponential 2- and 3-body kernels between packed clusters.
//
// Between clusters c, c' of the same species type the cutoff-free kernel is
//   S(c, c') = sum_p exp(-|d - P_p d'|^2 / (2 ell^2))
// where p runs over the allowed edge permutations (see PermSet). Its value and first
// derivatives on both sides give every label-label covariance. The work for one cluster c
// against a whole block H is summed into a few accumulators per row of H first and only
// then contracted with c's coefficients, so the cost per cluster pair does not depend on
// how many rows c carries.
#pragma once
#include "kernel_block.h"

namespace otfgp {

// out[rG * H.rows + rH] += sum over clusters of G and H of the functional covariance
// (without the signal variance sigma^2). If out_dell is non-null, also accumulates its
// derivative with respect to ell.
void block_kernel(const KernelBlock& G, const KernelBlock& H, double ell, double* out,
                  double* out_dell);

// For a single cluster descriptor d of `type` against a contracted block H with one row:
// value = sum_c' functional, grad[m] = its derivative with respect to d_m.
void contracted_value(int dim, const double* d, int type, const KernelBlock& H, double ell,
                      double& value, double* grad);

}  // namespace otfgp
