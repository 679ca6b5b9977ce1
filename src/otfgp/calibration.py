"""Calibration maps from the GP's variance to the variance a model reports.

The GP's latent variance (:attr:`otfgp.gp.Prediction.force_variances`) measures how far a
prediction is from the training data, but its scale is set by the signal hyperparameters,
which maximum likelihood tunes to the training set, and it understates the real error of
forces away from it (3-7x in standard deviation on the Al anchor workload, see
bench/uq_calibration.py). A :class:`Calibration` maps (latent variance, label-noise
variance) to a reported variance; :func:`fit_calibration` fits it by maximum Gaussian
likelihood on held-out samples: residual r_i, latent variance v_i and noise variance n_i of
labels the GP did not see. Typically these are the leave-one-environment-out residuals of
the training set (``GaussianProcess.loo_residuals("environment")``), which cost nothing
beyond the training factorisation.

Forms (``var`` is the reported variance of a force component):

* ``identity``:     var = v + n (the GP's own predictive variance)
* ``scale``:        var = s^2 (v + n)
* ``latent_scale``: var = s^2 v + n
* ``scale_floor``:  var = a v + b
* ``power``:        var = a v^p + b

The three components of one held-out atom are correlated; the fit treats them as
independent samples (a pseudo-likelihood), which leaves the point estimate unbiased and
only overstates how many samples there are.

Few samples: with fewer than ``min_samples`` (default 30) usable samples the fit is not
attempted and the identity map is returned, flagged ``fallback=True`` with a warning in the
log. A weak prior would shrink towards the identity instead, but which prior strength is
right depends on the form; returning the uncalibrated GP variance is the honest, simple
default, and the caller sees that it happened.

Pure numpy/scipy: this module imports nothing of otfgp (the GP may import it).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import scipy.optimize

log = logging.getLogger(__name__)

FORMS: tuple[str, ...] = ("identity", "scale", "latent_scale", "scale_floor", "power")
"""The calibration forms, see the module docstring."""

PARAMETERS: dict[str, tuple[str, ...]] = {
    "identity": (),
    "scale": ("s",),
    "latent_scale": ("s",),
    "scale_floor": ("a", "b"),
    "power": ("a", "p", "b"),
}

MIN_SAMPLES = 30
"""Below this many samples :func:`fit_calibration` returns the identity map."""

_P_BOUNDS = (0.1, 3.0)


@dataclass
class Calibration:
    """A fitted map from (latent variance, noise variance) to the reported variance.

    Attributes:
        form: one of :data:`FORMS`.
        params: the form's parameters by name (:data:`PARAMETERS`), in variance units of the
            data (e.g. b in (eV/A)^2).
        n_samples: samples the fit used.
        fallback: True when too few samples forced the identity map.
        nll: mean Gaussian negative log likelihood per sample at the optimum (None if not
            fitted).
    """

    form: str = "identity"
    params: dict[str, float] = field(default_factory=dict)
    n_samples: int = 0
    fallback: bool = False
    nll: float | None = None

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"unknown calibration form {self.form!r}; known: {list(FORMS)}")
        need = set(PARAMETERS[self.form])
        if set(self.params) != need:
            raise ValueError(f"form {self.form!r} takes parameters {sorted(need)}, got {sorted(self.params)}")
        self.params = {k: float(self.params[k]) for k in PARAMETERS[self.form]}

    def apply(self, latent_var: Any, noise_var: Any) -> np.ndarray:
        """Reported variance for the given latent and noise variances (broadcast)."""
        v = np.maximum(np.asarray(latent_var, dtype=float), 0.0)
        n = np.asarray(noise_var, dtype=float)
        p = self.params
        if self.form == "identity":
            return v + n
        if self.form == "scale":
            return p["s"] ** 2 * (v + n)
        if self.form == "latent_scale":
            return p["s"] ** 2 * v + n
        if self.form == "scale_floor":
            return p["a"] * v + p["b"] + 0.0 * n
        return p["a"] * v ** p["p"] + p["b"] + 0.0 * n

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; :meth:`from_dict` restores it exactly."""
        return {"form": self.form, "params": dict(self.params), "n_samples": int(self.n_samples),
                "fallback": bool(self.fallback), "nll": self.nll}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        nll = d.get("nll")
        return cls(form=d["form"], params=dict(d.get("params", {})), n_samples=int(d.get("n_samples", 0)),
                   fallback=bool(d.get("fallback", False)), nll=None if nll is None else float(nll))


def gaussian_nll(residuals: Any, variances: Any) -> float:
    """Mean negative log likelihood of residuals under N(0, variances)."""
    r = np.asarray(residuals, dtype=float)
    v = np.asarray(variances, dtype=float)
    return float(np.mean(0.5 * (np.log(2 * math.pi * v) + r**2 / v)))


def fit_calibration(residuals: Any, latent_var: Any, noise_var: Any, form: str = "scale_floor",
                    min_samples: int = MIN_SAMPLES) -> Calibration:
    """Fit a calibration map by maximum Gaussian likelihood on held-out samples.

    Args:
        residuals: held-out errors (label minus prediction), any shape.
        latent_var: the GP's latent variance of each prediction (same shape).
        noise_var: the label-noise variance of each (same shape, or broadcastable).
        form: one of :data:`FORMS`.
        min_samples: below this many finite samples return the identity map
            (``fallback=True``) and log a warning.
    """
    if form not in FORMS:
        raise ValueError(f"unknown calibration form {form!r}; known: {list(FORMS)}")
    r = np.asarray(residuals, dtype=float).ravel()
    v = np.asarray(latent_var, dtype=float).ravel()
    if v.shape != r.shape:
        raise ValueError(f"residuals ({r.size}) and latent variances ({v.size}) differ in size")
    n = np.broadcast_to(np.asarray(noise_var, dtype=float), np.shape(latent_var)).ravel()
    ok = np.isfinite(r) & np.isfinite(v) & np.isfinite(n)
    r, v, n = r[ok], np.maximum(v[ok], 0.0), n[ok]
    m = r.size
    if form == "identity" or m < min_samples:
        if form != "identity":
            log.warning("calibration: %d samples (< %d), using the identity map (latent + noise variance)",
                        m, min_samples)
        cal = Calibration("identity", {}, m, fallback=form != "identity")
        cal.nll = gaussian_nll(r, cal.apply(v, n)) if m and np.all(v + n > 0) else None
        return cal

    # Work in units of a typical predictive variance so that all parameters are O(1).
    v0 = float(np.median(v + n))
    if not v0 > 0:
        raise ValueError("latent and noise variances are all zero")
    x, e, r2 = v / v0, n / v0, r**2 / v0
    tiny = 1e-10

    def nll_of(var: np.ndarray) -> float:
        var = np.maximum(var, tiny)
        return float(np.mean(0.5 * (np.log(var) + r2 / var)))

    if form == "scale":
        s2 = float(np.mean(r2 / np.maximum(x + e, tiny)))
        params = {"s": math.sqrt(s2)}
    else:
        if form == "latent_scale":
            def var_of(t):
                return math.exp(t[0]) * x + e
            t0, bounds = [0.0], [(-20.0, 20.0)]
        elif form == "scale_floor":
            def var_of(t):
                return math.exp(t[0]) * x + math.exp(t[1])
            t0, bounds = [0.0, math.log(max(float(np.median(e)), 1e-3))], [(-20.0, 20.0), (-25.0, 10.0)]
        else:  # power
            def var_of(t):
                return math.exp(t[0]) * x ** t[1] + math.exp(t[2])
            t0 = [0.0, 1.0, math.log(max(float(np.median(e)), 1e-3))]
            bounds = [(-20.0, 20.0), _P_BOUNDS, (-25.0, 10.0)]
        best = None
        # two starts: from the scale-only optimum and from the GP's own variance
        s2 = float(np.mean(r2 / np.maximum(x + e, tiny)))
        for a0 in (0.0, math.log(max(s2, 1e-6))):
            start = list(t0)
            start[0] = a0
            res = scipy.optimize.minimize(lambda t: nll_of(var_of(t)), start, method="L-BFGS-B", bounds=bounds)
            if best is None or res.fun < best.fun:
                best = res
        t = best.x
        if form == "latent_scale":
            params = {"s": math.sqrt(math.exp(t[0]))}
        elif form == "scale_floor":
            params = {"a": math.exp(t[0]), "b": math.exp(t[1]) * v0}
        else:
            p = float(t[1])
            params = {"a": math.exp(t[0]) * v0 ** (1.0 - p), "p": p, "b": math.exp(t[2]) * v0}
    cal = Calibration(form, params, m)
    cal.nll = gaussian_nll(r, np.maximum(cal.apply(v, n), tiny * v0))
    return cal
