"""Calibration maps from the GP's variance to the variance a model reports.

The GP's latent variance (:attr:`otfgp.gp.Prediction.latent_force_variances`) measures how far a
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
* ``relative``:     var = a v + c m^2, m the atom's predicted RMS force component |F_i|/sqrt(3)
* ``neighbourhood``: var = a v + c m^2, m the RMS of |F_j|/sqrt(3) over the atom and its
  neighbours within ``radius`` (the model's 3-body cutoff, :func:`scale_radius`; the
  default of :meth:`otfgp.GaussianProcess.calibrate`, see below)
* ``general``:      var = a v^p + b + c m^2 + e n (the core's rule; not fitted, it describes
  maps set through the core directly)

Every form is a special case of the core's one rule (``cpp/core/calibration.h``),
var = a max(v, 0)^p + b + c m^2 + e n with m the predicted value (for forces the atom's RMS
component, the same for its three components, or with a ``radius`` > 0 its neighbourhood's);
:meth:`Calibration.coefficients` gives a form's (a, p, b, c, e, radius) from the table
:data:`FORM_COEFFICIENTS`, and :meth:`Calibration.apply` evaluates the rule in C++, so
Python, the mapped variance and LAMMPS cannot disagree. The model stores one map per
quantity (:class:`ModelCalibration`: force, energy, stress, local energy), fitted by
:meth:`otfgp.GaussianProcess.calibrate`.

Why a force-proportional term with no floor (bench/uq_calibration.py, three seeds of the anchor workload,
fits on leave-one-environment-out residuals only): the GP's error against the reference has
two parts. Extrapolation, which the latent variance v sees, scaled by a; and the model-class
error of a 2+3-body model against a many-body reference, which v cannot see. That second part
vanishes at a perfect lattice (both forces are zero by symmetry) and grows with how
distorted the environment is, which the atom's force magnitude measures; a constant floor b
has no such basis and, fitted where the training data are (5 % displacements), it
overstates the std of gentler structures 4x (ratio RMSE/RMS std 0.24 at 2 %), while c m^2
gives 0.41-0.45 there and 0.9-1.4 at 5 %, 9 % and in the liquid. Forms with more freedom
(a v^p + b + c m^2) win the leave-one-out likelihood by 0.01-0.02 nats by shrinking a, and
then understate the extrapolation error 5-13x: leave-one-out data from one displacement
amplitude cannot tell b, e n and c m^2 apart, so the form fixes b = e = 0 on that physical
argument. Held-out errors that span the conditions (the on-the-fly learner's pre-update
errors and audits) pin the map better than leave-one-out alone.

Why ``neighbourhood`` replaced ``relative`` as the default (bench/calibration_scale.py, the
on-the-fly Al melt of bench/otf_al.py calibrated after the run, three seeds): in a liquid an
atom in a disordered shell can feel a small net force, and with the atom's own |F_i| the
third of the liquid atoms with the smallest forces had squared errors 2.7-2.9 times their
reported variance; 1-std coverage in the liquid was 0.57-0.65. Averaging m over the first
shell (the 3-body cutoff) follows how distorted the environment is: the same z^2 are 0.8-1.1,
coverage 0.63-0.72 in the liquid and 0.73-0.77 in the solid, and on the anchor workload's
leave-one-out fit it changes little (2 % set 0.36-0.51 against 0.38-0.47).

The three components of one held-out atom are correlated; the fit treats them as
independent samples (a pseudo-likelihood), which leaves the point estimate unbiased and
only overstates how many samples there are.

Few samples: with fewer than ``min_samples`` (default 30) usable samples the fit is not
attempted and the identity map is returned, flagged ``fallback=True`` with a warning in the
log. A weak prior would shrink towards the identity instead, but which prior strength is
right depends on the form; returning the uncalibrated GP variance is the honest, simple
default, and the caller sees that it happened.

Numpy/scipy and the C++ rule only: this module imports nothing else of otfgp (the GP
imports it).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.optimize

from . import _core
from .arguments import count

log = logging.getLogger(__name__)

FORM_COEFFICIENTS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, float]], dict[str, float]]]] = {
    # form: (its parameters, its (a, p, b, c, e) in the core's rule). The one table of the
    # forms: a new form (e.g. one with c > 0, variance growing with the predicted force
    # squared) is one line here plus its fit in fit_calibration.
    "identity": ((), lambda q: {"a": 1.0, "p": 1.0, "b": 0.0, "c": 0.0, "e": 1.0, "radius": 0.0}),
    "scale": (("s",), lambda q: {"a": q["s"] ** 2, "p": 1.0, "b": 0.0, "c": 0.0, "e": q["s"] ** 2, "radius": 0.0}),
    "latent_scale": (("s",), lambda q: {"a": q["s"] ** 2, "p": 1.0, "b": 0.0, "c": 0.0, "e": 1.0, "radius": 0.0}),
    "scale_floor": (("a", "b"), lambda q: {"a": q["a"], "p": 1.0, "b": q["b"], "c": 0.0, "e": 0.0, "radius": 0.0}),
    "power": (("a", "p", "b"), lambda q: {"a": q["a"], "p": q["p"], "b": q["b"], "c": 0.0, "e": 0.0,
                                          "radius": 0.0}),
    "relative": (("a", "c"), lambda q: {"a": q["a"], "p": 1.0, "b": 0.0, "c": q["c"], "e": 0.0, "radius": 0.0}),
    # radius is not fitted: the model's force-scale radius (scale_radius) at the fit
    "neighbourhood": (("a", "c", "radius"), lambda q: {"a": q["a"], "p": 1.0, "b": 0.0, "c": q["c"], "e": 0.0,
                                                       "radius": q["radius"]}),
    # The rule itself, not fitted: how a map set through the core alone is described.
    "general": (("a", "p", "b", "c", "e", "radius"), lambda q: dict(q)),
}

FORMS: tuple[str, ...] = tuple(f for f in FORM_COEFFICIENTS if f != "general")
"""The forms :func:`fit_calibration` fits, see the module docstring (``general`` only
describes stored maps)."""

PARAMETERS: dict[str, tuple[str, ...]] = {form: spec[0] for form, spec in FORM_COEFFICIENTS.items()}
"""Each form's parameter names."""

SCALED_FORMS: tuple[str, ...] = ("relative", "neighbourhood")
"""The forms whose force variance grows with a force scale value (c m^2; fitted with ``mean``)."""

QUANTITIES: tuple[str, ...] = ("force", "energy", "stress", "local_energy")
"""The quantities a model calibrates, each with its own map (:class:`ModelCalibration`)."""

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
        if self.form not in FORM_COEFFICIENTS:
            raise ValueError(f"unknown calibration form {self.form!r}; known: {list(FORM_COEFFICIENTS)}")
        need = set(PARAMETERS[self.form])
        if self.form == "general" and "radius" not in self.params:
            # maps described before the radius existed scale with the atom's own force
            self.params = {**self.params, "radius": 0.0}
        if set(self.params) != need:
            raise ValueError(f"form {self.form!r} takes parameters {sorted(need)}, got {sorted(self.params)}")
        self.params = {k: float(self.params[k]) for k in PARAMETERS[self.form]}

    def coefficients(self) -> dict[str, float]:
        """The map as the core's general rule: dict(a, p, b, c, e) of
        a max(v, 0)^p + b + c m^2 + e n (see :data:`FORM_COEFFICIENTS`)."""
        return {k: float(v) for k, v in FORM_COEFFICIENTS[self.form][1](self.params).items()}

    def apply(self, latent_var: Any, noise_var: Any, mean: Any = None) -> np.ndarray:
        """Reported variance for the given latent and noise variances and predicted values
        (broadcast; ``mean`` matters only to forms with c > 0), by the C++ rule."""
        return _core.apply_variance_map(self.coefficients(), np.asarray(latent_var, dtype=float),
                                        np.asarray(noise_var, dtype=float),
                                        None if mean is None else np.asarray(mean, dtype=float))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; :meth:`from_dict` restores it exactly."""
        return {"form": self.form, "params": dict(self.params), "n_samples": int(self.n_samples),
                "fallback": bool(self.fallback), "nll": self.nll}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        nll = d.get("nll")
        return cls(form=d["form"], params=dict(d.get("params", {})), n_samples=int(d.get("n_samples", 0)),
                   fallback=bool(d.get("fallback", False)), nll=None if nll is None else float(nll))


@dataclass
class ModelCalibration:
    """The calibration a model stores: one :class:`Calibration` per quantity.

    ``force`` maps a force component's latent variance (noise sigma_n^2), ``energy`` the
    total energy's (noise_energy^2), ``stress`` a stress component's (noise_stress^2) and
    ``local_energy`` a local energy's (no label noise: local energies are never labels).
    ``info`` is free-form (how it was fitted: form, sample counts per source, fallbacks).

    The core keeps only the coefficients and a JSON string; :meth:`to_core` writes this
    whole description into that string, so :meth:`from_core` restores it exactly.
    """

    force: Calibration = field(default_factory=Calibration)
    energy: Calibration = field(default_factory=Calibration)
    stress: Calibration = field(default_factory=Calibration)
    local_energy: Calibration = field(default_factory=Calibration)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; :meth:`from_dict` restores it exactly."""
        out: dict[str, Any] = {q: getattr(self, q).to_dict() for q in QUANTITIES}
        out["info"] = dict(self.info)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelCalibration":
        return cls(**{q: Calibration.from_dict(d[q]) for q in QUANTITIES if q in d},
                   info=dict(d.get("info", {})))

    def to_core(self) -> dict[str, Any]:
        """The dict ``_core.Model.calibration`` takes: each quantity's coefficients and
        this description as JSON in ``info``."""
        out: dict[str, Any] = {q: getattr(self, q).coefficients() for q in QUANTITIES}
        out["info"] = json.dumps(self.to_dict())
        return out

    @classmethod
    def from_core(cls, d: Mapping[str, Any]) -> "ModelCalibration":
        """From ``_core.Model.calibration``. The stored coefficients are what predictions
        use, so they win: a quantity whose description in ``info`` does not reproduce them
        bit for bit (a map set through the core directly) is described as form ``general``."""
        try:
            described = cls.from_dict(json.loads(d.get("info") or "{}"))
        except (ValueError, KeyError, TypeError):
            described = cls()
        for q in QUANTITIES:
            stored = {k: float(v) for k, v in d[q].items()}
            if getattr(described, q).coefficients() != stored:
                setattr(described, q, Calibration("general", stored))
        return described


def force_scale_values(forces: Any) -> np.ndarray:
    """The values a force map's c term scales with, per component: the atom's RMS force
    component |F_i|/sqrt(3), repeated for its three components (same shape as ``forces``,
    N x 3 or flat). The core's own rule (``otfgp::force_scale_values``), the one every force
    prediction applies."""
    return _core.force_scale_values(np.asarray(forces, dtype=float))


def scale_radius(cutoffs: Mapping[str, float]) -> float:
    """The radius of a model's neighbourhood force scale (the ``neighbourhood`` form): its
    3-body cutoff, the first neighbour shell of a close-packed metal (the 2-body cutoff for
    a model without 3-body terms)."""
    r3 = float(cutoffs.get("threebody") or 0.0)
    return r3 if r3 > 0 else float(cutoffs["twobody"])


def neighbourhood_scale_values(atoms: Any, forces: Any, radius: float) -> np.ndarray:
    """Per component (N x 3) the RMS of |F_j|/sqrt(3) over each atom of ``atoms`` and its
    neighbours closer than ``radius`` (every periodic image counted), from the predicted
    ``forces``; radius 0 gives :func:`force_scale_values`. The core's rule
    (``otfgp::structure_force_scales``), the one predictions apply."""
    if radius == 0:  # the atom's own: no structure needed
        return force_scale_values(np.asarray(forces, dtype=float).reshape(-1, 3))
    return _core.neighbourhood_scale_values(np.asarray(atoms.cell[:], dtype=float), [bool(x) for x in atoms.pbc],
                                            np.asarray(atoms.positions, dtype=float),
                                            np.asarray(forces, dtype=float).reshape(-1, 3), float(radius))


def gaussian_nll(residuals: Any, variances: Any) -> float:
    """Mean negative log likelihood of residuals under N(0, variances)."""
    r = np.asarray(residuals, dtype=float)
    v = np.asarray(variances, dtype=float)
    return float(np.mean(0.5 * (np.log(2 * math.pi * v) + r**2 / v)))


def fit_calibration(residuals: Any, latent_var: Any, noise_var: Any, form: str = "scale_floor",
                    min_samples: int = MIN_SAMPLES, mean: Any = None, radius: float | None = None) -> Calibration:
    """Fit a calibration map by maximum Gaussian likelihood on held-out samples.

    Args:
        residuals: held-out errors (label minus prediction), any shape.
        latent_var: the GP's latent variance of each prediction (same shape).
        noise_var: the label-noise variance of each (same shape, or broadcastable).
        form: one of :data:`FORMS`.
        min_samples: below this many finite samples return the identity map
            (``fallback=True``) and log a warning.
        mean: the value a ``relative`` or ``neighbourhood`` map scales with, per sample
            (same shape; for forces the atom's predicted RMS component |F_i|/sqrt(3), or
            its neighbourhood's (:func:`neighbourhood_scale_values`), as the core applies it).
        radius: the ``neighbourhood`` form's radius, the one ``mean`` was computed with.
    """
    if form not in FORMS:
        raise ValueError(f"unknown calibration form {form!r}; fitted forms: {list(FORMS)}")
    count("min_samples", min_samples)
    r = np.asarray(residuals, dtype=float).ravel()
    v = np.asarray(latent_var, dtype=float).ravel()
    if v.shape != r.shape:
        raise ValueError(f"residuals ({r.size}) and latent variances ({v.size}) differ in size")
    try:
        n = np.broadcast_to(np.asarray(noise_var, dtype=float), np.shape(latent_var)).ravel()
    except ValueError:
        raise ValueError(f"noise variances of shape {np.shape(noise_var)} for {v.size} samples: give one "
                         "per sample or one for all") from None
    if np.any(n < 0):  # (a latent variance a little below 0 is rounding: it is clipped below)
        raise ValueError(f"noise variances must be >= 0, got {float(np.min(n))!r}")
    scaled = form in SCALED_FORMS
    if scaled and mean is None:
        raise ValueError(f"the {form} form needs the predicted values (mean=...)")
    if form == "neighbourhood" and not (radius is not None and math.isfinite(radius) and radius > 0):
        raise ValueError(f"the neighbourhood form needs the radius its scale values were computed with, got {radius!r}")
    mu = np.zeros_like(r) if mean is None else np.asarray(mean, dtype=float).ravel()
    if mu.shape != r.shape:
        raise ValueError(f"residuals ({r.size}) and means ({mu.size}) differ in size")
    ok = np.isfinite(r) & np.isfinite(v) & np.isfinite(n) & np.isfinite(mu)
    r, v, n, mu = r[ok], np.maximum(v[ok], 0.0), n[ok], mu[ok]
    certain = v + n <= 0
    if certain.any():
        # a prediction the GP calls exact: no variance map scales 0 to its error, and with an
        # error the likelihood drives the map's scale without bound (s = 4e4 from 10 of 100)
        log.warning("calibration: %d of %d samples have zero latent and noise variance; left out of the fit",
                    int(certain.sum()), r.size)
        r, v, n, mu = r[~certain], v[~certain], n[~certain], mu[~certain]
    m = r.size
    if form != "identity" and m >= min_samples and not np.any(r != 0):
        raise ValueError(f"all {m} held-out residuals are zero: they measure no error (training data, or "
                         "labels that are the model's own predictions?)")
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
    x, e, r2, m2 = v / v0, n / v0, r**2 / v0, mu**2 / v0
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
        elif scaled:
            def var_of(t):
                return math.exp(t[0]) * x + math.exp(t[1]) * m2
            t0, bounds = [0.0, math.log(1e-4)], [(-20.0, 20.0), (-30.0, 5.0)]
        else:  # power
            def var_of(t):
                return math.exp(t[0]) * x ** t[1] + math.exp(t[2])
            t0 = [0.0, 1.0, math.log(max(float(np.median(e)), 1e-3))]
            bounds = [(-20.0, 20.0), _P_BOUNDS, (-25.0, 10.0)]
        best = None
        # starts: from the scale-only optimum and from the GP's own variance
        s2 = float(np.mean(r2 / np.maximum(x + e, tiny)))
        starts = []
        for a0 in (0.0, math.log(max(s2, 1e-6))):
            start = list(t0)
            start[0] = a0
            starts.append(start)
        if scaled:
            # and from the scale-only optimum with the c term all but off: a v + c m^2 has two
            # branches (v explains the errors, or m^2 does); from the starts above L-BFGS-B can
            # slide into the c branch, where the likelihood is flat in a, and return a at its
            # bound with a worse likelihood (seen on an on-the-fly NPT run: a = 2e-9, mean NLL
            # -1.42 against -1.62 at a = 70, c = 0.004)
            starts.append([math.log(max(s2, 1e-6)), bounds[1][0] + 5.0])
        for start in starts:
            res = scipy.optimize.minimize(lambda t: nll_of(var_of(t)), start, method="L-BFGS-B", bounds=bounds)
            if best is None or res.fun < best.fun:
                best = res
        t = best.x
        if form == "latent_scale":
            params = {"s": math.sqrt(math.exp(t[0]))}
        elif form == "scale_floor":
            params = {"a": math.exp(t[0]), "b": math.exp(t[1]) * v0}
        elif scaled:
            params = {"a": math.exp(t[0]), "c": math.exp(t[1])}
            if form == "neighbourhood":
                params["radius"] = float(radius)
        else:
            p = float(t[1])
            params = {"a": math.exp(t[0]) * v0 ** (1.0 - p), "p": p, "b": math.exp(t[2]) * v0}
    cal = Calibration(form, params, m)
    cal.nll = gaussian_nll(r, np.maximum(cal.apply(v, n, mu), tiny * v0))
    return cal


def model_calibration(pooled: Mapping[str, Sequence[tuple[np.ndarray, ...]]], counts: Mapping[str, Any],
                      noise: Mapping[str, float], form: str, min_samples: int,
                      radius: float | None = None, energy_labels: bool = False) -> ModelCalibration:
    """The :class:`ModelCalibration` a model installs from pooled held-out samples, the rule
    :meth:`otfgp.GaussianProcess.calibrate` documents (shared by every model kind).

    ``pooled[q]`` lists (residuals, latent variances, noise variances, atom scale values,
    neighbourhood scale values) arrays per quantity ``"force"``, ``"energy"``, ``"stress"``
    (:class:`SamplePool`); ``counts`` the sample counts per quantity and source (recorded in
    ``info``); ``noise`` the label-noise variances; ``radius`` the neighbourhood scale's
    (:func:`scale_radius` of the model), needed by the ``neighbourhood`` form;
    ``energy_labels`` whether the model is trained on energies (then energies and local
    energies keep the GP's own variance until enough held-out energies are measured)."""

    def fit(q: str) -> Calibration:
        parts = pooled.get(q, [])
        r, v, n, m_atom, m_nb = (np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in range(5))
        # a total energy or stress has no "distortion" of its own to scale with
        f = form if q == "force" or form not in SCALED_FORMS else "scale_floor"
        m = (m_nb if f == "neighbourhood" else m_atom) if f in SCALED_FORMS else None
        if m is not None:
            # samples without the value the form scales with cannot enter: the neighbourhood
            # scale of an older checkpoint, or predicted forces a caller's samples left out
            # (fit_calibration would drop them without a word, and fall back to the identity)
            missing = ~np.isfinite(m)
            if missing.any():
                what = ("neighbourhood scale (recorded before it was kept, or not given)" if f == "neighbourhood"
                        else "predicted forces (forces=...)")
                log.warning("calibration: %d of %d force samples have no %s for the %s form; they are left "
                            "out of the fit", int(missing.sum()), m.size, what, f)
                r, v, n, m = r[~missing], v[~missing], n[~missing], m[~missing]
        return fit_calibration(r, v, n, form=f, min_samples=min_samples, mean=m, radius=radius)

    def latent_scale_of(cal: Calibration) -> Calibration:
        return Calibration("latent_scale", {"s": math.sqrt(cal.coefficients()["a"])}, cal.n_samples,
                           fallback=cal.fallback)

    force = fit("force")
    transferred = latent_scale_of(force)
    maps = {"force": force}
    source: dict[str, str] = {}  # where each other map came from: fitted, uncalibrated, force
    for q in ("energy", "stress"):
        if sum(p[0].size for p in pooled.get(q, [])) >= min_samples:
            maps[q], source[q] = fit(q), "fitted"
        elif q == "energy" and energy_labels:
            # the GP's own until measured: the force map's a says little about energies the
            # model is fitted to directly (measured: otfgp.GaussianProcess.calibrate)
            maps[q], source[q] = Calibration(), "uncalibrated"
        else:
            maps[q], source[q] = transferred, "force"
    # A local energy is never a label, so never held out; it is a share of the total energy
    # (the same latent function), so it follows the energy map: that map's latent scale when
    # it was measured on held-out energies, the GP's own while it was not, the force map's
    # latent scale for a model without energy labels.
    source["local_energy"] = source["energy"]
    maps["local_energy"] = {"fitted": latent_scale_of(maps["energy"]), "uncalibrated": Calibration(),
                            "force": transferred}[source["energy"]]
    from_force = [q for q in ("energy", "stress", "local_energy") if source[q] == "force"]
    own = [q for q in ("energy", "stress", "local_energy") if source[q] == "uncalibrated"]
    info = {"form": form, "min_samples": int(min_samples), "samples": dict(counts),
            "transferred_from_force": from_force, "uncalibrated": own,
            "local_energy_from": {"fitted": "energy", "uncalibrated": "none", "force": "force"}[source["energy"]],
            "fallback": bool(force.fallback), "noise_variances": dict(noise)}
    log.info("calibration: force %s %s from %d samples%s; %s from the force map's latent scale; %s uncalibrated",
             force.form, force.params, force.n_samples, " (fallback: identity)" if force.fallback else "",
             ", ".join(from_force) or "nothing", ", ".join(own) or "nothing")
    return ModelCalibration(**maps, info=info)


def epistemic_variances(cal: Calibration, latent_var: Any) -> np.ndarray:
    """The part of ``cal``'s reported variance a new label can reduce: a max(v, 0)^p of the
    latent variance (no floor, force-proportional or noise term), as the C++ core's
    ``VarianceMap::epistemic``."""
    c = cal.coefficients()
    v = np.maximum(np.asarray(latent_var, dtype=float), 0.0)
    return c["a"] * v ** c["p"]


class SamplePool:
    """Held-out samples pooled per quantity for :func:`model_calibration`: (residuals,
    latent variances, noise variances, atom scale values, neighbourhood scale values) arrays
    and counts per source. ``radius`` is the neighbourhood scale's (:func:`scale_radius`);
    0 when the form to be fitted does not use it, so that frames skip computing it."""

    def __init__(self, radius: float = 0.0) -> None:
        self.radius = float(radius)
        self.pooled: dict[str, list[tuple[np.ndarray, ...]]] = {q: [] for q in ("force", "energy", "stress")}
        self.counts: dict[str, dict[str, int]] = {q: {} for q in self.pooled}

    def add(self, quantity: str, source: str, residuals: Any, latent: Any, noise_var: Any,
            predicted: Any = None, neighbourhood: Any = None) -> None:
        """Pool one source's samples (non-finite ones dropped); ``predicted`` forces give the
        relative form's scale values, ``neighbourhood`` the neighbourhood form's (per
        component, :func:`neighbourhood_scale_values`; NaN when unknown)."""
        r = np.asarray(residuals, dtype=float).ravel()
        v = np.asarray(latent, dtype=float).ravel()
        if r.shape != v.shape:
            raise ValueError(f"{source}: {r.size} residuals but {v.size} latent variances")
        n = np.broadcast_to(np.asarray(noise_var, dtype=float), r.shape).ravel()
        # the value a relative map scales with: for forces the atom's RMS component
        m = np.full(r.shape, np.nan) if predicted is None else np.asarray(predicted, dtype=float).ravel()
        if quantity == "force" and predicted is not None:
            m = force_scale_values(m).ravel()
        nb = np.full(r.shape, np.nan) if neighbourhood is None else np.asarray(neighbourhood, dtype=float).ravel()
        if nb.shape != r.shape:
            raise ValueError(f"{source}: {r.size} residuals but {nb.size} neighbourhood scale values")
        ok = np.isfinite(r) & np.isfinite(v)
        self.pooled[quantity].append((r[ok], v[ok], n[ok], m[ok], nb[ok]))
        self.counts[quantity][source] = self.counts[quantity].get(source, 0) + int(ok.sum())

    def add_samples(self, samples: Any, noise: Mapping[str, float] | float) -> None:
        """Caller-collected samples (see :meth:`otfgp.GaussianProcess.calibrate`): a mapping
        or object with force ``residuals``, ``latent_variances``, optionally ``forces``,
        ``neighbourhood_scales`` and ``noise_variances``, and optionally held-out energies
        and stresses (``energy_residuals`` / ``energy_latent_variances``, ``stress_residuals``
        / ``stress_latent_variances``, :func:`otfgp.learning.calibration_sample`), or a list
        of those; None adds nothing. ``noise``: the label-noise variances by quantity (a
        number: the force's, for callers with force samples only)."""
        if samples is None:
            return
        noise = noise if isinstance(noise, Mapping) else {"force": float(noise)}
        for item in samples if isinstance(samples, (list, tuple)) else [samples]:
            get = item.get if isinstance(item, Mapping) else lambda k, d=None, o=item: getattr(o, k, d)
            nv = get("noise_variances", None)
            self.add("force", "samples", get("residuals"), get("latent_variances"),
                     noise["force"] if nv is None else nv, get("forces", None), get("neighbourhood_scales", None))
            for q in ("energy", "stress"):
                r = get(f"{q}_residuals", None)
                if r is not None and q in noise:
                    self.add(q, "samples", r, get(f"{q}_latent_variances"), noise[q])

    def add_frames(self, frames: Any, predict: Callable[[Any], Any], noise: Mapping[str, float]) -> None:
        """Structures with reference labels (their calculator's forces, and energy and stress
        if it has them), predicted by ``predict(atoms)`` (a :class:`otfgp.gp.Prediction`
        with latent variances): reference minus prediction against the latent variance."""
        from .reference_labels import checked_reference_forces

        for i, atoms in enumerate(frames or ()):
            # the labeller's forces on every atom (a fixed atom's too), checked: a NaN label
            # would otherwise drop out of the fit without a word
            reference, _ = checked_reference_forces(atoms, f"calibration frame {i}")
            pred = predict(atoms)
            nb = neighbourhood_scale_values(atoms, pred.forces, self.radius) if self.radius > 0 else None
            self.add("force", "frames", reference - pred.forces, pred.latent_force_variances, noise["force"],
                     pred.forces, nb)
            results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
            if "energy" in results:
                self.add("energy", "frames", float(atoms.get_potential_energy()) - pred.energy,
                         pred.latent_energy_variance, noise["energy"])
            if "stress" in results and np.all(np.isfinite(pred.stress)):
                self.add("stress", "frames", np.asarray(atoms.get_stress(voigt=True)) - pred.stress,
                         pred.latent_stress_variance, noise["stress"])
