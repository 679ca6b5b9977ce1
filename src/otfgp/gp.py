"""The Gaussian-process force field as Python users meet it.

The C++ core assembles covariance blocks and predicts; this module owns the training
linear algebra (scipy Cholesky, log marginal likelihood, L-BFGS-B) and the ASE glue.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import scipy.linalg
import scipy.optimize
from ase import Atoms
from ase.data import atomic_numbers as _atomic_numbers
from ase.data import chemical_symbols

from . import _core, baselines
from .arguments import count, flag, positive_number

from .calibration import (ModelCalibration, SamplePool, model_calibration,
                          neighbourhood_scale_values, scale_radius)
from .map_report import MapReport
from .reference_labels import FORCE_TRAINED
from .priors import DEFAULT_PRIORS, LogNormal, Priors, log_prior


log = logging.getLogger(__name__)

HYPERPARAMETER_NAMES: tuple[str, ...] = (
    "sigma2",
    "ell2",
    "sigma3",
    "ell3",
    "noise_force",
    "noise_energy",
    "noise_stress",
)
"""Order of the hyperparameter vector: 2-body signal std (eV) and length scale (A), 3-body
signal std and length scale, label noise of forces (eV/A), energies (eV per structure) and
stresses (eV/A^3)."""

DEFAULT_HYPERPARAMETERS: dict[str, float] = {
    "sigma2": 0.1,
    "ell2": 1.0,
    "sigma3": 0.01,
    "ell3": 0.5,
    "noise_force": 0.05,
    "noise_energy": 0.05,
    "noise_stress": 0.005,
}

DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "sigma2": (1e-5, 1e3),
    "ell2": (0.05, 20.0),
    "sigma3": (1e-5, 1e3),
    "ell3": (0.05, 20.0),
    "noise_force": (1e-3, 10.0),
    "noise_energy": (1e-5, 100.0),
    "noise_stress": (1e-7, 1.0),
}
"""Bounds used by :meth:`GaussianProcess.train`: numerical safety limits only (a force
noise of at least 1 meV/A keeps the kernel matrix well conditioned; length scales below
0.05 A make the kernel a spike). On small data the priors (:mod:`otfgp.priors`), not these
bounds, keep the hyperparameters sensible; docs/hyperparameters.md has the measurements.
Pure maximum likelihood (``priors=None``) needs tighter bounds:
:data:`MAXIMUM_LIKELIHOOD_BOUNDS`."""

MAXIMUM_LIKELIHOOD_BOUNDS: dict[str, tuple[float, float]] = {
    **DEFAULT_BOUNDS,
    "ell2": (0.5, 20.0),
    "ell3": (0.5, 20.0),
    "noise_force": (5e-3, 10.0),
    "noise_energy": (1e-4, 100.0),
    "noise_stress": (1e-6, 1.0),
}
"""The bounds of maximum-likelihood training before the priors (used when a model is built
with ``priors=None`` and no bounds): a 5 meV/A force-noise floor and length scales of at
least 0.5 A, without which the likelihood of a few environments picks length scales of a
few hundredths of an Angstrom and a vanishing noise (docs/hyperparameters.md)."""


_ROW_FORCE, _ROW_ENERGY, _ROW_STRESS = 0, 1, 2



class KernelMatrixError(RuntimeError):
    """The training covariance matrix is not numerically positive definite."""


#: A hyperparameter within this fraction of its log-range from a bound counts as at the bound.
AT_BOUND_FRACTION = 0.01
#: largest gradient component of the optimiser's objective (-log posterior, per unit of its
#: logistic coordinate) at which an L-BFGS-B exit counts as a stationary point
STATIONARY_GRADIENT = 0.1
#: how many times an L-BFGS-B run that stopped ABNORMAL away from a stationary point is
#: restarted from where it stopped (with a fresh curvature memory)
ABNORMAL_RESTARTS = 2
#: a restart that lowers -log posterior by less than this (nats) found the point converged:
#: hyperparameters that differ by so little in posterior are the same fit
NEGLIGIBLE_GAIN = 1e-3


def _stationary(jac: np.ndarray) -> bool:
    """True if an optimiser's gradient has vanished (:data:`STATIONARY_GRADIENT`)."""
    return bool(np.max(np.abs(jac), initial=0.0) < STATIONARY_GRADIENT)


def _message(res: scipy.optimize.OptimizeResult) -> str:
    return res.message.decode() if isinstance(res.message, bytes) else str(res.message)


def _stopped_abnormally(res: scipy.optimize.OptimizeResult) -> bool:
    """An ABNORMAL L-BFGS-B exit (a failed line search) where the gradient has not vanished."""
    return "ABNORMAL" in _message(res).upper() and not _stationary(res.jac)


def minimize_hyperparameters(objective: Any, u0: np.ndarray, max_iterations: int) -> scipy.optimize.OptimizeResult:
    """L-BFGS-B on ``objective`` (value and gradient) from ``u0``, restarted after an
    ABNORMAL exit away from a stationary point (see :func:`exit_state`). The result's
    ``settled`` says whether a restart found the point converged."""
    res = scipy.optimize.minimize(objective, u0, jac=True, method="L-BFGS-B", options={"maxiter": max_iterations})
    res.settled = False
    for _ in range(ABNORMAL_RESTARTS):
        # A line search that failed with a gradient away from zero. Either L-BFGS-B's
        # curvature memory no longer fits the (badly conditioned) objective - a restart
        # from that point with an empty memory goes on - or the gradient is no more
        # accurate than that and the objective is flat there to its rounding: a restart
        # then gains nothing that matters, and the point is converged.
        if not _stopped_abnormally(res):
            break
        again = scipy.optimize.minimize(objective, res.x, jac=True, method="L-BFGS-B",
                                        options={"maxiter": max_iterations})
        if res.fun - again.fun < NEGLIGIBLE_GAIN:
            res.settled = True  # and kept: a point that good is the same fit
            break
        again.nit += res.nit
        again.settled = False
        res = again
    return res


def exit_state(res: scipy.optimize.OptimizeResult) -> tuple[str, bool, bool]:
    """(message, converged, abnormal) of a :func:`minimize_hyperparameters` result. An
    ABNORMAL exit where the gradient has vanished, or from which a restart gained less than
    :data:`NEGLIGIBLE_GAIN`, is the line search meeting the rounding floor of the
    likelihood (energy and stress rows make the kernel matrix badly conditioned: its value
    and gradient are then inexact), i.e. a converged optimum."""
    settled = bool(getattr(res, "settled", False))
    converged = bool(res.success) or _stationary(res.jac) or settled
    return _message(res), converged, _stopped_abnormally(res) and not settled


@dataclass
class OptimizationReport:
    """How the last hyperparameter optimisation ended (:attr:`GaussianProcess.last_optimization`).

    ``at_bounds`` maps each hyperparameter that ended at (within
    :data:`AT_BOUND_FRACTION` of the log-range of) a bound to ``"lower"`` or ``"upper"``:
    the data would have it further out, so the bound, not the data, sets it. ``abnormal``
    is an L-BFGS-B exit other than convergence or the iteration limit (a line search that
    failed, usually a badly scaled or noisy likelihood) away from a stationary point (an
    ABNORMAL exit with a gradient below :data:`STATIONARY_GRADIENT`, or one from which up to
    :data:`ABNORMAL_RESTARTS` restarts gain less than :data:`NEGLIGIBLE_GAIN`, is a
    converged one).
    """

    log_likelihood: float
    iterations: int
    converged: bool
    message: str
    abnormal: bool
    at_bounds: dict[str, str]
    #: log prior density at the optimum (0 for maximum likelihood); the optimiser maximised
    #: ``log_likelihood + log_prior``.
    log_prior: float = 0.0

    def warnings(self) -> list[str]:
        """Human-readable warnings (empty when the optimisation ended cleanly)."""
        out = [f"{name} is at its {side} bound" for name, side in self.at_bounds.items()]
        if self.abnormal:
            out.append(f"the optimiser stopped abnormally ({self.message})")
        return out


@dataclass
class Prediction:
    """Mean and (optionally) variance of everything the model predicts for one structure.

    Units: eV, eV/A, eV/A^3 (stress in ASE's Voigt order xx, yy, zz, yz, xz, xy and sign).
    Variances are ``None`` when the prediction was made with ``variance=False``, and NaN
    where the variance mode does not give them (the mapped variance covers forces and local
    energies only; the stress of a cell without volume).

    Two kinds of variance, under explicit names:

    - *reported* (``force_variances``, ``energy_variance``, ``local_energy_variances``,
      ``stress_variance`` and the ``*_stds`` properties): the variance the model stands
      behind, i.e. the model's calibration (:attr:`GaussianProcess.calibration`) applied to
      the latent variance. Uncalibrated, it is the GP's own predictive variance of a
      label, latent + label noise (``noise_force_variance`` = sigma_n^2 for forces,
      noise_energy^2, noise_stress^2; local energies have no label noise, so their reported
      variance is the latent one). This is what thresholds, ``GPCalculator`` and
      LAMMPS's ``compute otfgp/std/atom`` use.
    - *latent* (``latent_*``): the GP's posterior variance of the noise-free function, the
      quantity the calibration is fitted from.
    - *epistemic* (``epistemic_*``, forces, local energies and stress): the part of the
      reported variance that more training data reduce, a latent^p of the calibration
      (the latent variance when uncalibrated); the floor, the force-proportional term and
      the label noise are not. The on-the-fly local-energy and stress checks compare
      these (and the force test with ``force_decision = "calibrated"``; by default it
      compares the latent std), since a DFT call can only shrink this part.
    """

    energy: float
    forces: np.ndarray
    local_energies: np.ndarray
    stress: np.ndarray
    energy_variance: float | None = None
    force_variances: np.ndarray | None = None
    local_energy_variances: np.ndarray | None = None
    stress_variance: np.ndarray | None = None
    latent_energy_variance: float | None = None
    latent_force_variances: np.ndarray | None = None
    latent_local_energy_variances: np.ndarray | None = None
    latent_stress_variance: np.ndarray | None = None
    noise_force_variance: float | None = None
    epistemic_force_variances: np.ndarray | None = None
    epistemic_local_energy_variances: np.ndarray | None = None
    epistemic_stress_variance: np.ndarray | None = None

    @staticmethod
    def _sqrt(v: Any) -> Any:
        return None if v is None else np.sqrt(v)

    @property
    def force_stds(self) -> np.ndarray | None:
        """Reported (calibrated) standard deviations of the force components (N x 3, eV/A)."""
        return self._sqrt(self.force_variances)

    @property
    def latent_force_stds(self) -> np.ndarray | None:
        """Latent (noise-free GP) standard deviations of the force components (N x 3, eV/A)."""
        return self._sqrt(self.latent_force_variances)

    @property
    def local_energy_stds(self) -> np.ndarray | None:
        """Reported standard deviations of the local energies (N, eV)."""
        return self._sqrt(self.local_energy_variances)

    @property
    def latent_local_energy_stds(self) -> np.ndarray | None:
        """Latent standard deviations of the local energies (N, eV)."""
        return self._sqrt(self.latent_local_energy_variances)

    @property
    def energy_std(self) -> float | None:
        """Reported standard deviation of the energy (eV)."""
        return None if self.energy_variance is None else float(np.sqrt(self.energy_variance))

    @property
    def latent_energy_std(self) -> float | None:
        """Latent standard deviation of the energy (eV; NaN for the mapped variance)."""
        return None if self.latent_energy_variance is None else float(np.sqrt(max(self.latent_energy_variance, 0.0)))

    @property
    def stress_stds(self) -> np.ndarray | None:
        """Reported standard deviations of the stress components (6, eV/A^3)."""
        return self._sqrt(self.stress_variance)

    @property
    def latent_stress_stds(self) -> np.ndarray | None:
        """Latent standard deviations of the stress components (6, eV/A^3)."""
        return None if self.latent_stress_variance is None else np.sqrt(np.maximum(self.latent_stress_variance, 0.0))

    @property
    def epistemic_force_stds(self) -> np.ndarray | None:
        """Epistemic standard deviations of the force components (N x 3, eV/A)."""
        return self._sqrt(self.epistemic_force_variances)

    @property
    def epistemic_local_energy_stds(self) -> np.ndarray | None:
        """Epistemic standard deviations of the local energies (N, eV)."""
        return self._sqrt(self.epistemic_local_energy_variances)

    @property
    def epistemic_stress_stds(self) -> np.ndarray | None:
        """Epistemic standard deviations of the stress components (6, eV/A^3)."""
        return self._sqrt(self.epistemic_stress_variance)

    @property
    def stress_variances(self) -> np.ndarray | None:
        """Alias of :attr:`stress_variance`."""
        return self.stress_variance


@dataclass
class LooResiduals:
    """Closed-form leave-one-out predictions of the training labels (:meth:`GaussianProcess.loo_residuals`).

    One entry per label row, in the model's row order. All at the current hyperparameters
    and energy offsets (the offsets are not refitted without the held-out label).

    Attributes:
        mode: ``"label"`` (each scalar label held out alone) or ``"environment"`` (the
            three force components of an atom held out together; an energy is held out
            alone, a structure's six stress components together).
        residuals: y_i - mu_i, the label minus its leave-out mean (energy rows with the
            offsets removed).
        variances: predictive variance of the held-out label, label noise included (for
            ``"environment"``: the diagonal of the block's predictive covariance).
        latent_variances: ``variances`` minus the label noise variance (that of the
            noise-free function, what :attr:`Prediction.latent_force_variances` holds).
        noise_variances: the label-noise variance of each row.
        kinds: row kinds (0 force, 1 energy, 2 stress).
        blocks: index of the held-out block of each row (``arange(n)`` for ``"label"``).
        block_covariances: for ``"environment"``, the predictive covariance (noise
            included) of each block, in block order; ``None`` for ``"label"``.
    """

    mode: str
    residuals: np.ndarray
    variances: np.ndarray
    latent_variances: np.ndarray
    noise_variances: np.ndarray
    kinds: np.ndarray
    blocks: np.ndarray
    block_covariances: list[np.ndarray] | None = None

    def select(self, kind: int = _ROW_FORCE) -> "LooResiduals":
        """The rows of one kind (default force rows), as a new object."""
        rows = np.flatnonzero(self.kinds == kind)
        covs = None
        if self.block_covariances is not None:
            covs = [self.block_covariances[b] for b in np.unique(self.blocks[rows])]
        return LooResiduals(self.mode, self.residuals[rows], self.variances[rows], self.latent_variances[rows],
                            self.noise_variances[rows], self.kinds[rows], self.blocks[rows], covs)


def _as_atomic_number(s: str | int) -> int:
    if isinstance(s, (bool, np.bool_)):
        raise ValueError(f"species must be chemical symbols or atomic numbers, got {s!r}")
    if isinstance(s, (int, np.integer)):
        return int(s)
    if s not in _atomic_numbers:
        raise ValueError(f"unknown chemical symbol {s!r}")
    return _atomic_numbers[s]


def model_species(species: Sequence[str | int]) -> list[int]:
    """The atomic numbers of a model's ``species`` (both model kinds), or a ValueError: an
    empty list, an unknown symbol, a repeated element, or a single string, which would be
    read letter by letter ("CO" as carbon and oxygen, "Al" as the unknown "A" and "l")."""
    if isinstance(species, str):
        raise ValueError(f"species must be a list of chemical symbols, e.g. [{species!r}], got {species!r}")
    numbers = [_as_atomic_number(s) for s in species]
    if not numbers:
        raise ValueError("species must list at least one element")
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"species must list distinct elements, got {list(species)}")
    return numbers


def model_cutoffs(cutoffs: Mapping[str, float]) -> tuple[float, float]:
    """The 2- and 3-body cutoffs (A; 0: body order off) of a model's ``cutoffs`` mapping
    (both model kinds), or a ValueError: an unknown key, no key, or a value that is not a
    finite positive number (booleans included, which Python would read as 1 A)."""
    unknown = set(cutoffs) - {"twobody", "threebody"}
    if unknown:
        raise ValueError(f"unknown cutoff keys {sorted(unknown)}; use 'twobody', 'threebody'")
    for key, value in cutoffs.items():
        positive_number(f"cutoff {key!r}", value, allow_none=False)  # in Angstrom
    if not cutoffs:
        raise ValueError("give at least one cutoff: {'twobody': r2, 'threebody': r3}")
    return float(cutoffs.get("twobody", 0.0)), float(cutoffs.get("threebody", 0.0))


def check_train_arguments(optimize: Any, restarts: Any, max_iterations: Any, seed: Any) -> None:
    """ValueError naming the first bad argument of ``train`` (both model kinds): ``optimize``
    true or false, ``restarts`` and ``max_iterations`` non-negative integers, ``seed`` a
    non-negative integer or None (numpy's random generator takes no negative seed)."""
    flag("optimize", optimize)
    count("restarts", restarts, 0)
    count("max_iterations", max_iterations, 0)
    count("seed", seed, 0, allow_none=True)


def label_flag(value: Any) -> Any:
    """``value`` with a numpy bool made a Python bool, so that the ``is True`` / ``is
    False`` tests of the label arguments (``forces``, ``energy``, ``stress``: a flag or the
    label itself) read a flag taken from a boolean array as the flag, not as a 1 or 0 eV
    label."""
    return bool(value) if isinstance(value, np.bool_) else value


def _checked_bounds(bounds: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """``bounds`` as float pairs, or an :class:`otfgp.InputError` naming the first bound that
    is not 0 < lower < upper < inf (the optimiser works in log space between them; an
    inverted or empty range would otherwise surface later as a misleading kernel error)."""
    out: dict[str, tuple[float, float]] = {}
    for name, pair in bounds.items():
        try:
            lo, hi = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise _core.InputError(f"bounds of {name} must be a pair (lower, upper), got {pair!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo > 0):
            raise _core.InputError(f"bounds of {name} must be positive and finite, got ({lo:g}, {hi:g})")
        if lo > hi:
            raise _core.InputError(f"bounds of {name} are inverted: lower {lo:g} > upper {hi:g}")
        if lo == hi:
            raise _core.InputError(f"bounds of {name} have zero width ({lo:g}, {hi:g}): give lower < upper "
                                   f"(to keep every hyperparameter fixed, train(optimize=False))")
        out[name] = (lo, hi)
    return out


def _label_atom_indices(atom_indices: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    """The sorted atom indices of :meth:`GaussianProcess.add_training_data` (see there),
    or an :class:`otfgp.InputError` naming what is wrong with them."""
    if atom_indices is None:
        return np.arange(n)
    raw = np.asarray(atom_indices)
    if raw.dtype == np.bool_:
        if raw.shape != (n,):
            raise _core.InputError(f"a boolean atom_indices mask needs one entry per atom, shape ({n},), "
                                   f"got {raw.shape}")
        return np.flatnonzero(raw)
    if raw.ndim != 1:
        raise _core.InputError(f"atom_indices must be a one-dimensional sequence of atom indices, "
                               f"got shape {raw.shape}")
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(raw.dtype, np.integer):
        # never truncate 2.7 to 2: a float index is a bug upstream, not an atom
        raise _core.InputError(f"atom_indices must be integers, got {raw.dtype} values "
                               f"(first: {raw[0]!r})")
    bad = raw[(raw < 0) | (raw >= n)]
    if bad.size:
        raise _core.InputError(f"atom_indices out of range for {n} atoms: {bad[:5].tolist()} "
                               f"(indices run 0..{n - 1}; negative ones do not count from the end)")
    unique, counts = np.unique(raw, return_counts=True)
    if unique.size != raw.size:
        raise _core.InputError(f"atom_indices lists atoms {unique[counts > 1][:5].tolist()} more than once")
    return unique.astype(np.int64)




def energy_stress_labels(atoms: Atoms, energy: bool | float | None,
                         stress: bool | np.ndarray | None) -> tuple[float | None, np.ndarray | None]:
    """The energy and the Voigt stress (xx, yy, zz, yz, xz, xy) labels that
    ``add_training_data`` is given (``True``: the atoms' calculator's; ``False``/``None``:
    none), as both model kinds read them.

    Raises:
        otfgp._core.InputError: a stress of neither 6 components nor shape (3, 3).
    """
    energy, stress = label_flag(energy), label_flag(stress)
    e = None
    if energy is not False and energy is not None:
        e = float(atoms.get_potential_energy()) if energy is True else float(energy)
    s = None
    if stress is not False and stress is not None:
        raw = np.asarray(atoms.get_stress(voigt=True) if stress is True else stress, dtype=float)
        if raw.shape == (3, 3):
            raw = raw[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        if raw.shape != (6,):
            raise _core.InputError(f"stress must have 6 Voigt components or shape (3, 3), got {raw.shape}")
        s = raw
    return e, s

def check_hyperparameter_names(d: Mapping[str, Any]) -> None:
    """ValueError naming the keys of ``d`` that are not hyperparameter names (both model
    kinds take hyperparameters, bounds and priors by these names)."""
    bad = set(d) - set(HYPERPARAMETER_NAMES)
    if bad:
        raise ValueError(f"unknown hyperparameters {sorted(bad)}; known: {list(HYPERPARAMETER_NAMES)}")


def hyperparameter_values(d: Mapping[str, Any]) -> dict[str, float]:
    """``d`` as floats (both model kinds), or a ValueError naming an unknown name or a value
    that is not a finite positive number: a string such as ``"1"`` or a boolean is refused,
    not converted."""
    check_hyperparameter_names(d)
    return {k: float(positive_number(f"hyperparameter {k}", v, allow_none=False)) for k, v in d.items()}

def refit_offsets(current: np.ndarray, compositions: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Per-species energy offsets fitted by least squares to ``residuals`` (reference energy
    minus the model's energy without offsets, one per structure) on the structures'
    ``compositions`` (atoms per species); a species in none of them keeps its ``current``
    offset, so that references for some structures never reset what others set."""
    offsets = np.array(current, dtype=float)
    present = compositions.sum(axis=0) > 0 if len(compositions) else np.zeros(len(offsets), dtype=bool)
    if present.any():
        offsets[present] = scipy.linalg.lstsq(compositions[:, present], residuals)[0]
    return offsets


class GaussianProcess:
    """Bayesian 2+3-body force field (FLARE model) with analytic mean and variance.

    Args:
        species: chemical symbols or atomic numbers the model knows.
        cutoffs: ``{"twobody": r2, "threebody": r3}`` in Angstrom; leave out a key to
            disable that body order.
        hyperparameters: any subset of :data:`HYPERPARAMETER_NAMES`; others default.
        bounds: optimisation bounds overriding :data:`DEFAULT_BOUNDS` (with
            ``priors=None``: :data:`MAXIMUM_LIKELIHOOD_BOUNDS`).
        priors: hyperparameter priors for maximum a posteriori training
            (:class:`otfgp.priors.Priors`, default :data:`otfgp.priors.DEFAULT_PRIORS`), or
            ``None`` for pure maximum likelihood. Not stored in model files.
        baseline: an analytic prior (:mod:`otfgp.baselines`: ``Morse``, ``LennardJones``,
            ``ZBL``), an ASE calculator as the prior (a
            :class:`~otfgp.baselines.CalculatorBaseline`, a calculator instance or a spec
            string such as ``"emt"`` or ``"chgnet"``; Python only) or ``None``. The GP then
            learns label - baseline and predicts baseline + GP; stored in model files (see
            ``docs/baselines.md``). A model has at most one baseline.

    The energy is a sum of pair energies over pairs closer than r2 and triplet energies
    over triangles whose three sides are shorter than r3, each a Gaussian process with a
    squared-exponential kernel over the distances (summed over species-preserving
    permutations) times the quadratic cutoff (r_c - r)^2. Forces and stresses are exact
    derivatives of that energy, so the mean force field is conservative.
    """

    # Class-level defaults so that models built without __init__ (load, copy) train with
    # the default priors; __init__ and copy() set them per instance.
    priors: Priors | None = DEFAULT_PRIORS
    # (n_labels, priors, resolved priors) of the last prior_medians() call
    _prior_cache: tuple[int, Priors, dict[str, LogNormal]] | None = None
    _changing_model = False  # inside a _dropping_maps block

    def __init__(
        self,
        species: Sequence[str | int],
        cutoffs: Mapping[str, float],
        hyperparameters: Mapping[str, float] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        priors: Priors | None = DEFAULT_PRIORS,
        baseline: "baselines.Baseline | baselines.CalculatorBaseline | str | Any | None" = None,
    ) -> None:
        numbers = model_species(species)
        r2, r3 = model_cutoffs(cutoffs)
        self._model = _core.Model(numbers, r2, r3)
        self._calc_baseline: baselines.CalculatorBaseline | None = None
        if baseline is not None:
            if hasattr(baseline, "to_core"):
                self._model.baseline = baseline.to_core()
            elif isinstance(baseline, (str, baselines.CalculatorBaseline)) or hasattr(baseline, "get_potential_energy"):
                self._calc_baseline = baselines.calculator_baseline(baseline)
                self._model.external_baseline = self._calc_baseline.name
            else:
                raise TypeError(f"baseline must be an otfgp.baselines Morse, LennardJones, ZBL or "
                                f"CalculatorBaseline, an ASE calculator or a spec string, "
                                f"got {type(baseline).__name__}")
        if priors is not None and not isinstance(priors, Priors):
            raise TypeError(f"priors must be an otfgp.priors.Priors or None, got {type(priors).__name__}")
        self.priors = priors
        self.bounds: dict[str, tuple[float, float]] = dict(
            DEFAULT_BOUNDS if priors is not None else MAXIMUM_LIKELIHOOD_BOUNDS)
        if bounds:
            self._check_names(bounds)
            self.bounds.update(_checked_bounds(bounds))
        hyp = dict(DEFAULT_HYPERPARAMETERS)
        if hyperparameters:
            hyp.update(hyperparameter_values(hyperparameters))
        self._model.hyperparameters = [hyp[k] for k in HYPERPARAMETER_NAMES]
        self._reset_cache()
        self.last_optimization: OptimizationReport | None = None

    # ----------------------------------------------------------------- properties
    _check_names = staticmethod(check_hyperparameter_names)

    @property
    def species(self) -> list[str]:
        """Chemical symbols of the species the model knows."""
        return [chemical_symbols[z] for z in self._model.atomic_numbers]

    @property
    def baseline(self) -> "baselines.Baseline | baselines.CalculatorBaseline | None":
        """The baseline the GP is trained on top of (analytic or a calculator), or ``None``."""
        return self._calc_baseline or baselines.from_core(self._model.baseline)

    # A model without __init__ (old pickles) has no calculator baseline.
    _calc_baseline: "baselines.CalculatorBaseline | None" = None

    def _baseline_rows(self, atoms: Atoms, force_atoms: np.ndarray, energy: float | None,
                       stress: np.ndarray | None) -> np.ndarray | None:
        """The calculator baseline's value of each label row of a structure (row order of
        the core: forces of force_atoms, energy, stress), or None without one."""
        if self._calc_baseline is None:
            return None
        b = self._calc_baseline.evaluate(atoms, stress=stress is not None)
        rows = [b["forces"][force_atoms].ravel()]
        if energy is not None:
            rows.append([b["energy"]])
        if stress is not None:
            rows.append(b["stress"])
        return np.concatenate(rows).astype(float)

    @property
    def cutoffs(self) -> dict[str, float]:
        """The 2- and 3-body cutoffs in Angstrom (absent keys: body order disabled)."""
        out = {}
        if self._model.cutoff2 > 0:
            out["twobody"] = self._model.cutoff2
        if self._model.cutoff3 > 0:
            out["threebody"] = self._model.cutoff3
        return out

    @property
    def hyperparameters(self) -> dict[str, float]:
        """Current hyperparameters by name (see :data:`HYPERPARAMETER_NAMES`)."""
        return dict(zip(HYPERPARAMETER_NAMES, self._model.hyperparameters))

    @hyperparameters.setter
    def hyperparameters(self, values: Mapping[str, float]) -> None:
        hyp = self.hyperparameters
        hyp.update(hyperparameter_values(values))
        with self._dropping_maps("setting hyperparameters"):
            self._model.hyperparameters = [hyp[k] for k in HYPERPARAMETER_NAMES]
        self._chol = None  # the solution no longer matches

    @contextlib.contextmanager
    def _dropping_maps(self, change: str) -> Iterator[None]:
        """Log when ``change`` drops the maps. The core drops them whenever the solution
        they tabulate stops being current (new data, hyperparameters, retraining), so a
        model, and every file saved from it, never carries stale maps."""
        if self._changing_model:  # nested (training sets hyperparameters): the outer one logs
            yield
            return
        was_mapped = self.mapped
        self._changing_model = True
        try:
            yield
        finally:
            self._changing_model = False
        if was_mapped and not self.mapped:
            log.info("%s dropped the maps (they tabulated the previous solution); "
                     "call map() after train() to map again", change)

    @property
    def energy_offsets(self) -> dict[str, float]:
        """Per-species energy offsets: fitted to the energy labels, or without them the
        reference set by :meth:`set_energy_reference` (0 if neither)."""
        return dict(zip(self.species, self._model.energy_offsets))

    @property
    def n_labels(self) -> int:
        """Number of scalar training labels (force components, energies, stresses)."""
        return self._model.n_labels

    @property
    def n_training_environments(self) -> int:
        """Number of atomic environments whose forces are training labels."""
        return self._model.n_force_environments

    @property
    def n_training_structures(self) -> int:
        """Number of labelled structures in the training set."""
        return self._model.n_structures

    @property
    def trained(self) -> bool:
        """True when the model can predict (training data and a current solution)."""
        return self._model.trained

    @property
    def core(self) -> _core.Model:
        """The underlying C++ model (advanced use and tests)."""
        return self._model

    # ------------------------------------------------------------------ data
    def _structure_arrays(self, atoms: Atoms) -> tuple[np.ndarray, list[bool], np.ndarray, np.ndarray]:
        if not isinstance(atoms, Atoms):
            raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
        known = {z: i for i, z in enumerate(self._model.atomic_numbers)}
        numbers = atoms.get_atomic_numbers()
        missing = sorted({int(z) for z in numbers} - set(known))
        if missing:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in missing)
            raise _core.InputError(f"unknown species {names}; the model knows {', '.join(self.species)}")
        species = np.array([known[int(z)] for z in numbers], dtype=np.int32)
        positions = np.asarray(atoms.positions, dtype=float)
        cell = np.asarray(atoms.cell.array, dtype=float)
        if not np.all(np.isfinite(positions)):
            bad = int(np.argwhere(~np.isfinite(positions))[0][0])
            raise _core.InputError(f"position of atom {bad} is not finite (NaN or inf)")
        if not np.all(np.isfinite(cell)):
            raise _core.InputError("cell contains NaN or inf")
        return cell, [bool(p) for p in atoms.pbc], positions, species

    def add_training_data(
        self,
        atoms: Atoms,
        forces: bool | np.ndarray = True,
        energy: bool | float = False,
        stress: bool | np.ndarray = False,
        atom_indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Add a labelled structure to the training set (the model then needs :meth:`train`).

        Args:
            atoms: the structure. With ``True`` flags the labels come from its attached
                calculator (``get_forces``, ``get_potential_energy``, ``get_stress``).
            forces: ``True`` (the calculator's forces, without the constraints applied: a
                fixed atom's label is its real force, not 0), ``False`` (no force labels) or
                an array of the forces on *all* atoms, shape (n_atoms, 3), row i the force
                on atom i, whatever ``atom_indices`` is.
                A shorter array is an error: a (k, 3) array of the labelled atoms' rows is
                ambiguous (for k = n_atoms a permutation would silently go to the wrong
                atoms).
            energy: ``True``, ``False`` or the energy in eV.
            stress: ``True``, ``False`` or the stress (6 Voigt components or 3 x 3), ASE sign.
            atom_indices: which rows of the forces become labels: ``None`` (all atoms),
                distinct integers in 0..n_atoms-1 (in any order; they are stored sorted, so
                the order does not change the model) or a boolean mask of length n_atoms.
                Floats, negative, repeated or out-of-range indices are an
                :class:`otfgp.InputError`, and so are indices without force labels.
        """
        cell, pbc, positions, species = self._structure_arrays(atoms)
        n = len(atoms)
        forces = label_flag(forces)
        with_forces = forces is not False and forces is not None
        if atom_indices is not None and not with_forces:
            raise _core.InputError("atom_indices selects force labels, but forces=False: "
                                   "pass forces=True (or an array) or drop atom_indices")
        idx = _label_atom_indices(atom_indices, n)
        force_atoms = np.zeros(0, dtype=np.int32)
        force_values = np.zeros((0, 3))
        if with_forces:
            # the labeller's forces on every atom: with constraints, get_forces() zeroes fixed atoms'
            f = np.asarray(atoms.get_forces(apply_constraint=False) if forces is True else forces, dtype=float)
            if f.shape != (n, 3):
                raise _core.InputError(
                    f"forces must have shape ({n}, 3), one row per atom of the structure (row i: "
                    f"atom i), got {f.shape}; atom_indices selects the rows that become labels")
            force_atoms, force_values = idx.astype(np.int32), f[idx]
        e, s = energy_stress_labels(atoms, energy, stress)
        prior = self._baseline_rows(atoms, force_atoms, e, s)  # once: stored with the raw labels
        with self._dropping_maps("adding training data"):
            self._model.add_training_structure(cell, pbc, positions, species, force_atoms, force_values, e, s,
                                               prior)

    def training_structure(self, index: int) -> dict[str, Any]:
        """The ``index``-th labelled structure: ``atoms`` (with its labels attached as a
        single-point calculator), ``force_atoms``, ``forces``, ``energy``, ``stress``."""
        from ase.calculators.singlepoint import SinglePointCalculator

        d = self._model.training_structure(index)
        numbers = np.asarray(self._model.atomic_numbers)[np.asarray(d["species"], dtype=int)]
        atoms = Atoms(numbers=numbers, positions=d["positions"], cell=d["cell"], pbc=d["pbc"])
        results: dict[str, Any] = {}
        if d["energy"] is not None:
            results["energy"] = d["energy"]
        if d["stress"] is not None:
            results["stress"] = d["stress"]
        if len(d["force_atoms"]) == len(atoms):
            forces = np.zeros((len(atoms), 3))
            forces[np.asarray(d["force_atoms"])] = d["forces"]
            results["forces"] = forces
        atoms.calc = SinglePointCalculator(atoms, **results)
        return {"atoms": atoms, "force_atoms": np.asarray(d["force_atoms"], dtype=int),
                "forces": d["forces"], "energy": d["energy"], "stress": d["stress"]}

    def training_frames(self) -> list[Atoms]:
        """The training set as labelled frames, one per training structure, in order: a
        single-point calculator holds the trained labels only (``forces`` with NaN rows for
        atoms whose forces are not labels, ``energy`` and ``stress`` when trained), and the
        boolean per-atom array ``force_trained`` says which atoms' forces are labels.
        :meth:`add_training_data` of these frames (``forces`` and ``atom_indices`` =
        ``force_trained``) rebuilds the same training set; ``otfgp train`` does that."""
        from ase.calculators.singlepoint import SinglePointCalculator

        frames = []
        for i in range(self.n_training_structures):
            d = self._model.training_structure(i)
            numbers = np.asarray(self._model.atomic_numbers)[np.asarray(d["species"], dtype=int)]
            atoms = Atoms(numbers=numbers, positions=d["positions"], cell=d["cell"], pbc=d["pbc"])
            mask = np.zeros(len(atoms), dtype=bool)
            mask[np.asarray(d["force_atoms"], dtype=int)] = True
            atoms.arrays[FORCE_TRAINED] = mask
            results: dict[str, Any] = {}
            if mask.any():
                forces = np.full((len(atoms), 3), np.nan)  # unknown, never a zero label
                forces[mask] = d["forces"]
                results["forces"] = forces
            if d["energy"] is not None:
                results["energy"] = float(d["energy"])
            if d["stress"] is not None:
                results["stress"] = np.asarray(d["stress"], dtype=float)
            atoms.calc = SinglePointCalculator(atoms, **results)
            frames.append(atoms)
        return frames

    def export_training_data(self, path: str | os.PathLike) -> int:
        """Write the training set to ``path`` as extended XYZ (:meth:`training_frames`: per
        atom ``forces`` and ``force_trained``, per frame ``energy`` and ``stress`` when they
        are labels); returns the number of frames. ``otfgp train`` reads it
        back into the same training set (ASE's extxyz writer keeps positions and forces to
        8 decimals, energies and stresses in full)."""
        from ase.io import write

        frames = self.training_frames()
        if not frames:
            raise _core.NotTrainedError("no training data to export")
        write(os.fspath(path), frames, format="extxyz")
        return len(frames)

    # ------------------------------------------------------------- likelihood
    def _reset_cache(self) -> None:
        self._K2 = self._K3 = self._dK2 = self._dK3 = None
        self._cache_ells: tuple[float, float] | None = None
        self._force_cache: tuple | None = None
        self._chol: np.ndarray | None = None
        self._chol_key: tuple | None = None

    def _kernel_parts(self, ell2: float, ell3: float, grad: bool) -> tuple[np.ndarray, ...]:
        """Unscaled K2, K3 (and d/d ell) for all labels, cached by length scales."""
        n = self.n_labels
        fresh = (
            self._cache_ells == (ell2, ell3)
            and self._K2 is not None
            and self._K2.shape[0] == n
            and (not grad or self._dK2 is not None)
        )
        if not fresh:
            # At trial length scales without setting them on the model, which would
            # invalidate its current solution (and maps).
            g = self._model.n_groups
            K2, K3, dK2, dK3 = self._model.covariance(0, g, 0, g, grad, ell2=ell2, ell3=ell3)
            self._K2, self._K3 = K2, K3
            self._dK2, self._dK3 = (dK2, dK3) if grad else (None, None)
            self._cache_ells = (ell2, ell3)
        return self._K2, self._K3, self._dK2, self._dK3

    def noise_diagonal(self, hyperparameters: Mapping[str, float] | None = None) -> np.ndarray:
        """Label-noise variances of the training labels, one per label row (force rows
        sigma_n^2, energy rows noise_energy^2, stress rows noise_stress^2), at the given (or
        the current) hyperparameters: the diagonal added to the kernel matrix."""
        hyp = self.hyperparameters if hyperparameters is None else hyperparameters
        kinds = np.asarray(self._model.row_kinds)
        noise = np.choose(kinds, [hyp["noise_force"], hyp["noise_energy"], hyp["noise_stress"]])
        return noise**2

    @property
    def has_energy_labels(self) -> bool:
        """True if the model trains on energy labels (they then fit the energy offsets)."""
        return bool(np.any(np.asarray(self._model.row_kinds) == _ROW_ENERGY))

    def set_energy_reference(self, energies: Sequence[float | None]) -> dict[str, float]:
        """Fit the per-species energy offsets of a model trained without energy labels to
        reference energies of its own training structures, and return them.

        A force-only GP fixes its energy only up to a constant per local-energy function,
        which moves at every retrain (a potential energy that jumps). Least squares of
        ``energies[i] - E_GP(structure i)`` on the structures' compositions pins the energy
        to the labeller's reference at the cost of a prediction per structure, where energy
        labels in the GP would cost their covariance with every cluster of every frame. The
        forces, stresses and variances do not change, nor do the solution and maps.

        Args:
            energies: one entry per training structure (:meth:`training_structure` order),
                the labeller's energy in eV or ``None`` (not used). A species in none of
                the used structures keeps its offset (e.g. one a starting model learnt,
                seen only in that model's own structures).

        Raises:
            ValueError: the model trains on energy labels (its offsets are fitted to them),
                is not trained, or ``energies`` has the wrong length.
        """
        if self.has_energy_labels:
            raise ValueError("this model trains on energy labels, which fit its energy offsets; "
                             "set_energy_reference is for models without them")
        if not self.trained:
            raise ValueError("set_energy_reference needs a trained model (call train() first)")
        n = self.n_training_structures
        if len(energies) != n:
            raise ValueError(f"energies needs one entry per training structure ({n}), got {len(energies)}")
        for i, e in enumerate(energies):
            if e is not None and not math.isfinite(float(e)):
                raise ValueError(f"reference energy of training structure {i} is not finite: {e!r}")
        used = [i for i, e in enumerate(energies) if e is not None]
        current = np.asarray(self._model.energy_offsets, dtype=float)
        A = self._compositions(used)
        targets = []
        for i, counts in zip(used, A):
            # the GP's own energy: the prediction without the current offsets
            gp_energy = self.predict(self.training_structure(i)["atoms"], variance=False).energy - counts @ current
            targets.append(float(energies[i]) - float(gp_energy))
        self._model.energy_offsets = list(refit_offsets(current, A, np.array(targets)))
        return self.energy_offsets

    def _compositions(self, structures: Sequence[int] | np.ndarray) -> np.ndarray:
        """Atoms per species (columns) of the given training structures (rows)."""
        species = self._model.structure_species
        ns = len(self._model.atomic_numbers)
        return np.array([np.bincount(species[s], minlength=ns) for s in structures], dtype=float).reshape(-1, ns)

    def _fit_energy_offsets(self) -> np.ndarray:
        """Per-species energies from a least-squares fit of energy labels to composition."""
        kinds = np.asarray(self._model.row_kinds)
        rows = np.flatnonzero(kinds == _ROW_ENERGY)
        if rows.size == 0:
            return np.zeros(len(self._model.atomic_numbers))
        A = self._compositions(np.asarray(self._model.row_structures)[rows])
        y = self._model.labels[rows]
        return scipy.linalg.lstsq(A, y)[0]

    def _targets(self, offsets: np.ndarray) -> np.ndarray:
        y = np.array(self._model.labels, dtype=float)
        kinds = np.asarray(self._model.row_kinds)
        if np.any(kinds == _ROW_ENERGY):
            species = self._model.structure_species
            rows = np.flatnonzero(kinds == _ROW_ENERGY)
            for r, s in zip(rows, np.asarray(self._model.row_structures)[rows]):
                y[r] -= float(np.sum(offsets[species[s]]))
        return y

    def _factor(self, K: np.ndarray) -> np.ndarray:
        try:
            return scipy.linalg.cholesky(K, lower=True, check_finite=True)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise KernelMatrixError(
                "the training kernel matrix is not positive definite "
                f"({exc}); increase the noise hyperparameters (noise_force is "
                f"{self.hyperparameters['noise_force']:.3g} eV/A) or remove duplicate data"
            ) from None

    def _active(self) -> list[str]:
        """Hyperparameters the data can inform (the others stay fixed)."""
        kinds = set(self._model.row_kinds)
        names = []
        if self._model.cutoff2 > 0:
            names += ["sigma2", "ell2"]
        if self._model.cutoff3 > 0:
            names += ["sigma3", "ell3"]
        for kind, name in ((_ROW_FORCE, "noise_force"), (_ROW_ENERGY, "noise_energy"), (_ROW_STRESS, "noise_stress")):
            if kind in kinds:
                names.append(name)
        return names

    def _likelihood(self, hyp: Mapping[str, float], grad: bool, rows: np.ndarray | None = None,
                    grad_ells: bool = True) -> tuple[float, dict[str, float]]:
        """Log marginal likelihood (and gradient) of all labels, or of the label ``rows``
        alone (force rows: :meth:`_force_kernel_parts`); ``grad_ells=False`` skips the
        length-scale derivatives (their entries are then 0)."""
        if self.n_labels == 0:
            raise _core.NotTrainedError("no training data: call add_training_data() first")
        with_dk = grad and grad_ells
        if rows is None:
            K2, K3, dK2, dK3 = self._kernel_parts(hyp["ell2"], hyp["ell3"], with_dk)
            y = self._targets(self._fit_energy_offsets())
            noise = self.noise_diagonal(hyp)
            kinds = np.asarray(self._model.row_kinds)
        else:
            K2, K3, dK2, dK3 = self._force_kernel_parts(hyp["ell2"], hyp["ell3"], with_dk)
            # force rows: the energy offsets do not enter their targets
            y = np.asarray(self._model.labels, dtype=float)[rows]
            noise = self.noise_diagonal(hyp)[rows]
            kinds = np.asarray(self._model.row_kinds)[rows]
        K = hyp["sigma2"] ** 2 * K2 + hyp["sigma3"] ** 2 * K3
        K[np.diag_indices_from(K)] += noise
        L = self._factor(K)
        alpha = scipy.linalg.cho_solve((L, True), y)
        n = len(y)
        value = -0.5 * float(y @ alpha) - float(np.sum(np.log(np.diag(L)))) - 0.5 * n * math.log(2 * math.pi)
        if not grad:
            return value, {}
        Kinv = scipy.linalg.cho_solve((L, True), np.eye(n))
        W = np.outer(alpha, alpha) - Kinv
        g = {
            "sigma2": 0.5 * float(np.sum(W * K2)) * 2 * hyp["sigma2"],
            "ell2": 0.5 * float(np.sum(W * dK2)) * hyp["sigma2"] ** 2 if with_dk else 0.0,
            "sigma3": 0.5 * float(np.sum(W * K3)) * 2 * hyp["sigma3"],
            "ell3": 0.5 * float(np.sum(W * dK3)) * hyp["sigma3"] ** 2 if with_dk else 0.0,
        }
        diagW = np.diag(W)
        for kind, name in ((_ROW_FORCE, "noise_force"), (_ROW_ENERGY, "noise_energy"), (_ROW_STRESS, "noise_stress")):
            g[name] = 0.5 * float(np.sum(diagW[kinds == kind])) * 2 * hyp[name]
        return value, g

    def _force_group_runs(self) -> list[tuple[int, int]]:
        """Maximal runs [g0, g1) of consecutive label groups holding force rows (a
        structure's energy and stress rows form a group of their own)."""
        kinds = np.asarray(self._model.row_kinds)
        runs: list[tuple[int, int]] = []
        for g in range(self._model.n_groups):
            if kinds[self._model.group_row_offset(g)] != _ROW_FORCE:
                continue
            if runs and runs[-1][1] == g:
                runs[-1] = (runs[-1][0], g + 1)
            else:
                runs.append((g, g + 1))
        return runs

    def _force_kernel_parts(self, ell2: float, ell3: float, grad: bool) -> tuple[np.ndarray, ...]:
        """Unscaled K2, K3 (and d/d ell) of the force rows alone, block by block, cached by
        length scales: without the energy and stress rows, whose covariance with every
        cluster of every frame is what makes them costly."""
        key = (ell2, ell3, self.n_labels)
        cache = self._force_cache
        if cache is not None and cache[0] == key and (not grad or cache[1][2] is not None):
            return cache[1]
        runs = self._force_group_runs()
        sizes = [self._model.group_row_offset(g1) - self._model.group_row_offset(g0) for g0, g1 in runs]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        n = int(starts[-1])
        parts = [np.zeros((n, n)) for _ in range(4 if grad else 2)]
        for a, (g0, g1) in enumerate(runs):
            for b in range(a, len(runs)):
                h0, h1 = runs[b]
                blocks = self._model.covariance(g0, g1, h0, h1, grad, ell2=ell2, ell3=ell3)
                ra, rb = slice(starts[a], starts[a + 1]), slice(starts[b], starts[b + 1])
                for P, B in zip(parts, blocks):
                    P[ra, rb] = B
                    P[rb, ra] = B.T
        result = (parts[0], parts[1], parts[2] if grad else None, parts[3] if grad else None)
        self._force_cache = (key, result)
        return result

    def _hyperparameters_with(self, given: Mapping[str, float] | None) -> dict[str, float]:
        """The current hyperparameters with ``given`` (checked) in place of theirs."""
        return {**self.hyperparameters, **hyperparameter_values(given or {})}

    def log_likelihood(self, hyperparameters: Mapping[str, float] | None = None) -> float:
        """Log marginal likelihood of the training labels at the given (or current) hyperparameters."""
        hyp = self._hyperparameters_with(hyperparameters)
        return self._likelihood(hyp, grad=False)[0]

    def log_likelihood_gradient(
        self, hyperparameters: Mapping[str, float] | None = None
    ) -> tuple[float, dict[str, float]]:
        """Log marginal likelihood and its analytic gradient with respect to every hyperparameter."""
        hyp = self._hyperparameters_with(hyperparameters)
        return self._likelihood(hyp, grad=True)

    # ------------------------------------------------------------------ priors
    def prior_medians(self) -> dict[str, LogNormal]:
        """The priors of :attr:`priors` with every median concrete, for the current data.

        A ``None`` median of ``sigma2`` / ``sigma3`` (empirical Bayes) becomes the signal
        std at which that body order alone, at the median length scales, gives a prior
        variance of half the mean square label: sigma_b^2 * mean_i K_b(x_i, x_i) = <y^2> / 2
        over the force rows (energy rows, offsets removed, without forces; stress rows
        without either). Each body order may then carry all of the labels' variance within
        about one prior std; the root mean square, not the spread about the mean, because
        the GP's prior mean is zero. The result depends only on the labels, the structures
        and the length-scale medians, so repeated training on the same data is
        deterministic. It is cached until labels are added.

        Raises:
            ValueError: the model has no priors (``priors=None``).
        """
        if self.priors is None:
            raise ValueError("this model has no priors (priors=None: maximum likelihood)")
        if self.n_labels == 0:
            raise _core.NotTrainedError("no training data: call add_training_data() first")
        ells = (self.priors.ell2.median, self.priors.ell3.median)
        cache = self._prior_cache
        # labels are only ever appended, so their count and the (frozen) priors identify the state
        if cache is not None and cache[0] == self.n_labels and cache[1] == self.priors:
            return dict(cache[2])
        data: dict[str, float] = {}
        needed = [k for k in ("sigma2", "sigma3") if self.priors.get(k).median is None]
        if needed:
            if None in ells:
                raise ValueError("data-dependent signal medians need fixed length-scale medians")
            kinds = np.asarray(self._model.row_kinds)
            kind = next(k for k in (_ROW_FORCE, _ROW_ENERGY, _ROW_STRESS) if np.any(kinds == k))
            rows = kinds == kind
            y = self._targets(self._fit_energy_offsets())[rows]
            mean_square = float(np.mean(y**2))
            if mean_square <= 0.0:
                # all-zero labels carry no scale: fall back to the default starting values
                data = {k: DEFAULT_HYPERPARAMETERS[k] for k in needed}
            else:
                d2, d3 = self._unscaled_diagonal(float(ells[0]), float(ells[1]))
                for name, d in (("sigma2", d2), ("sigma3", d3)):
                    if name not in needed:
                        continue
                    mean_d = float(np.mean(d[rows]))
                    # an absent body order (no cutoff) or no clusters: its prior is never used
                    data[name] = math.sqrt(0.5 * mean_square / mean_d) if mean_d > 0 else DEFAULT_HYPERPARAMETERS[name]
        resolved = self.priors.resolve(data)
        self._prior_cache = (self.n_labels, self.priors, resolved)
        return dict(resolved)

    def _unscaled_diagonal(self, ell2: float, ell3: float) -> tuple[np.ndarray, np.ndarray]:
        """Diagonals of the unscaled K2 and K3 at the given length scales, one label group
        at a time (cheaper than the whole matrix, and the kernel cache stays untouched)."""
        d2, d3 = [], []
        for g in range(self._model.n_groups):
            # trial length scales passed, not set: setting them would drop the solution and maps
            K2, K3, _, _ = self._model.covariance(g, g + 1, g, g + 1, False, ell2=ell2, ell3=ell3)
            d2.append(np.diag(K2))
            d3.append(np.diag(K3))
        return np.concatenate(d2), np.concatenate(d3)

    def log_prior(self, hyperparameters: Mapping[str, float] | None = None) -> tuple[float, dict[str, float]]:
        """Log prior density (of the log hyperparameters) at the given (or current)
        hyperparameters and its gradient with respect to each hyperparameter.

        Only the hyperparameters the data inform (those :meth:`train` optimises) count;
        the others' gradients are 0. ``(0.0, zeros)`` for a model without priors.
        """
        hyp = self._hyperparameters_with(hyperparameters)
        if self.priors is None:
            return 0.0, {k: 0.0 for k in hyp}
        return log_prior(hyp, self.prior_medians(), self._active())

    def log_posterior(self, hyperparameters: Mapping[str, float] | None = None) -> float:
        """Log marginal likelihood plus log prior: what :meth:`train` maximises."""
        return self.log_posterior_gradient(hyperparameters, grad=False)[0]

    def log_posterior_gradient(
        self, hyperparameters: Mapping[str, float] | None = None, grad: bool = True
    ) -> tuple[float, dict[str, float]]:
        """Log posterior (up to the evidence) and its gradient with respect to every hyperparameter."""
        hyp = self._hyperparameters_with(hyperparameters)
        value, g = self._likelihood(hyp, grad=grad)
        prior, g_prior = self.log_prior(hyp)
        if not grad:
            return value + prior, {}
        return value + prior, {k: g[k] + g_prior[k] for k in g}

    # ----------------------------------------------------------------- training
    def train(
        self,
        optimize: bool = True,
        restarts: int = 0,
        max_iterations: int = 100,
        seed: int = 0,
        from_defaults: bool = True,
        length_scales_from: str = "auto",
    ) -> None:
        """Fit the model to its training data.

        Args:
            optimize: maximise the log posterior (log marginal likelihood plus the log
                prior of :attr:`priors`; the likelihood alone without priors) over the
                hyperparameters (L-BFGS-B in log space within :attr:`bounds`); otherwise
                keep them and only solve, extending the previous Cholesky factor when data
                were merely added.
            restarts: extra optimisations from random starting points within the bounds;
                the best optimum wins.
            max_iterations: L-BFGS-B iteration limit per start.
            seed: random seed for the restarts.
            from_defaults: besides the current hyperparameters, also start from
                :data:`DEFAULT_HYPERPARAMETERS` and keep the better optimum.
            length_scales_from: which labels fit the length scales. ``"all"``: every
                hyperparameter from every label. ``"forces"``: the length scales from the
                force labels alone, then the signal and noise hyperparameters from every
                label at those length scales. ``"auto"`` (default): ``"forces"`` when the
                model has force labels and energy or stress labels, else ``"all"``. Energy
                and stress labels cover every cluster of their frame, so the length-scale
                derivatives of their covariances cost O(frames^2 clusters^2) per step; the
                two stages need the full kernel matrix once (8 frames of 32 Al atoms with
                energies and stresses: 0.55 s against 13.2 s, bench/energy_training.py).
        """
        check_train_arguments(optimize, restarts, max_iterations, seed)
        if self.n_labels == 0:
            raise _core.NotTrainedError("no training data: call add_training_data() first")
        if length_scales_from not in ("auto", "all", "forces"):
            raise ValueError(f"length_scales_from must be 'auto', 'all' or 'forces', got {length_scales_from!r}")
        with self._dropping_maps("training"):
            if optimize:
                self._optimize(restarts, max_iterations, seed, from_defaults, length_scales_from)
            self._solve()

    def _optimize(self, restarts: int, max_iterations: int, seed: int, from_defaults: bool = True,
                  length_scales_from: str = "auto") -> None:
        names = self._active()
        row_kinds = np.asarray(self._model.row_kinds)
        kinds = set(row_kinds.tolist())
        has_structure_rows = bool(kinds - {_ROW_FORCE})
        if length_scales_from == "forces" and _ROW_FORCE not in kinds:
            raise ValueError("length_scales_from='forces' needs force labels; the model has none")
        split = _ROW_FORCE in kinds and has_structure_rows and length_scales_from in ("auto", "forces")
        if not split:
            hyp, report = self._maximise(names, restarts, max_iterations, seed, from_defaults)
        else:
            # Two stages (docs/hyperparameters.md): the length scales from the force labels
            # alone, whose kernel derivatives are cheap; then, at those length scales, the
            # signal and noise hyperparameters from every label, which needs the full kernel
            # matrix once and only Cholesky factors after that.
            ells = [k for k in names if k in ("ell2", "ell3")]
            force_names = [k for k in names if k in ("sigma2", "ell2", "sigma3", "ell3", "noise_force")]
            rows = np.flatnonzero(row_kinds == _ROW_FORCE)
            hyp1, first = self._maximise(force_names, restarts, max_iterations, seed, from_defaults, rows=rows)
            base = self.hyperparameters
            base.update({k: hyp1[k] for k in force_names})
            rest = [k for k in names if k not in ells]
            hyp, second = self._maximise(rest, restarts, max_iterations, seed, from_defaults, base=base)
            report = OptimizationReport(
                log_likelihood=second.log_likelihood, iterations=first.iterations + second.iterations,
                converged=first.converged and second.converged,
                message=f"length scales: {first.message}; others: {second.message}",
                abnormal=first.abnormal or second.abnormal,
                at_bounds={**{k: v for k, v in first.at_bounds.items() if k in ells}, **second.at_bounds},
                log_prior=second.log_prior)
        self.hyperparameters = hyp
        self.last_optimization = report
        for name, side in report.at_bounds.items():
            log.warning("hyperparameter optimisation: %s = %.4g is at its %s bound %s; the bound, "
                        "not the data, sets it", name, hyp[name], side, self.bounds[name])
        if report.abnormal:
            log.warning("hyperparameter optimisation stopped abnormally: %s", report.message)

    def _maximise(self, names: list[str], restarts: int, max_iterations: int, seed: int, from_defaults: bool,
                  rows: np.ndarray | None = None, base: dict[str, float] | None = None,
                  ) -> tuple[dict[str, float], OptimizationReport]:
        """Maximise the log posterior of all labels (or of ``rows``) over ``names``, the
        other hyperparameters held at ``base`` (default: the current ones)."""
        base = self.hyperparameters if base is None else dict(base)
        grad_ells = "ell2" in names or "ell3" in names
        _checked_bounds({k: self.bounds[k] for k in names})  # `bounds` is public and mutable
        # the data-dependent prior centres, once per optimisation (they depend on the data only)
        priors = self.prior_medians() if self.priors is not None else None
        lo = np.log([self.bounds[k][0] for k in names])
        hi = np.log([self.bounds[k][1] for k in names])
        span = hi - lo

        # Optimise unconstrained u with log(theta) = lo + span * sigmoid(u). Without box
        # constraints L-BFGS-B normalises its first step; with them it takes a full
        # gradient step, which here jumps straight to absurd hyperparameters.
        def to_theta(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            sig = 0.5 * (1.0 + np.tanh(0.5 * u))  # overflow-free logistic
            return np.exp(lo + span * sig), span * sig * (1.0 - sig)

        def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
            theta, dlog_du = to_theta(u)
            hyp = dict(base)
            hyp.update(zip(names, theta))
            try:
                value, g = self._likelihood(hyp, grad=True, rows=rows, grad_ells=grad_ells)
            except KernelMatrixError:
                # Not positive definite this far out: report a much worse value so the
                # line search steps back.
                return 1e10, np.zeros_like(u)
            if priors is not None:
                p_value, p_grad = log_prior(hyp, priors, names)
                value += p_value
                g = {k: g[k] + p_grad[k] for k in g}
            return -value, -np.array([g[k] * hyp[k] for k in names]) * dlog_du

        def to_u(log_theta: np.ndarray) -> np.ndarray:
            frac = np.clip((log_theta - lo) / span, 1e-6, 1 - 1e-6)
            return np.log(frac / (1 - frac))

        # A warm start sitting on a bound would stay there (the logistic map is flat there),
        # so pull it inside; and also start from the defaults, keeping the better optimum:
        # warm starts alone were seen to stay stuck at sigma3 ~ 1e-5 (docs/hyperparameters.md) with a log likelihood
        # hundreds of units below that of a cold start on the same data.
        margin = 0.05 * span
        warm = np.clip(np.log([base[k] for k in names]), lo + margin, hi - margin)
        starts = [to_u(warm)]
        if from_defaults:
            cold = np.clip(np.log([DEFAULT_HYPERPARAMETERS[k] for k in names]), lo + margin, hi - margin)
            if not np.allclose(cold, warm):
                starts.append(to_u(cold))
        rng = np.random.default_rng(seed)
        starts += [to_u(rng.uniform(lo, hi)) for _ in range(restarts)]
        best = None
        for u0 in starts:
            res = minimize_hyperparameters(objective, u0, max_iterations)
            log.info("hyperparameter optimisation (%s): -log %s = %.6g after %d iterations (%s)",
                     ", ".join(names), "L" if priors is None else "(L p)", res.fun, res.nit, res.message)
            if best is None or res.fun < best.fun:
                best = res
        assert best is not None
        log.debug("hyperparameter optimisation: best of %d start(s): %s", len(starts),
                  dict(zip(names, (float(v) for v in to_theta(best.x)[0]))))
        if best.fun >= 1e10:
            raise KernelMatrixError("no hyperparameters within the bounds give a positive definite kernel matrix; raise the noise bounds")
        theta = to_theta(best.x)[0]
        hyp = dict(base)
        hyp.update(zip(names, theta))
        frac = (np.log(theta) - lo) / span
        at_bounds = {k: ("lower" if f < AT_BOUND_FRACTION else "upper")
                     for k, f in zip(names, frac) if f < AT_BOUND_FRACTION or f > 1 - AT_BOUND_FRACTION}
        prior_value = log_prior(hyp, priors, names)[0] if priors is not None else 0.0
        message, converged, abnormal = exit_state(best)
        report = OptimizationReport(
            log_likelihood=-float(best.fun) - prior_value, iterations=int(best.nit),
            converged=converged, message=message, abnormal=abnormal, at_bounds=at_bounds,
            log_prior=prior_value)
        return hyp, report

    def _solve(self) -> None:
        hyp = self.hyperparameters
        offsets = self._fit_energy_offsets()
        key = (tuple(hyp.values()), tuple(offsets))
        n = self.n_labels
        noise = self.noise_diagonal(hyp)
        L_old = self._chol
        n_old = 0 if L_old is None else L_old.shape[0]
        if L_old is not None and self._chol_key == key and 0 < n_old < n:
            L = self._extend_cholesky(L_old, hyp, noise)
        else:
            K2, K3, _, _ = self._kernel_parts(hyp["ell2"], hyp["ell3"], grad=False)
            K = hyp["sigma2"] ** 2 * K2 + hyp["sigma3"] ** 2 * K3
            K[np.diag_indices_from(K)] += noise
            L = self._factor(K)
        log.debug("solved for %d labels (%s Cholesky factor)", n,
                  "extended" if L_old is not None and self._chol_key == key and 0 < n_old < n else "new")
        y = self._targets(offsets)
        alpha = scipy.linalg.cho_solve((L, True), y)
        if self.has_energy_labels:
            self._model.energy_offsets = list(offsets)
        # else: the offsets are only an energy reference (set_energy_reference); keep them
        self._model.hyperparameters = [hyp[k] for k in HYPERPARAMETER_NAMES]
        self._model.set_solution(alpha, L)
        self._chol, self._chol_key = L, key

    def _extend_cholesky(self, L11: np.ndarray, hyp: Mapping[str, float], noise: np.ndarray) -> np.ndarray:
        """Block update of the Cholesky factor for appended labels (no hyperparameter change)."""
        n_old = L11.shape[0]
        groups = self._model.n_groups
        g_old = next(g for g in range(groups + 1) if self._model.group_row_offset(g) == n_old)
        A2, A3, _, _ = self._model.covariance(g_old, groups, 0, g_old, False)
        B2, B3, _, _ = self._model.covariance(g_old, groups, g_old, groups, False)
        s2, s3 = hyp["sigma2"] ** 2, hyp["sigma3"] ** 2
        K21 = s2 * A2 + s3 * A3
        K22 = s2 * B2 + s3 * B3
        K22[np.diag_indices_from(K22)] += noise[n_old:]
        L21 = scipy.linalg.solve_triangular(L11, K21.T, lower=True).T
        L22 = self._factor(K22 - L21 @ L21.T)
        n = self.n_labels
        L = np.zeros((n, n))
        L[:n_old, :n_old] = L11
        L[n_old:, :n_old] = L21
        L[n_old:, n_old:] = L22
        # Keep the unscaled kernel cache consistent if it is at these length scales.
        if self._cache_ells == (hyp["ell2"], hyp["ell3"]) and self._K2 is not None and self._K2.shape[0] == n_old:
            self._K2 = np.block([[self._K2, A2.T], [A2, B2]])
            self._K3 = np.block([[self._K3, A3.T], [A3, B3]])
            self._dK2 = self._dK3 = None
        return L

    # ------------------------------------------------------------ leave-one-out
    def label_blocks(self) -> np.ndarray:
        """Block index of every label row for leave-one-environment-out: the three force
        components of one atom form a block, an energy label is a block of its own and the
        six stress components of a structure form one block."""
        kinds = np.asarray(self._model.row_kinds)
        structs = np.asarray(self._model.row_structures)
        blocks = np.empty(len(kinds), dtype=np.int64)
        b, i, n = 0, 0, len(kinds)
        while i < n:
            if kinds[i] == _ROW_FORCE:
                # rows are grouped per structure: all force rows (3 per atom), energy, stress
                size = 3
            elif kinds[i] == _ROW_STRESS:
                size = 6
            else:
                size = 1
            if i + size > n or np.any(kinds[i:i + size] != kinds[i]) or np.any(structs[i:i + size] != structs[i]):
                raise RuntimeError("unexpected label row layout")  # pragma: no cover
            blocks[i:i + size] = b
            b += 1
            i += size
        return blocks

    def _inverse_kernel(self) -> tuple[np.ndarray, np.ndarray]:
        """K^-1 and alpha = K^-1 y at the current solution (the stored Cholesky factor)."""
        if not self.trained:
            raise _core.NotTrainedError("the model has no current solution: call train() first")
        hyp = self.hyperparameters
        n = self.n_labels
        L = self._chol
        if L is None or L.shape[0] != n:
            K2, K3, _, _ = self._kernel_parts(hyp["ell2"], hyp["ell3"], grad=False)
            K = hyp["sigma2"] ** 2 * K2 + hyp["sigma3"] ** 2 * K3
            K[np.diag_indices_from(K)] += self.noise_diagonal(hyp)
            L = self._factor(K)
        Kinv = scipy.linalg.cho_solve((L, True), np.eye(n))
        Kinv = 0.5 * (Kinv + Kinv.T)
        y = self._targets(np.asarray(self._model.energy_offsets, dtype=float))
        alpha = scipy.linalg.cho_solve((L, True), y)
        return Kinv, alpha

    def loo_residuals(self, mode: str = "label") -> LooResiduals:
        """Leave-one-out residuals and predictive variances of every training label, in
        closed form at the current hyperparameters and solution (no refits).

        ``mode="label"`` is leave-one-*label*-out (Rasmussen & Williams eq. 5.12): with
        alpha = K^-1 y, mu_i = y_i - alpha_i / [K^-1]_ii and var_i = 1 / [K^-1]_ii (noise
        included). The other two force components of the same atom stay in the training
        set, and they are strongly correlated with the held-out one, so these residuals are
        optimistic as a stand-in for an unseen atom.

        ``mode="environment"`` is leave-one-*environment*-out: the block B of an atom's
        three force rows (see :meth:`label_blocks`) is held out together; the residual block
        is [K^-1]_BB^-1 alpha_B and its predictive covariance [K^-1]_BB^-1. This is what a
        prediction on an atom outside the training set faces, so the calibration
        (:mod:`otfgp.calibration`) is fitted on these.

        The energy offsets are held at their current values (not refitted without the
        held-out energy); energy rows are residuals of y minus the offsets.
        """
        if mode not in ("label", "environment"):
            raise ValueError(f"mode must be 'label' or 'environment', got {mode!r}")
        Kinv, alpha = self._inverse_kernel()
        noise = self.noise_diagonal()
        kinds = np.asarray(self._model.row_kinds)
        n = len(alpha)
        if mode == "label":
            d = np.diag(Kinv).copy()
            var = 1.0 / d
            res = alpha / d
            return LooResiduals("label", res, var, var - noise, noise, kinds, np.arange(n), None)
        blocks = self.label_blocks()
        res = np.empty(n)
        var = np.empty(n)
        covs: list[np.ndarray] = []
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        ends = np.r_[starts[1:], n]
        for a, b in zip(starts, ends):
            cf = scipy.linalg.cho_factor(Kinv[a:b, a:b], lower=True)
            cov = scipy.linalg.cho_solve(cf, np.eye(b - a))
            cov = 0.5 * (cov + cov.T)
            res[a:b] = cov @ alpha[a:b]
            var[a:b] = np.diag(cov)
            covs.append(cov)
        return LooResiduals("environment", res, var, var - noise, noise, kinds, blocks, covs)

    # ---------------------------------------------------------------- prediction
    def predict(self, atoms: Atoms, variance: bool | str = True) -> Prediction:
        """Predict energy, forces, stress and local energies (with variances if asked) of ``atoms``.

        The mean comes from the maps when the model is mapped (:meth:`map`). ``variance``:
        ``False`` (none), ``True`` / ``"auto"`` (the mapped variances if the model has
        variance maps, else the exact ones), ``"exact"`` or ``"mapped"``. The mapped
        variance gives force and local-energy variances only; the energy and stress
        variances are then NaN. Reported and latent variances: see :class:`Prediction`.
        """
        cell, pbc, positions, species = self._structure_arrays(atoms)
        d = self._model.predict(cell, pbc, positions, species, variance)
        has_var = "force_variances" in d
        if self._calc_baseline is not None:  # the core predicted the GP part: add the prior
            b = self._calc_baseline.evaluate(atoms)
            d["energy"] = d["energy"] + b["energy"]
            d["forces"] = d["forces"] + b["forces"]
            d["local_energies"] = d["local_energies"] + b["local_energies"]
            d["stress"] = d["stress"] + b["stress"]

        def epistemic(quantity: str, key: str) -> np.ndarray | None:
            latent = d.get(key)
            return None if latent is None else self._model.epistemic_variances(quantity, latent)

        return Prediction(
            energy=d["energy"],
            forces=d["forces"],
            local_energies=d["local_energies"],
            stress=d["stress"],
            energy_variance=d.get("energy_variance"),
            force_variances=d.get("force_variances"),
            local_energy_variances=d.get("local_energy_variances"),
            stress_variance=d.get("stress_variances"),
            latent_energy_variance=d.get("latent_energy_variance"),
            latent_force_variances=d.get("latent_force_variances"),
            latent_local_energy_variances=d.get("latent_local_energy_variances"),
            latent_stress_variance=d.get("latent_stress_variances"),
            noise_force_variance=self.hyperparameters["noise_force"] ** 2 if has_var else None,
            epistemic_force_variances=epistemic("force", "latent_force_variances"),
            epistemic_local_energy_variances=epistemic("local_energy", "latent_local_energy_variances"),
            epistemic_stress_variance=epistemic("stress", "latent_stress_variances"),
        )

    # ---------------------------------------------------------------- calibration
    @property
    def calibration(self) -> ModelCalibration | None:
        """The variance calibration the model applies to its reported variances
        (:class:`otfgp.calibration.ModelCalibration`), or None (uncalibrated: latent +
        label noise). Stored in the core, so :meth:`save`, :meth:`load` and :meth:`copy`
        keep it, and retraining does not drop it (call :meth:`calibrate` to refit it)."""
        d = self._model.calibration
        return None if d is None else ModelCalibration.from_core(d)

    @calibration.setter
    def calibration(self, value: ModelCalibration | None) -> None:
        if value is not None and not isinstance(value, ModelCalibration):
            raise TypeError(f"calibration must be a ModelCalibration or None, got {type(value).__name__}")
        self._model.calibration = None if value is None else value.to_core()

    def calibrate(self, frames: Sequence[Atoms] | None = None, samples: Any = None, loo: bool = True,
                  form: str = "neighbourhood", min_samples: int = 30) -> ModelCalibration:
        """Fit the variance calibration on held-out errors, install it and return it.

        Force samples are pooled from up to three sources: ``loo`` (the training set's
        leave-one-environment-out force residuals, :meth:`loo_residuals`), ``frames``
        (structures with reference forces from their calculator, predicted here with the
        exact variance: reference minus prediction against the latent variance) and
        ``samples`` (errors the caller collected, e.g. the on-the-fly learner's pre-update
        predictions of DFT frames: a mapping or object with ``residuals``,
        ``latent_variances`` and the predicted ``forces`` (3 per atom, needed by the
        ``relative`` form), optionally ``noise_variances``, default sigma_n^2; or a list
        of those). The force map is :func:`otfgp.calibration.fit_calibration` of ``form``
        on them (the identity, flagged as a fallback with a warning, below ``min_samples``).
        The default ``neighbourhood`` form scales with the RMS predicted force of each atom's
        neighbourhood within :attr:`force_scale_radius` (samples carry it as
        ``neighbourhood_scales``; for leave-one-out residuals every force atom of a training
        structure takes its leave-one-out force, the other atoms the model's prediction).

        The energy and stress maps are fitted the same way on held-out energies and
        stresses (leave-one-out energy / stress rows; reference energies and stresses of
        ``frames``; ``energy_residuals`` / ``energy_latent_variances`` and
        ``stress_residuals`` / ``stress_latent_variances`` of ``samples``, which the
        on-the-fly learners record from each DFT frame's pre-update prediction) when there
        are at least ``min_samples`` of them. Otherwise the stress map, and the energy map of
        a model without energy labels, take the force map's latent scale (``latent_scale``
        with s^2 = the force map's ``a``, label noise added as is), on the assumption that
        the latent variances of all quantities share one mis-scaling, that of the signal
        variance. A model trained on energies keeps the GP's own energy variance until
        enough held-out energies are measured: its energy labels fit the energies directly,
        and the force map's a, which also books the model's force misfit, says little about
        them (measured on an on-the-fly NPT run of fcc Al: a = 20 from forces gave
        local-energy stds of 10-17 meV/atom where the pre-update energy errors were
        0.01-2.5 meV/atom). Local energies are never labels, so never held out; a local
        energy is a share of the total energy (the same latent function), so its map
        follows the energy map: the energy map's latent scale when that was fitted on
        held-out energies, the latent variance itself while a model with energy labels has
        too few, the force map's latent scale for a model without energy labels (there is
        no label noise: a * latent).

        ``info`` records the form, the sample counts per source and quantity, which maps
        were transferred from the force map (``transferred_from_force``), which were left
        uncalibrated (``uncalibrated``) and where the local-energy map came from.
        """
        if not self.trained:
            raise _core.NotTrainedError("calibrate a trained model: call train() first")
        hyp = self.hyperparameters
        noise = {"force": hyp["noise_force"] ** 2, "energy": hyp["noise_energy"] ** 2,
                 "stress": hyp["noise_stress"] ** 2}
        radius = self.force_scale_radius
        # the neighbourhood scales cost a prediction of every training structure: only for the
        # form that uses them
        neighbourhood = form == "neighbourhood"
        pool = SamplePool(radius if neighbourhood else 0.0)
        add = pool.add

        if loo:
            res = self.loo_residuals("environment")
            labels = np.asarray(self._model.labels, dtype=float)
            for kind, q in ((_ROW_FORCE, "force"), (_ROW_ENERGY, "energy"), (_ROW_STRESS, "stress")):
                part = res.select(kind)
                if part.residuals.size:
                    # the leave-one-out prediction (label minus residual), never the label
                    rows = np.flatnonzero(res.kinds == kind)
                    predicted = labels[rows] - part.residuals if kind == _ROW_FORCE else None
                    nb = (self._loo_neighbourhood_scales(predicted, radius)
                          if kind == _ROW_FORCE and neighbourhood else None)
                    add(q, "loo", part.residuals, part.latent_variances, part.noise_variances, predicted, nb)
        pool.add_frames(frames, lambda atoms: self.predict(atoms, variance="exact"), noise)
        pool.add_samples(samples, noise)
        cal = model_calibration(pool.pooled, pool.counts, noise, form, min_samples, radius=radius,
                                energy_labels=self.has_energy_labels)
        self.calibration = cal
        return cal

    @property
    def force_scale_radius(self) -> float:
        """Radius (A) of the ``neighbourhood`` calibration's force scale
        (:func:`otfgp.calibration.scale_radius`: the 3-body cutoff)."""
        return scale_radius(self.cutoffs)

    def _loo_neighbourhood_scales(self, loo_forces: np.ndarray, radius: float) -> np.ndarray:
        """Neighbourhood scale values of the leave-one-out force rows (in row order: training
        structure by structure, its force atoms in stored order): the force atoms of a
        structure take their leave-one-out forces ``loo_forces``, the other atoms the
        model's prediction."""
        loo = np.asarray(loo_forces, dtype=float).reshape(-1, 3)
        out, k = [], 0
        for i in range(self.n_training_structures):
            d = self._model.training_structure(i)
            atoms_idx = np.asarray(d["force_atoms"], dtype=int)
            if not atoms_idx.size:
                continue
            numbers = np.asarray(self._model.atomic_numbers)[np.asarray(d["species"], dtype=int)]
            atoms = Atoms(numbers=numbers, positions=d["positions"], cell=d["cell"], pbc=d["pbc"])
            forces = np.array(self.predict(atoms, variance=False).forces, dtype=float)
            forces[atoms_idx] = loo[k:k + atoms_idx.size]
            out.append(neighbourhood_scale_values(atoms, forces, radius)[atoms_idx])
            k += atoms_idx.size
        if k != len(loo):
            raise RuntimeError(f"{len(loo)} leave-one-out force atoms but {k} in the training structures")
        return np.concatenate(out).ravel() if out else np.zeros(0)

    # ---------------------------------------------------------------- mapping
    def map(self, tolerance: float | None = None, variance: bool = True,
            heldout: Sequence[Atoms] | None = None, **grids: int) -> MapReport:
        """Tabulate the trained model's mean (and reduced variance) as splines, so that
        predictions cost the same whatever the training-set size. See :mod:`otfgp.mapping`.
        Retraining drops the maps (call ``map`` again); ``save`` stores them."""
        from .mapping import build_maps

        return build_maps(self, tolerance, variance=variance, heldout=heldout, **grids)

    @property
    def mapped(self) -> bool:
        """True if the model carries maps of its current solution."""
        return self._model.maps is not None

    @property
    def has_variance_maps(self) -> bool:
        """True if the maps include the reduced variance (fast mapped uncertainties)."""
        maps = self._model.maps
        return maps is not None and maps["covariance"] is not None

    @property
    def map_report(self) -> MapReport | None:
        """The report of the installed maps (None if the model is not mapped)."""
        maps = self._model.maps
        return None if maps is None else MapReport.from_json(maps["info"])

    def per_atom_stresses(self, atoms: Atoms) -> np.ndarray:
        """Per-atom stresses (N x 6, Voigt xx yy zz yz xz xy, eV/A^3) that sum to the stress:
        each cluster's virial is shared equally among the copies centred at its atoms (the
        same split as LAMMPS's per-atom virial)."""
        cell, pbc, positions, species = self._structure_arrays(atoms)
        if not all(pbc) or atoms.cell.volume <= 1e-8:
            raise ValueError("per-atom stresses need a fully periodic cell with a volume")
        if self._calc_baseline is not None:
            raise ValueError(f"per-atom stresses are not available with the calculator baseline "
                             f"{self._calc_baseline.name!r} (it gives the total stress only)")
        virials = self._model.predict_local(cell, pbc, positions, species, False)["virials"]
        return -virials[:, [0, 1, 2, 5, 4, 3]] / atoms.get_volume()

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the model (training data, hyperparameters, solution, maps, calibration) to
        ``path`` atomically. Any model can be saved and loaded again: one with new data or
        hyperparameters since its last :meth:`train` is saved untrained (its labels kept,
        without the maps of the old solution, which changing it dropped). A calculator
        baseline is recorded by its spec (from which :meth:`load` rebuilds it)."""
        self._require_baseline_spec()
        self._model.save(os.fspath(path))

    def _require_baseline_spec(self) -> None:
        if self._calc_baseline is not None and self._calc_baseline.spec is None:
            raise ValueError(f"cannot save a model whose calculator baseline has no spec "
                             f"({self._calc_baseline.name}): build it as CalculatorBaseline(calc, "
                             f"spec='package.module:factory') or register_calculator(name, factory)")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GaussianProcess":
        """Read a model written by :meth:`save` (or by the C++ core)."""
        core = _core.Model.load(os.fspath(path))
        if core.external_baseline:
            try:
                calc_baseline = baselines.CalculatorBaseline(spec=core.external_baseline)
            except Exception as e:
                raise _core.ModelFileError(
                    f"{os.fspath(path)}: the model was trained on top of the calculator baseline "
                    f"{core.external_baseline!r}, which cannot be built here ({e}); install or "
                    f"register it (otfgp.baselines.register_calculator) and load again") from e
        else:
            calc_baseline = None
        for warning in core.load_warnings:
            log.warning("%s: %s", os.fspath(path), warning)
        if core.format_version < _core.CALIBRATION_FORMAT_VERSION:
            log.info("model file format version %d predates calibration; loaded uncalibrated "
                     "(reported stds = latent + noise)", core.format_version)
        return cls._from_core(core, calc_baseline)

    def copy(self) -> "GaussianProcess":
        """An independent copy (training data, hyperparameters, solution, maps, calibration,
        bounds and the last optimisation report); the same as ``copy.deepcopy``."""
        return copy.deepcopy(self)

    @classmethod
    def _from_core(cls, core: _core.Model,
                   calc_baseline: "baselines.CalculatorBaseline | None" = None) -> "GaussianProcess":
        gp = cls.__new__(cls)
        gp._adopt_core(core, calc_baseline)
        return gp

    def _adopt_core(self, core: _core.Model,
                    calc_baseline: "baselines.CalculatorBaseline | None" = None) -> None:
        """Make ``core`` this object's model, with default bounds and no cached kernels;
        ``calc_baseline`` is the calculator behind the core's external baseline (built from
        its spec when not given)."""
        if core.external_baseline and calc_baseline is None:
            calc_baseline = baselines.CalculatorBaseline(spec=core.external_baseline)
        self._calc_baseline = calc_baseline
        self._model = core
        self.bounds = dict(DEFAULT_BOUNDS)
        self._reset_cache()
        self.last_optimization = None
        if core.trained:
            self._chol = np.array(core.cholesky)
            self._chol_key = (tuple(self.hyperparameters.values()), tuple(self._fit_energy_offsets()))

    # pickle / copy.deepcopy / multiprocessing: the core travels as its model-file bytes
    # (everything save() keeps, calibration included), plus the Python-side state that a
    # file does not hold. Kernel caches are rebuilt on demand.
    def __getstate__(self) -> dict[str, Any]:
        return {"model": self._model.to_bytes(), "bounds": dict(self.bounds), "priors": self.priors,
                "last_optimization": self.last_optimization, "calc_baseline": self._calc_baseline}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self._adopt_core(_core.Model.from_bytes(state["model"]), state.get("calc_baseline"))
        self.bounds = dict(state["bounds"])
        self.priors = state.get("priors", DEFAULT_PRIORS)
        self.last_optimization = state.get("last_optimization")

    def __repr__(self) -> str:
        return (f"GaussianProcess(species={self.species}, cutoffs={self.cutoffs}, "
                f"environments={self.n_training_environments}, labels={self.n_labels}, trained={self.trained}, "
                f"mapped={self.mapped}, calibrated={self.calibration is not None})")
