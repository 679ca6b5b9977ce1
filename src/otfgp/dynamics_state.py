"""How :class:`otfgp.OTF` drives each kind of ASE dynamics, and what of it a checkpoint holds.

OTF steps the dynamics itself (one ``dyn.step()`` per step) so that it can check the
uncertainty, call DFT and retrain between two steps. What ASE's own ``run()`` does around
``step()``, what a retrain means for a dynamics that keeps forces from an earlier step, and
the dynamics' internal state beyond positions, momenta and cell (which a checkpoint must
hold for a resumed run to continue exactly) are kept here, one entry per dynamics type:

=====================  ================================  ==========================================
dynamics               before a step / after a retrain   checkpointed (besides positions, momenta,
                                                         cell, step count)
=====================  ================================  ==========================================
VelocityVerlet,        - (forces are read at the step)   -
NVT/NPTBerendsen
Langevin, Bussi        -                                 random state (``rng``), Bussi's
                                                         transferred energy
LangevinBAOAB          after a retrain: re-read the      random state, cached accelerations and
                       cached accelerations (and cell    cell force, cell momentum
                       force)
NoseHooverChainNVT     before: its copy of positions     thermostat chain (eta, p_eta)
                       and momenta from the atoms (a
                       resume or a velocity rescale
                       changed them)
IsotropicMTKNPT        before: as NoseHooverChainNVT     thermostat and barostat chains, volume
                                                         strain and its momentum, reference cell
NPT (Melchionna)       before: ``initialize()`` the      h, h_past, q, q_past, q_future, eta,
                       first time, and again when the    eta_past, zeta, zeta_past, zeta_integrated,
                       atoms were changed from outside;  elapsed time
                       after a retrain: the next
                       positions and the momenta from
                       the new forces
BFGS                   after a retrain: the secant       Hessian, last positions and forces,
                       update that would mix the old     maxstep
                       and the new model is skipped
                       (the Hessian is kept)
FIRE                   - (FIRE's own uphill test         velocities, time step, mixing a, step
                       restarts it if the new forces     counter (and the downhill-check memory)
                       oppose its velocity)
=====================  ================================  ==========================================

Optimizers may work on a cell filter (``UnitCellFilter``, ``FrechetCellFilter``): its
reference cell is checkpointed too, and the calculator goes on the filter's atoms
(:func:`physical_atoms`).

Why BFGS keeps its Hessian after a retrain: the curvature learnt from the previous model is
a good guess for the new one (a retrain corrects the forces locally by about the model's
error); what is wrong is only the one secant pair whose two force vectors come from two
different models, and that update is the one skipped. A reset (ASE's ``initialize()``) would
restart from the conservative ``alpha`` Hessian after every DFT call.

A subclass is treated as its nearest known base class (its own extra state, if any, is not
checkpointed). Any other dynamics runs too, but only positions, momenta, cell, step count and
an ``rng`` attribute are checkpointed: :func:`check_supported` warns that a resume will not
continue it exactly.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from ase import Atoms

log = logging.getLogger(__name__)


class UncheckpointedDynamicsWarning(UserWarning):
    """The dynamics' internal state is not known to otfgp: a resume will not continue it exactly."""


# --------------------------------------------------------------------------- structure
def physical_atoms(dynamics: Any) -> Atoms:
    """The :class:`ase.Atoms` a dynamics moves: its ``atoms``, or the atoms under a filter
    (``FrechetCellFilter(atoms)``, ...) it works on."""
    obj = dynamics.atoms
    for _ in range(10):  # filters of filters; a cycle would be a bug elsewhere
        if isinstance(obj, Atoms):
            return obj
        obj = getattr(obj, "atoms", None)
        if obj is None:
            break
    raise TypeError(f"{type(dynamics).__name__} works on {type(dynamics.atoms).__name__}, which holds no "
                    "ase.Atoms (expected Atoms or a filter of Atoms)")


def is_optimizer(dynamics: Any) -> bool:
    """True for ASE optimizers (BFGS, FIRE, ...): they stop at ``fmax``, not after a time."""
    from ase.optimize.optimize import Optimizer

    return isinstance(dynamics, Optimizer)


def max_force(dynamics: Any) -> float:
    """The largest force of an optimizer's degrees of freedom (eV/A; with a cell filter the
    cell's generalised forces count too), the quantity ASE compares with ``fmax``."""
    opt = dynamics.optimizable
    return float(opt.gradient_norm(opt.get_gradient()))


@contextlib.contextmanager
def deferred_calculator(atoms: Atoms) -> Iterator[Atoms]:
    """Build a dynamics that evaluates forces in its constructor (``LangevinBAOAB``) on atoms
    that have no calculator yet::

        with deferred_calculator(atoms):
            dyn = LangevinBAOAB(atoms, dt, temperature_K=300, T_tau=100 * units.fs, rng=1)
        otf = OTF(dyn, model, labeller, ...)

    Inside the block the atoms carry a placeholder calculator (zero energy, forces and
    stress); OTF replaces it and makes the dynamics re-read its cached forces from the model
    before the first step (:func:`model_changed`). The atoms' previous calculator is back
    afterwards.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    before = atoms.calc
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, free_energy=0.0, forces=np.zeros((len(atoms), 3)),
                                       stress=np.zeros(6))
    try:
        yield atoms
    finally:
        atoms.calc = before


# --------------------------------------------------------------------------- per-type hooks
def _sync_copies(dyn: Any) -> None:
    """Nose-Hoover chain and MTK integrators keep their own copy of positions and momenta and
    write it back after every step: take it from the atoms, which a resume or a velocity
    rescale may have changed (a no-op otherwise)."""
    dyn._q = dyn.atoms.get_positions()
    dyn._p = dyn.atoms.get_momenta()


def _baoab_refresh(dyn: Any) -> None:
    """LangevinBAOAB keeps the accelerations (and cell force) of the end of its last step."""
    dyn._update_accel()
    if dyn.externalstress is not None:
        dyn._update_force_eps()


def _npt_momenta(dyn: Any) -> np.ndarray:
    """The momenta Melchionna NPT assigns to the atoms (central difference of its q arrays)."""
    return np.dot(dyn.q_future - dyn.q_past, dyn.h / (2 * dyn.dt)) * dyn._getmasses()


def _npt_before_step(dyn: Any) -> None:
    """Melchionna NPT is not self-starting: ``initialize()`` builds the previous time step
    (ASE's ``run()`` does it; a bare ``step()`` fails on ``h_past``). It integrates its own
    q arrays, so atoms changed from outside (a velocity rescale) re-initialise it too."""
    if not dyn.initialized:
        dyn.initialize()
        return
    atoms = dyn.atoms
    h = atoms.cell.array
    moved = (np.abs(h - dyn.h).max() > 1e-10
             or np.abs(np.dot(dyn.q + 0.5, h) - atoms.get_positions()).max() > 1e-10
             or not np.allclose(_npt_momenta(dyn), atoms.get_momenta(), rtol=1e-10, atol=1e-12))
    if moved:
        log.info("NPT: the atoms were changed since its last step; re-initialising it there")
        dyn.initialize()


def _npt_model_changed(dyn: Any) -> None:
    """The next positions (and the momenta derived from them) were computed with the
    previous model's forces: recompute them with the new ones."""
    if not dyn.initialized:
        return  # initialize() will use the current model
    dyn._calculate_q_future(dyn.forcecalculator())
    dyn.atoms.set_momenta(_npt_momenta(dyn))


def _bfgs_model_changed(dyn: Any) -> None:
    """Skip the secant update between the last step's forces (previous model) and this
    step's (new model): with the last positions and forces set to the current ones, BFGS's
    own update sees no displacement and keeps the Hessian as it is."""
    if getattr(dyn, "pos0", None) is None:
        return
    gradient = dyn.optimizable.get_gradient()
    dyn.pos0 = dyn.optimizable.get_x().ravel().copy()
    dyn.forces0 = -np.asarray(gradient).ravel().copy()


def _fire_model_changed(dyn: Any) -> None:
    """FIRE's optional downhill check compares energies: the previous one is of the old model."""
    if getattr(dyn, "downhill_check", False) and getattr(dyn, "vel", None) is not None:
        dyn.e_last = dyn.optimizable.get_value()


def _get_bfgs_hessian(dyn: Any) -> Any:
    if "state" in vars(dyn):  # ASE >= 3.27: the Hessian lives in a BFGSMethod
        return None if dyn.state is None else dyn.state.hessian
    return dyn.H


def _set_bfgs_hessian(dyn: Any, hessian: Any) -> None:
    if "state" in vars(dyn):
        dyn.state = None
        if hessian is not None:
            dyn.update(None, None, None, None)  # BFGS's own way to create its state (from H0)
            dyn.state.hessian = np.array(hessian, dtype=float)
    else:
        dyn.H = hessian


@dataclass(frozen=True)
class _Handler:
    """What OTF does with one dynamics type: ``attributes`` (dotted paths) are checkpointed
    and restored as they are; ``special`` are (name, getter, setter) for state that is not a
    plain attribute; the hooks run before every step and after every retrain."""

    attributes: tuple[str, ...] = ()
    special: tuple[tuple[str, Callable[[Any], Any], Callable[[Any, Any], None]], ...] = ()
    before_step: Callable[[Any], None] | None = None
    model_changed: Callable[[Any], None] | None = None


_NHC_THERMOSTAT = ("_thermostat._eta", "_thermostat._p_eta")
_MELCHIONNA = _Handler(
    attributes=("initialized", "h", "h_past", "inv_h", "q", "q_past", "q_future", "eta", "eta_past", "zeta",
                "zeta_past", "zeta_integrated", "timeelapsed"),
    before_step=_npt_before_step, model_changed=_npt_model_changed)


@functools.lru_cache(maxsize=None)
def _handlers() -> tuple[tuple[type, _Handler], ...]:
    """(class, handler) of every dynamics type this ASE has; imported on first use."""
    import importlib

    table = [
        ("ase.md.verlet", "VelocityVerlet", _Handler()),
        ("ase.md.langevin", "Langevin", _Handler()),
        ("ase.md.bussi", "Bussi", _Handler(attributes=("transferred_energy",))),
        ("ase.md.nvtberendsen", "NVTBerendsen", _Handler()),
        ("ase.md.langevinbaoab", "LangevinBAOAB", _Handler(
            attributes=("accel", "force_eps", "p_eps", "gamma_mod"), model_changed=_baoab_refresh)),
        ("ase.md.nose_hoover_chain", "NoseHooverChainNVT", _Handler(
            attributes=_NHC_THERMOSTAT, before_step=_sync_copies)),
        ("ase.md.nose_hoover_chain", "IsotropicMTKNPT", _Handler(
            attributes=_NHC_THERMOSTAT + ("_barostat._xi", "_barostat._p_xi", "_eps", "_p_eps", "_cell0",
                                          "_volume0"),
            before_step=_sync_copies)),
        ("ase.md.melchionna", "MelchionnaNPT", _MELCHIONNA),
        ("ase.md.npt", "NPT", _MELCHIONNA),  # older ASE: the class itself (newer: a MelchionnaNPT subclass)
        ("ase.optimize.bfgs", "BFGS", _Handler(
            attributes=("pos0", "forces0", "maxstep"),
            special=(("hessian", _get_bfgs_hessian, _set_bfgs_hessian),), model_changed=_bfgs_model_changed)),
        ("ase.optimize.fire", "FIRE", _Handler(
            attributes=("vel", "dt", "a", "Nsteps", "e_last", "r_last", "vel_last"),
            model_changed=_fire_model_changed)),
    ]
    out: list[tuple[type, _Handler]] = []
    for module, name, handler in table:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # not in this ASE version
            continue
        out.append((cls, handler))
    return tuple(out)


def _handler(dynamics: Any) -> tuple[type, _Handler] | None:
    """The entry of the nearest known class in the dynamics' MRO (None: unknown type)."""
    table = dict(_handlers())
    for cls in type(dynamics).__mro__:
        if cls in table:
            return cls, table[cls]
    return None


def check_supported(dynamics: Any) -> bool:
    """True if the dynamics' type is known; otherwise warn that its internal state is not
    checkpointed (the run works, but a resume does not continue it exactly)."""
    if _handler(dynamics) is not None:
        return True
    warnings.warn(
        f"otfgp does not know the internal state of {type(dynamics).__name__}: checkpoints hold its "
        f"positions, momenta, cell, step count and random state (an 'rng' attribute) only, so a resumed "
        f"run will not continue it exactly (supported: "
        f"{', '.join(sorted({c.__name__ for c, _ in _handlers()}))})", UncheckpointedDynamicsWarning,
        stacklevel=3)
    return False


def before_step(dynamics: Any) -> None:
    """What the dynamics needs before :meth:`step` that ASE's ``run()`` would have done."""
    entry = _handler(dynamics)
    if entry is not None and entry[1].before_step is not None:
        entry[1].before_step(dynamics)


def model_changed(dynamics: Any) -> None:
    """The calculator now gives other forces at the current positions (a retrain, or the
    first model of the run): drop what the dynamics kept from the previous ones."""
    entry = _handler(dynamics)
    if entry is not None and entry[1].model_changed is not None:
        entry[1].model_changed(dynamics)


# --------------------------------------------------------------------------- checkpoint state
def _encode(value: Any) -> Any:
    """A JSON value that :func:`_decode` turns back into ``value`` exactly (floats are
    written by ``json`` as their shortest round-trip repr)."""
    from ase.cell import Cell

    if isinstance(value, Cell):  # NPT's h before its first step; restored as the array it becomes
        value = value.array
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "ndarray" in value:
        return np.array(value["ndarray"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])
    return value


def _get_path(obj: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if not hasattr(obj, part):
            return False, None
        obj = getattr(obj, part)
    return True, obj


def _set_path(obj: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def rng_state(rng: Any) -> Any:
    """JSON-able state of a numpy ``Generator`` or legacy ``RandomState`` (None otherwise)."""
    if rng is None:
        return None
    if isinstance(rng, np.random.Generator):
        return {"kind": "generator", "state": rng.bit_generator.state}
    if hasattr(rng, "get_state"):
        state = rng.get_state()
        return {"kind": "legacy", "state": [state[0], state[1].tolist(), *state[2:]]}
    return None


def set_rng_state(rng: Any, saved: Any) -> None:
    """Restore a state of :func:`rng_state`."""
    if rng is None or saved is None:
        return
    if saved["kind"] == "generator":
        rng.bit_generator.state = saved["state"]
    else:
        s = saved["state"]
        rng.set_state((s[0], np.array(s[1], dtype=np.uint32), *s[2:]))


def _filter_of(dynamics: Any) -> Any:
    """The cell filter an optimizer works on, or None."""
    from ase.filters import UnitCellFilter

    obj = getattr(dynamics, "atoms", None)
    return obj if isinstance(obj, UnitCellFilter) else None


def get_state(dynamics: Any) -> dict[str, Any]:
    """The dynamics' internal state as JSON-able data (``type``: the class whose handler
    applies, None when unknown; its ``attributes``; a cell filter's reference cell).

    The random state of an ``rng`` attribute is not part of it: checkpoints keep that under
    their own key (``thermostat_rng``), as before this module existed."""
    entry = _handler(dynamics)
    state: dict[str, Any] = {"type": None if entry is None else entry[0].__name__, "attributes": {}}
    if entry is not None:
        cls, handler = entry
        for path in handler.attributes:
            found, value = _get_path(dynamics, path)
            if found:
                state["attributes"][path] = _encode(value)
        for name, getter, _ in handler.special:
            state["attributes"][name] = _encode(getter(dynamics))
    cell_filter = _filter_of(dynamics)
    if cell_filter is not None:
        state["filter_orig_cell"] = _encode(np.array(cell_filter.orig_cell))
    return state


def set_state(dynamics: Any, state: dict[str, Any] | None) -> None:
    """Restore a state of :func:`get_state` onto a dynamics built like the original one.

    Raises:
        ValueError: the state belongs to another dynamics type (the resumed dynamics must
            be built like the original one).
    """
    entry = _handler(dynamics)
    if state is None:  # a checkpoint written before dynamics states were kept
        if entry is not None and (entry[1].attributes or entry[1].special):
            log.warning("the checkpoint predates dynamics states: %s's internal variables start afresh "
                        "(the resumed run will not repeat the original one exactly)", type(dynamics).__name__)
        return
    known = {c.__name__: h for c, h in _handlers()}
    if known.get(state.get("type")) is not (None if entry is None else entry[1]):  # NPT = MelchionnaNPT
        raise ValueError(f"the checkpoint holds the state of a {state.get('type') or 'dynamics unknown to otfgp'}, "
                         f"but the dynamics given is a {type(dynamics).__name__}: build it like the original one")
    attributes = state.get("attributes", {})
    if entry is not None:
        handler = entry[1]
        for path in handler.attributes:
            if path in attributes:
                _set_path(dynamics, path, _decode(attributes[path]))
        for key, _, setter in handler.special:
            if key in attributes:
                setter(dynamics, _decode(attributes[key]))
    cell_filter = _filter_of(dynamics)
    if cell_filter is not None and "filter_orig_cell" in state:
        cell_filter.orig_cell = _decode(state["filter_orig_cell"])
