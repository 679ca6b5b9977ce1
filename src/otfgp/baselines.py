"""Baselines (physical priors) for Delta-learning: analytic pair potentials evaluated by the
C++ core (Morse, Lennard-Jones, ZBL; :func:`fit_morse` fits Morse parameters to scans), and
any ASE calculator as a Python-only baseline (:class:`CalculatorBaseline`: EMT, CHGNet, ...).

A :class:`~otfgp.GaussianProcess` built with ``baseline=`` learns the difference between its
labels and the baseline and predicts baseline + GP (energies, forces, stresses, local
energies; the variances are the GP's). An analytic baseline is evaluated by the C++ core and
stored in the model file, so Python, the mapped model and ``pair_style otfgp`` give the same
numbers; a calculator is recorded by its spec and runs in Python only. See
``docs/baselines.md`` for the formulas, the mixing rules, the smooth cutoff and calculators.

Example::

    from otfgp import GaussianProcess
    from otfgp.baselines import Morse
    gp = GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 4.0},
                         baseline=Morse({"Al": (0.27, 3.25, 1.17)}, cutoff=7.0))
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.data import atomic_numbers as _atomic_numbers
from ase.data import chemical_symbols

from . import _core

log = logging.getLogger(__name__)

__all__ = ["Morse", "LennardJones", "ZBL", "Baseline", "from_core", "evaluate",
           "CalculatorBaseline", "register_calculator", "calculator_baseline", "fit_morse", "MorseFit",
           "dimer_frames", "scaled_frames"]

Element = Union[str, int]


def _z(element: Element) -> int:
    """Atomic number of a chemical symbol or number, or an InputError naming it."""
    if isinstance(element, (int, np.integer)) and not isinstance(element, bool) \
            and 1 <= int(element) < len(chemical_symbols):
        return int(element)
    if isinstance(element, str) and element in _atomic_numbers:
        return _atomic_numbers[element]
    raise _core.InputError(f"unknown element {element!r}")


def _pair_key(pair: Any) -> tuple[int, int]:
    """(z1, z2) of a pair given as ("Al", "Cu"), (13, 29) or "Al-Cu"."""
    if isinstance(pair, str):
        parts = pair.split("-")
        if len(parts) != 2:
            raise _core.InputError(f"a pair is written 'A-B', got {pair!r}")
        pair = parts
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise _core.InputError(f"a pair is two elements, ('A', 'B') or 'A-B', got {pair!r}")
    a, b = pair
    return _z(a), _z(b)


def _check_cutoff(cutoff: float) -> float:
    if isinstance(cutoff, bool) or not (isinstance(cutoff, (int, float, np.integer, np.floating))
                                        and math.isfinite(cutoff) and cutoff > 0):
        raise _core.InputError(f"baseline cutoff must be a positive number of Angstrom, got {cutoff!r}")
    return float(cutoff)


def _values(values: Any, names: tuple[str, ...], what: str) -> list[float]:
    """The parameters ``names`` of ``what`` (an element or a pair) as floats, or an
    InputError naming them (the positivity checks are the core's)."""
    kind = f"{what}: {len(names)} values ({', '.join(names)})"
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise _core.InputError(f"{kind} expected, got {values!r}")
    if len(values) != len(names):
        raise _core.InputError(f"{kind} expected, got {len(values)}")
    out = []
    for name, v in zip(names, values):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise _core.InputError(f"{what}: {name} must be a number, got {v!r}")
        out.append(float(v))
    return out


def _triples(params: Mapping[Element, Any], names: tuple[str, ...], kind: str) -> tuple[list[int], list[list[float]]]:
    if not isinstance(params, Mapping):
        raise _core.InputError(f"{kind} params must map elements to ({', '.join(names)}), "
                               f"got a {type(params).__name__}")
    elements, triples = [], []
    for element, values in params.items():
        elements.append(_z(element))
        triples.append(_values(values, names, f"{kind} parameters of {element!r}") + [0.0] * (3 - len(names)))
    return elements, triples


def _overrides(pairs: Mapping[Any, Any], names: tuple[str, ...], kind: str) -> list[tuple[int, int, list[float]]]:
    """The per-pair overrides in the core's form; a pair given twice (also as ("A", "B") and
    ("B", "A")) is an InputError: the core would keep one of them by the order of the keys."""
    if not isinstance(pairs, Mapping):
        raise _core.InputError(f"{kind} pairs must map pairs of elements to ({', '.join(names)}), "
                               f"got a {type(pairs).__name__}")
    out, seen = [], {}
    for key, values in pairs.items():
        z1, z2 = _pair_key(key)
        pair = frozenset((z1, z2))
        if pair in seen:
            raise _core.InputError(f"{kind} pair {chemical_symbols[z1]}-{chemical_symbols[z2]} is given twice "
                                   f"({seen[pair]!r} and {key!r}); a pair's parameters do not depend on the order")
        seen[pair] = key
        v = _values(values, names, f"{kind} pair parameters of {key!r}")
        out.append((z1, z2, v + [0.0] * (3 - len(names))))
    return out


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
        names = ("D_e", "r_e", "a")
        elements, triples = _triples(self.params, names, "Morse")
        return {"kind": "morse", "cutoff": _check_cutoff(self.cutoff), "elements": elements,
                "params": triples, "overrides": _overrides(self.pairs, names, "Morse")}


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
        names = ("epsilon", "sigma")
        elements, triples = _triples(self.params, names, "Lennard-Jones")
        return {"kind": "lennard_jones", "cutoff": _check_cutoff(self.cutoff), "elements": elements,
                "params": triples, "overrides": _overrides(self.pairs, names, "Lennard-Jones")}


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


# ------------------------------------------------------------ ASE calculators as baselines
def _emt() -> Any:
    from ase.calculators.emt import EMT
    return EMT()


@functools.lru_cache(maxsize=1)
def _chgnet_model() -> Any:
    """The pretrained CHGNet weights, loaded once per process (3 s): every model, copy and
    loaded file with the "chgnet" baseline shares them (they are read-only)."""
    try:
        import torch
        from chgnet.model import CHGNet
    except ImportError as e:
        raise ImportError("the 'chgnet' baseline needs CHGNet: pip install 'otfgp[umlip]'") from e
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # CHGNet's forward pass warns on every call about a tensor it converts (harmless)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad",
                            module=r"chgnet\.")
    return _quietly(lambda: CHGNet.load(verbose=False))


def _quietly(build: Callable[[], Any]) -> Any:
    """``build()`` with its prints (CHGNet prints banners) sent to the debug log."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = build()
    if out.getvalue().strip():
        log.debug("%s", out.getvalue().strip())
    return result


def _chgnet() -> Any:
    """CHGNet's pretrained universal potential on the CPU (``pip install otfgp[umlip]``),
    with its per-atom energies and its output quiet. Torch threads follow OMP_NUM_THREADS
    (default 1): a baseline runs inside workers that the caller parallelises."""
    model = _chgnet_model()
    from chgnet.model.dynamics import CHGNetCalculator

    return _quietly(lambda: CHGNetCalculator(model=model, use_device="cpu", check_cuda_mem=False,
                                             return_site_energies=True))


# name -> factory: the spec strings a model file can record besides "module:function".
_REGISTRY: dict[str, Callable[[], Any]] = {"emt": _emt, "chgnet": _chgnet}
# calculator class name -> registered spec, so CalculatorBaseline(EMT()) knows its spec
_CLASS_SPECS: dict[str, str] = {"EMT": "emt", "CHGNetCalculator": "chgnet"}


def register_calculator(name: str, factory: Callable[[], Any]) -> None:
    """Register a calculator factory (no arguments) under ``name``, so that a model saved
    with ``baseline=name`` can be loaded (register it again before loading)."""
    if not name or ":" in name:
        raise ValueError(f"a registered baseline name is non-empty and has no ':', got {name!r}")
    _REGISTRY[name] = factory


def _normalise(spec: str) -> str:
    spec = spec.strip()
    return spec[4:] if spec.startswith("ase:") and spec[4:] in _REGISTRY else spec


def _build(spec: str) -> Any:
    """The calculator a spec names: a registered name (``emt``, ``ase:emt``, ``chgnet``) or
    an importable factory ``package.module:function`` called without arguments."""
    name = _normalise(spec)
    if name in _REGISTRY:
        return _REGISTRY[name]()
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"unknown baseline {spec!r}: use a registered name ({', '.join(sorted(_REGISTRY))}) "
                         f"or an importable factory 'package.module:function'")
    # as for 'module:function' labellers: a module next to the run's config imports
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot build baseline {spec!r}: {e}") from e
    return factory()


class CalculatorBaseline:
    """Any ASE calculator as the baseline (prior) of a :class:`~otfgp.GaussianProcess`.

    The GP learns label - calculator (energy, forces, stress) and predicts calculator + GP;
    the variances are the GP's. The calculator runs in Python only: a model with it cannot
    be run by ``pair_style otfgp`` (LAMMPS refuses it with an error naming the baseline).

    Args:
        calculator: the calculator instance, or ``None`` to build it from ``spec``.
        spec: how to rebuild it when a model file is loaded: a registered name (``"emt"``
            or ``"ase:emt"``, ``"chgnet"``, see :func:`register_calculator`) or an
            importable factory ``"package.module:function"`` (called without arguments;
            the working directory is on the import path, as for labellers).
            Optional for the registered calculator classes (EMT, CHGNet); a baseline without
            a spec works in memory but its model cannot be saved.

    Local energies: when the calculator provides per-atom energies (``"energies"``, e.g. EMT)
    the predicted local energies are those plus the GP's; otherwise they are NaN (a total
    energy has no per-atom split); the local-energy variances are the GP's either way.
    """

    def __init__(self, calculator: Any = None, spec: str | None = None) -> None:
        if calculator is None and spec is None:
            raise ValueError("CalculatorBaseline needs a calculator or a spec")
        if spec is not None and not (isinstance(spec, str) and spec.strip()):
            raise ValueError(f"a baseline spec is a non-empty string, got {spec!r}")
        if spec is None:
            spec = _CLASS_SPECS.get(type(calculator).__name__)
        self.spec: str | None = None if spec is None else _normalise(spec)
        self.calculator = _build(self.spec) if calculator is None else calculator

    @property
    def name(self) -> str:
        """What the model file records: the spec, or a description if there is none."""
        return self.spec or f"{type(self.calculator).__module__}.{type(self.calculator).__name__} (no spec)"

    def evaluate(self, atoms: Atoms, stress: bool | None = None) -> dict[str, Any]:
        """``energy``, ``forces``, ``stress`` (NaN unless asked for / fully periodic) and
        ``local_energies`` (NaN unless the calculator provides them) of ``atoms``."""
        periodic = bool(np.all(atoms.pbc)) and atoms.cell.volume > 1e-8
        if stress is None:
            stress = periodic
        a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        # From a clean state every time: calculators keep history (EMT its neighbour list with
        # a skin), which would make the last bits depend on what was evaluated before, and
        # saved, copied and loaded models must predict the same numbers.
        self.calculator.reset()
        a.calc = self.calculator
        out: dict[str, Any] = {"energy": float(a.get_potential_energy()),
                               "forces": np.array(a.get_forces(), dtype=float)}
        out["stress"] = (np.array(a.get_stress(voigt=True), dtype=float) if stress
                         else np.full(6, np.nan))
        local = np.full(len(a), np.nan)
        if "energies" in getattr(self.calculator, "implemented_properties", ()):
            try:
                local = np.array(a.get_potential_energies(), dtype=float)
            except PropertyNotImplementedError:  # listed, but not computed in this setup
                pass
        out["local_energies"] = local
        return out

    # Pickle by spec when there is one (no torch models in pickles, and a fresh calculator
    # has no stale results); otherwise the calculator itself travels.
    def __getstate__(self) -> dict[str, Any]:
        if self.spec is not None:
            return {"spec": self.spec}
        return {"spec": None, "calculator": self.calculator}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.spec = state["spec"]
        self.calculator = _build(self.spec) if self.spec is not None else state["calculator"]

    def __repr__(self) -> str:
        return f"CalculatorBaseline(spec={self.name!r})"


def calculator_baseline(spec: str | CalculatorBaseline | Any) -> CalculatorBaseline:
    """A :class:`CalculatorBaseline` from a spec string, a calculator or itself."""
    if isinstance(spec, CalculatorBaseline):
        return spec
    if isinstance(spec, str):
        return CalculatorBaseline(spec=spec)
    return CalculatorBaseline(spec)


# ------------------------------------------------------------------------- Morse fitting
def dimer_frames(element: Element, distances: Sequence[float], calculator: Any,
                 vacuum: float = 20.0) -> list[Atoms]:
    """Isolated dimers of ``element`` at ``distances`` (A) in a non-periodic box, labelled
    by ``calculator`` (energies kept as single-point results), for :func:`fit_morse`."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for r in distances:
        a = Atoms([element, element], positions=[[0, 0, 0], [0, 0, float(r)]],
                  cell=[vacuum, vacuum, vacuum + float(r)], pbc=False)
        a.calc = calculator
        e = a.get_potential_energy()
        a.calc = SinglePointCalculator(a, energy=e)
        frames.append(a)
    return frames


def scaled_frames(atoms: Atoms, scales: Sequence[float], calculator: Any) -> list[Atoms]:
    """Copies of ``atoms`` uniformly scaled by each factor (compressed / expanded crystal),
    labelled by ``calculator`` (energies), for :func:`fit_morse`."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for s in scales:
        a = atoms.copy()
        a.set_cell(atoms.cell * float(s), scale_atoms=True)
        a.calc = calculator
        e = a.get_potential_energy()
        a.calc = SinglePointCalculator(a, energy=e)
        frames.append(a)
    return frames


@dataclass(frozen=True)
class MorseFit:
    """Result of :func:`fit_morse`: the baseline, the per-element reference energies
    (eV/atom) added to the pair sum in the fit, and the RMS energy residual (eV/atom)."""

    morse: Morse
    reference_energies: dict[str, float]
    rms_residual: float
    success: bool
    message: str


def fit_morse(frames: Sequence[Atoms], cutoff: float, energies: Sequence[float] | None = None,
              initial: Mapping[Element, tuple[float, float, float]] | None = None,
              reference_energies: Mapping[Element, float] | None = None) -> MorseFit:
    """Fit per-element Morse parameters (D_e, r_e, a) to labelled energies.

    The model of each frame's energy is the pair sum of the shifted-force Morse baseline
    (unlike pairs by the mixing rules of :class:`Morse`, exactly as a model evaluates it)
    plus a reference energy per atom of each element; :func:`scipy.optimize.least_squares`
    minimises the per-atom energy residuals. Use dimer scans (:func:`dimer_frames`),
    compressed-crystal scans (:func:`scaled_frames`) or any labelled frames.

    Args:
        frames: structures; energies from their calculators unless ``energies`` is given.
        cutoff: the baseline cutoff of the fitted :class:`Morse` (A).
        energies: the energies (eV), one per frame.
        initial: starting (D_e, r_e, a) per element (default 0.5 eV, 2.5 A, 1.5 /A).
        reference_energies: fixed per-atom reference energies (e.g. of the isolated atom,
            in the labeller's energy zero); elements left out are fitted. Fit them only when
            the data pin them down (dimer scans out to where V has decayed do; crystal scans
            alone leave them correlated with D_e).
    """
    from scipy.optimize import least_squares

    if not frames:
        raise ValueError("fit_morse needs labelled frames")
    e = np.array([f.get_potential_energy() for f in frames] if energies is None else energies, dtype=float)
    if e.shape != (len(frames),) or not np.all(np.isfinite(e)):
        raise ValueError(f"need one finite energy per frame ({len(frames)}), got {e.shape}")
    symbols = sorted({s for f in frames for s in f.get_chemical_symbols()}, key=_z)
    _check_cutoff(cutoff)
    names = ("D_e", "r_e", "a")
    initial = {chemical_symbols[_z(k)]: _values(v, names, f"initial Morse parameters of {k!r}")
               for k, v in (initial or {}).items()}
    for k, v in initial.items():  # the fit works on their logarithms
        if not all(math.isfinite(x) and x > 0 for x in v):
            raise _core.InputError(f"initial Morse parameters of {k!r} must be positive and finite, got {v}")
    fixed = {}
    for k, v in (reference_energies or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise _core.InputError(f"reference energy of {k!r} must be a finite number (eV/atom), got {v!r}")
        fixed[chemical_symbols[_z(k)]] = float(v)
    free_refs = [s for s in symbols if s not in fixed]
    unknowns = 3 * len(symbols) + len(free_refs)
    if len(frames) < unknowns:
        log.warning("fit_morse: %d frame(s) for %d unknowns (%s): the fit is underdetermined, its parameters "
                    "are one of many that fit the energies", len(frames), unknowns, ", ".join(symbols))
    counts = np.array([[f.get_chemical_symbols().count(s) for s in symbols] for f in frames], dtype=float)
    n_atoms = counts.sum(axis=1)
    x0 = [np.log(v) for s in symbols for v in initial.get(s, (0.5, 2.5, 1.5))]
    x0 += [0.0] * len(free_refs)

    def unpack(x: np.ndarray) -> tuple[Morse, np.ndarray]:
        p = np.exp(x[:3 * len(symbols)]).reshape(-1, 3)
        refs = dict(fixed)
        refs.update(zip(free_refs, x[3 * len(symbols):]))
        return (Morse({s: tuple(map(float, p[i])) for i, s in enumerate(symbols)}, cutoff),
                np.array([refs[s] for s in symbols]))

    def residuals(x: np.ndarray) -> np.ndarray:
        morse, refs = unpack(x)
        pair = np.array([evaluate(morse, f)["energy"] for f in frames])
        return (pair + counts @ refs - e) / n_atoms

    # parameters in logs: positive by construction and of comparable scale
    res = least_squares(residuals, np.array(x0), x_scale="jac")
    morse, refs = unpack(res.x)
    rms = float(np.sqrt(np.mean(res.fun ** 2)))
    log.info("fit_morse: %s, rms residual %.4g eV/atom (%s)", morse.params, rms, res.message)
    return MorseFit(morse, dict(zip(symbols, map(float, refs))), rms, bool(res.success), str(res.message))
