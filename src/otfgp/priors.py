"""Weakly informative priors on the GP hyperparameters (maximum a posteriori training).

Maximum likelihood on a handful of environments drives hyperparameters to whatever bound
is nearest: the GP can interpolate a few labels exactly, so the likelihood keeps rising as
the noise shrinks or the length scales shorten (docs/hyperparameters.md). A weak prior
p(theta) makes :meth:`otfgp.GaussianProcess.train` maximise
log p(y | theta) + log p(theta) instead: on small data the prior keeps each hyperparameter
near a physically sensible scale, on plenty of data the likelihood outweighs it.

Every prior is log-normal: log(theta) ~ Normal(log(median), log_std^2), independently per
hyperparameter. The density is that of log(theta), the coordinate the optimiser works in,
so the prior's mode is its median (the density of theta itself would carry an extra
-log(theta) Jacobian that pulls every hyperparameter towards zero).

The signal stds ``sigma2`` and ``sigma3`` default to a data-dependent median (empirical
Bayes, ``median=None``): the value at which that body order alone, at the median length
scales, gives a prior force-component variance of half the mean square force label
(:meth:`otfgp.GaussianProcess.prior_medians`). The other medians are fixed physical scales.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Mapping

#: log(10): a log-normal with this log_std spans a factor 10 per standard deviation.
LOG_10 = math.log(10.0)

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class LogNormal:
    """A log-normal prior: log(theta) ~ Normal(log(median), log_std^2).

    Attributes:
        median: centre in the hyperparameter's unit; ``None`` (signal stds only): taken
            from the training labels at train time.
        log_std: standard deviation of log(theta) (natural log; ``LOG_10`` is a factor 10).
    """

    median: float | None
    log_std: float

    def __post_init__(self) -> None:
        if self.median is not None and not (math.isfinite(self.median) and self.median > 0):
            raise ValueError(f"prior median must be a positive number, got {self.median!r}")
        if not (math.isfinite(self.log_std) and self.log_std > 0):
            raise ValueError(f"prior log_std must be a positive number, got {self.log_std!r}")

    def log_density(self, theta: float) -> tuple[float, float]:
        """Log density of log(theta) and its derivative with respect to theta."""
        if self.median is None:
            raise ValueError("the prior median is data-dependent: resolve it first (Priors.resolve)")
        z = (math.log(theta) - math.log(self.median)) / self.log_std
        value = -0.5 * z * z - math.log(self.log_std) - _LOG_SQRT_2PI
        return value, -z / (self.log_std * theta)


@dataclass(frozen=True)
class Priors:
    """Independent log-normal priors on the seven hyperparameters (:data:`otfgp.gp.HYPERPARAMETER_NAMES`).

    Pass an instance as ``GaussianProcess(..., priors=...)``; ``priors=None`` is pure
    maximum likelihood. The defaults, and why (measurements in docs/hyperparameters.md):

    * ``sigma2``, ``sigma3``: from the data (see the module docstring), a factor 10 per std:
      the labels fix the overall scale, the split between body orders is left to the data.
    * ``ell2``, ``ell3``: 1 A, a factor 1.5 per std: interatomic distances change on the
      scale of tenths of an Angstrom to a few Angstrom; length scales of a few hundredths
      interpolate a handful of environments and generalise badly. A factor 2 let tens of
      noise-free environments pull ell3 to 0.15 A on the fly (a 3-body variance that
      flags every new liquid environment).
    * ``noise_force``: 20 meV/A, a factor 3 per std: the force error of practical DFT
      settings (the demo's are 16 meV/A rms from converged forces) and the model error of
      a 2+3-body model, which acts as label noise, are tens of meV/A; noise-free labels
      (EMT) otherwise drive sigma_n to zero on few environments and the variance becomes
      overconfident. 50 meV/A with a factor 2 was measured to smooth 4-environment fits
      (held-out error 16-22% above maximum likelihood).
    * ``noise_energy``: 50 meV per structure, ``noise_stress``: 5 meV/A^3 (0.8 GPa), a
      factor 10 per std: typical label errors in their own units, loosely held.
    """

    sigma2: LogNormal = LogNormal(None, LOG_10)
    ell2: LogNormal = LogNormal(1.0, math.log(1.5))
    sigma3: LogNormal = LogNormal(None, LOG_10)
    ell3: LogNormal = LogNormal(1.0, math.log(1.5))
    noise_force: LogNormal = LogNormal(0.02, math.log(3.0))
    noise_energy: LogNormal = LogNormal(0.05, LOG_10)
    noise_stress: LogNormal = LogNormal(0.005, LOG_10)

    def __deepcopy__(self, memo: dict) -> "Priors":
        return self  # frozen: copies of a model share it, as they share DEFAULT_PRIORS

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The hyperparameter names, in field order."""
        return tuple(f.name for f in fields(cls))

    def get(self, name: str) -> LogNormal:
        """The prior of one hyperparameter."""
        if name not in self.names():
            raise ValueError(f"unknown hyperparameter {name!r}; known: {list(self.names())}")
        return getattr(self, name)

    def with_overrides(self, overrides: Mapping[str, tuple[float | None, float] | LogNormal]) -> "Priors":
        """A copy with some priors replaced, each by a :class:`LogNormal` or ``(median, log_std)``."""
        bad = set(overrides) - set(self.names())
        if bad:
            raise ValueError(f"unknown hyperparameters {sorted(bad)}; known: {list(self.names())}")
        new = {}
        for name, v in overrides.items():
            if isinstance(v, LogNormal):
                new[name] = v
            else:
                median, log_std = v
                new[name] = LogNormal(None if median is None else float(median), float(log_std))
        return replace(self, **new)

    def resolve(self, data_medians: Mapping[str, float]) -> dict[str, LogNormal]:
        """Every prior with a concrete median: data-dependent ones from ``data_medians``."""
        out = {}
        for name in self.names():
            p = self.get(name)
            if p.median is None:
                if name not in data_medians:
                    raise ValueError(f"the prior of {name} needs a data-dependent median")
                p = LogNormal(float(data_medians[name]), p.log_std)
            out[name] = p
        return out


#: The priors a :class:`otfgp.GaussianProcess` uses unless told otherwise.
DEFAULT_PRIORS = Priors()


def log_prior(hyperparameters: Mapping[str, float], priors: Mapping[str, LogNormal],
              names: tuple[str, ...] | list[str] | None = None) -> tuple[float, dict[str, float]]:
    """Sum of the log prior densities of ``names`` (default: every name in ``priors``) and
    its gradient with respect to each hyperparameter (zero for those not in ``names``)."""
    names = list(priors) if names is None else list(names)
    value = 0.0
    grad = {k: 0.0 for k in hyperparameters}
    for name in names:
        v, g = priors[name].log_density(float(hyperparameters[name]))
        value += v
        grad[name] = g
    return value, grad
