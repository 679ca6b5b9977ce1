"""Analytic baselines (physical priors) for Delta-learning.

A :class:`~otfgp.GaussianProcess` built with ``baseline=`` learns the difference between its
labels and the baseline and predicts baseline + GP (energies, forces, stresses, local
energies; the variances are the GP's). The baseline is evaluated by the C++ core and stored
in the model file, so Python, the mapped model and ``pair_style otfgp`` give the same numbers.
See ``docs/baselines.md`` for the formulas, the mixing rules and the smooth cutoff.

Example::

    from otfgp import GaussianProcess
    from otfgp.baselines import Morse
    gp = GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 4.0},
                         baseline=Morse({"Al": (0.27, 3.25, 1.17)}, cutoff=7.0))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as _atomic_numbers
from ase.data import chemical_symbols

from . import _core

__all__ = ["Morse", "LennardJones", "ZBL", "Baseline", "from_core", "evaluate"]

Element = Union[str, int]


def _z(element: Element) -> int:
    """Atomic number of a chemical symbol or number, or a ValueError naming it."""
    if isinstance(element, (int, np.integer)) and 1 <= int(element) < len(chemical_symbols):
        return int(element)
    if isinstance(element, str) and element in _atomic_numbers:
        return _atomic_numbers[element]
    raise ValueError(f"unknown element {element!r}")


def _pair_key(pair: Any) -> tuple[int, int]:
    """(z1, z2) of a pair given as ("Al", "Cu"), (13, 29) or "Al-Cu"."""
    if isinstance(pair, str):
        parts = pair.split("-")
        if len(parts) != 2:
            raise ValueError(f"a pair is written 'A-B', got {pair!r}")
        pair = parts
    a, b = pair
    return _z(a), _z(b)


def _check_cutoff(cutoff: float) -> float:
    if not (isinstance(cutoff, (int, float, np.floating)) and math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"baseline cutoff must be a positive number of Angstrom, got {cutoff!r}")
    return float(cutoff)


def _triples(params: Mapping[Element, Any], n: int, kind: str) -> tuple[list[int], list[list[float]]]:
    elements, triples = [], []
    for element, values in params.items():
        values = [float(v) for v in values]
        if len(values) != n:
            raise ValueError(f"{kind} parameters of {element!r} need {n} values, got {len(values)}")
        elements.append(_z(element))
        triples.append(values + [0.0] * (3 - n))
    return elements, triples


@dataclass(frozen=True)
class Morse:
    """Morse pair potential V(r) = D_e [exp(-2a(r - r_e)) - 2 exp(-a(r - r_e))].

    Args:
        params: per element ``(D_e [eV], r_e [A], a [1/A])``. Unlike pairs mix: D_e by the
            geometric mean, r_e and a by arithmetic means.
        cutoff: baseline cutoff (A); shifted-force smoothing, see ``docs/baselines.md``.
        pairs: per-pair overrides ``{("Al", "Cu"): (D_e, r_e, a)}`` that replace the mixing rule.

    ASE's ``MorsePotential(epsilon, r0, rho0)`` is the same with D_e = epsilon, r_e = r0 and
    a = rho0 / r0.
    """

    params: Mapping[Element, tuple[float, float, float]]
    cutoff: float
    pairs: Mapping[Any, tuple[float, float, float]] = field(default_factory=dict)

    def to_core(self) -> dict[str, Any]:
        """The core's dict form (see :func:`from_core`)."""
        elements, triples = _triples(self.params, 3, "Morse")
        overrides = [(*_pair_key(k), [float(x) for x in v]) for k, v in self.pairs.items()]
        for *_, v in overrides:
            if len(v) != 3:
                raise ValueError(f"Morse pair parameters need 3 values (D_e, r_e, a), got {len(v)}")
        return {"kind": "morse", "cutoff": _check_cutoff(self.cutoff), "elements": elements,
                "params": triples, "overrides": overrides}


@dataclass(frozen=True)
class LennardJones:
    """Lennard-Jones pair potential V(r) = 4 epsilon [(sigma/r)^12 - (sigma/r)^6].

    Args:
        params: per element ``(epsilon [eV], sigma [A])``; unlike pairs mix by the
            Lorentz-Berthelot rules (epsilon geometric, sigma arithmetic mean).
        cutoff: baseline cutoff (A); shifted-force smoothing, see ``docs/baselines.md``.
        pairs: per-pair overrides ``{("Ar", "Kr"): (epsilon, sigma)}``.
    """

    params: Mapping[Element, tuple[float, float]]
    cutoff: float
    pairs: Mapping[Any, tuple[float, float]] = field(default_factory=dict)

    def to_core(self) -> dict[str, Any]:
        """The core's dict form (see :func:`from_core`)."""
        elements, triples = _triples(self.params, 2, "Lennard-Jones")
        overrides = []
        for k, v in self.pairs.items():
            v = [float(x) for x in v]
            if len(v) != 2:
                raise ValueError(f"Lennard-Jones pair parameters need 2 values (epsilon, sigma), got {len(v)}")
            overrides.append((*_pair_key(k), v + [0.0]))
        return {"kind": "lennard_jones", "cutoff": _check_cutoff(self.cutoff), "elements": elements,
                "params": triples, "overrides": overrides}


@dataclass(frozen=True)
class ZBL:
    """Ziegler-Biersack-Littmark universal screened nuclear repulsion (no parameters: the
    atomic numbers of the model's species), a short-range prior against atoms overlapping.

    Args:
        cutoff: baseline cutoff (A); shifted-force smoothing, see ``docs/baselines.md``.
    """

    cutoff: float

    def to_core(self) -> dict[str, Any]:
        """The core's dict form (see :func:`from_core`)."""
        return {"kind": "zbl", "cutoff": _check_cutoff(self.cutoff), "elements": [], "params": [],
                "overrides": []}


Baseline = Union[Morse, LennardJones, ZBL]


def from_core(d: Mapping[str, Any] | None) -> Baseline | None:
    """The dataclass of the core's dict form (``GaussianProcess.core.baseline``)."""
    if d is None:
        return None
    symbols = [chemical_symbols[z] for z in d["elements"]]
    pairs = {(chemical_symbols[z1], chemical_symbols[z2]): tuple(p) for z1, z2, p in d["overrides"]}
    if d["kind"] == "morse":
        return Morse({s: tuple(p) for s, p in zip(symbols, d["params"])}, d["cutoff"], pairs)
    if d["kind"] == "lennard_jones":
        return LennardJones({s: tuple(p[:2]) for s, p in zip(symbols, d["params"])}, d["cutoff"],
                            {k: v[:2] for k, v in pairs.items()})
    if d["kind"] == "zbl":
        return ZBL(d["cutoff"])
    raise ValueError(f"unknown baseline kind {d['kind']!r}")


def evaluate(baseline: Baseline, atoms: Atoms) -> dict[str, Any]:
    """The baseline alone on ``atoms``: ``energy`` (eV), ``forces`` (eV/A), ``local_energies``
    and ``stress`` (ASE Voigt order, eV/A^3; NaN without a fully periodic cell), computed by
    the core exactly as a model adds them."""
    numbers = sorted(set(int(z) for z in atoms.numbers))
    species = np.searchsorted(numbers, atoms.numbers).astype(np.int32)
    out = _core.evaluate_baseline(baseline.to_core(), numbers, np.asarray(atoms.cell, dtype=float),
                                  [bool(p) for p in atoms.pbc], atoms.positions, species)
    periodic = bool(np.all(atoms.pbc)) and atoms.cell.volume > 1e-8
    out["stress"] = out["virial"] / atoms.cell.volume if periodic else np.full(6, np.nan)
    return out
