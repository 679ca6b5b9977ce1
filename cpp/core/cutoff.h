// The smooth cutoff shared by the exact GP, the label functionals and the mapped variance:
// the quadratic cutoff function of one body order and the product rule that folds it into
// a functional's coefficients. Kept apart from the kernel engine, which never sees the
// cutoff (its coefficients arrive with the cutoff already folded in).
#pragma once

namespace otfgp {

// Smooth quadratic cutoff of one body order: f = prod_m (rc - d_m)^2 and its gradient.
// Inline: called for every cluster in the mapped-variance hot loop.
inline void cutoff_function(int dim, double rc, const double* d, double& f, double* grad) {
  double fc[3], dfc[3];
  for (int m = 0; m < dim; ++m) {
    const double x = rc - d[m];
    fc[m] = x * x;
    dfc[m] = -2.0 * x;
  }
  f = 1.0;
  for (int m = 0; m < dim; ++m) f *= fc[m];
  for (int m = 0; m < dim; ++m) {
    double g = dfc[m];
    for (int k = 0; k < dim; ++k)
      if (k != m) g *= fc[k];
    grad[m] = g;
  }
}

// Coefficients of a functional given per-row weights on the cluster energy (w0) and on its
// edge-length derivatives (w[m]), with the cutoff folded in (product rule).
inline void fold_cutoff(int dim, double rc, const double* d, int rows, const double* w0,
                        const double* w, double* coef) {
  double f, grad[3];
  cutoff_function(dim, rc, d, f, grad);
  for (int r = 0; r < rows; ++r) {
    double* c = coef + r * (1 + dim);
    const double* wr = w + r * dim;
    double a0 = w0[r] * f;
    for (int m = 0; m < dim; ++m) {
      a0 += wr[m] * grad[m];
      c[1 + m] += wr[m] * f;
    }
    c[0] += a0;
  }
}

}  // namespace otfgp
