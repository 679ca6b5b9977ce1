"""How good is a predicted uncertainty? Metrics on errors and predicted standard deviations.

Every function takes ``errors`` (prediction - reference) and ``stds`` (the predicted
standard deviations of the same quantities, same shape; any shape, flattened) and treats
each entry as one Gaussian prediction ``N(prediction, std^2)`` of its reference value. They
are pure numpy/scipy and know nothing of otfgp models (see :mod:`otfgp.evaluate`).

Input checks (``ValueError``): shapes differ, no entries, an error that is NaN or infinite,
a std that is NaN, infinite or negative.

Zero stds are a claim of exactness and are taken at that word (the limit std -> 0):

- the z-score ``e / std`` is 0 when ``e == 0`` and infinite otherwise, so ``mean_squared_z``
  is infinite as soon as one zero-std entry has a nonzero error;
- a central interval of a zero std is the point 0: the entry is inside it (``coverage``,
  ``reliability_curve``, ``miscalibration_area``) only if its error is exactly 0;
- ``gaussian_nll`` is ``inf`` if any std is 0 (a zero-width Gaussian has no finite density
  score; scoring it as infinitely overconfident is the conservative choice, and a small
  std floor, e.g. ``np.maximum(stds, 1e-6)``, is the caller's decision to make);
- rank and ratio metrics (``spearman``, ``rmse_over_rms_std``) use the value 0 as it is.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

DEFAULT_GRID = 1000
"""Points of the expected-probability grid used by :func:`miscalibration_area`."""


def _check(errors: ArrayLike, stds: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float arrays of ``errors`` and ``stds`` after the input checks."""
    e = np.asarray(errors, dtype=float)
    s = np.asarray(stds, dtype=float)
    if e.shape != s.shape:
        raise ValueError(f"errors and stds differ in shape: {e.shape} vs {s.shape}")
    if e.size == 0:
        raise ValueError("no errors given (empty arrays)")
    e, s = e.ravel(), s.ravel()
    if not np.all(np.isfinite(e)):
        raise ValueError(f"{int(np.sum(~np.isfinite(e)))} errors are NaN or infinite")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{int(np.sum(~np.isfinite(s)))} stds are NaN or infinite")
    if np.any(s < 0):
        raise ValueError(f"{int(np.sum(s < 0))} stds are negative (smallest {s.min():.3g})")
    return e, s


def _abs_z(e: np.ndarray, s: np.ndarray) -> np.ndarray:
    """|e| / s with the zero-std convention: 0 for e == 0, inf otherwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(e) / s
    z[(s == 0) & (e == 0)] = 0.0
    return z


def gaussian_nll(errors: ArrayLike, stds: ArrayLike) -> float:
    """Mean Gaussian negative log-likelihood per entry (nats), constant included:

        NLL = mean_i [ 0.5 log(2 pi) + log(s_i) + e_i^2 / (2 s_i^2) ]

    Lower is better; it rewards small stds only where the errors are small. ``inf`` if any
    std is 0.
    """
    e, s = _check(errors, stds)
    if np.any(s == 0):
        return math.inf
    return float(np.mean(0.5 * np.log(2 * np.pi) + np.log(s) + 0.5 * (e / s) ** 2))


def mean_squared_z(errors: ArrayLike, stds: ArrayLike) -> float:
    """Mean squared z-score ``mean_i (e_i / s_i)^2``: 1 for calibrated stds, > 1 when they
    are too small (overconfident), < 1 when too large."""
    e, s = _check(errors, stds)
    return float(np.mean(_abs_z(e, s) ** 2))


def coverage(errors: ArrayLike, stds: ArrayLike, k: float = 1.0) -> float:
    """Fraction of entries with ``|e_i| <= k s_i``. Calibrated Gaussian stds give
    ``erf(k / sqrt(2))``: 0.6827 at k = 1, 0.9545 at k = 2."""
    if not k >= 0:
        raise ValueError(f"k must be >= 0, got {k}")
    e, s = _check(errors, stds)
    return float(np.mean(np.abs(e) <= k * s))


def reliability_curve(errors: ArrayLike, stds: ArrayLike, levels: ArrayLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Expected against observed coverage of central Gaussian intervals.

    For each expected probability p in ``levels`` (default 0.05, 0.10, ..., 0.95) the
    central p-interval of ``N(0, s_i^2)`` is ``|e| <= q_p s_i`` with
    ``q_p = Phi^-1(0.5 + p / 2)``; the observed value is the fraction of entries inside:

        observed(p) = mean_i [ |e_i| / s_i <= q_p ]

    Returns ``(levels, observed)``; calibrated stds give observed == levels.
    """
    e, s = _check(errors, stds)
    p = np.arange(1, 20) / 20.0 if levels is None else np.asarray(levels, dtype=float).ravel()
    if p.size == 0 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("levels must be probabilities in [0, 1]")
    q = stats.norm.ppf(0.5 + p / 2)  # p = 1 gives inf: every finite z is inside
    z = np.sort(_abs_z(e, s))
    return p, np.searchsorted(z, q, side="right") / z.size


def miscalibration_area(errors: ArrayLike, stds: ArrayLike, grid: int = DEFAULT_GRID) -> float:
    """Area between the reliability curve and the diagonal (Tran et al. 2020; the
    ``miscalibration_area`` of uncertainty-toolbox with central intervals):

        area = integral_0^1 |observed(p) - p| dp  ~  mean_j |observed(p_j) - p_j|

    on the midpoint grid ``p_j = (j + 1/2) / grid``. 0 for calibrated stds; at most 0.5
    (0.5 when every entry is inside every interval or outside all of them).
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    p = (np.arange(grid) + 0.5) / grid
    p, observed = reliability_curve(errors, stds, p)
    return float(np.mean(np.abs(observed - p)))


def spearman(errors: ArrayLike, stds: ArrayLike) -> float:
    """Spearman rank correlation of |e_i| with s_i (does a larger std mean a larger
    error?). 1: same order; 0: no relation. NaN when either is constant (no ranking)."""
    e, s = _check(errors, stds)
    if e.size < 2:
        raise ValueError("Spearman correlation needs at least 2 entries")
    a = np.abs(e)
    if np.all(a == a[0]) or np.all(s == s[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a, s).statistic)


def roc_auc(scores: ArrayLike, positives: ArrayLike) -> float:
    """Area under the ROC curve of flagging the ``positives`` by ``scores`` (higher score =
    flagged first): the probability that a random positive outscores a random negative,
    ties counting 1/2. Computed as the Mann-Whitney U statistic of the positives' scores
    against the negatives', ``AUC = U / (n_pos n_neg)``. 1: perfect, 0.5: chance, 0: reversed.
    """
    x = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(positives).ravel()
    if x.shape != y.shape:
        raise ValueError(f"scores and positives differ in size: {x.size} vs {y.size}")
    if x.size == 0:
        raise ValueError("no scores given (empty arrays)")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores contain NaN or infinite values")
    if y.dtype != bool:
        if not np.all(np.isin(y, (0, 1))):
            raise ValueError("positives must be booleans (or 0/1)")
        y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC-AUC needs positives and negatives (got {n_pos} and {n_neg})")
    u = stats.mannwhitneyu(x[y], x[~y], alternative="two-sided", method="asymptotic").statistic
    return float(u / (n_pos * n_neg))


def rmse_over_rms_std(errors: ArrayLike, stds: ArrayLike) -> float:
    """``sqrt(mean e_i^2) / sqrt(mean s_i^2)``: the ratio of the actual to the predicted
    spread, 1 for calibrated stds on average (> 1: too small). ``inf`` if all stds are 0 and
    some error is not."""
    e, s = _check(errors, stds)
    rms_e, rms_s = math.sqrt(np.mean(e ** 2)), math.sqrt(np.mean(s ** 2))
    if rms_s == 0:
        return 0.0 if rms_e == 0 else math.inf
    return rms_e / rms_s


__all__ = ["gaussian_nll", "mean_squared_z", "coverage", "reliability_curve",
           "miscalibration_area", "spearman", "roc_auc", "rmse_over_rms_std"]
