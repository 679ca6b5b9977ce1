"""Builders of the objects an ``otfgp otf`` run is made of, from resolved config sections
(:func:`otfgp.config.validate_config`): the starting structure, its velocities, the ASE
integrator or optimizer, the Gaussian-process model and the labeller.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .config import ConfigError

if TYPE_CHECKING:  # ASE and the model are imported lazily: the CLI starts fast
    from ase import Atoms
    from ase.calculators.calculator import BaseCalculator
    from ase.md.md import MolecularDynamics
    from ase.optimize.optimize import Optimizer

    from .gp import GaussianProcess
    from .priors import Priors
    from .scalable import ScalableGP


def build_structure(st: Mapping[str, Any]) -> "Atoms":
    """The starting structure of a resolved ``[structure]`` section: a frame of a structure
    file, or an ``ase.build.bulk`` crystal; repeated, then jittered (seeded).

    Raises:
        ConfigError: ``ase.build.bulk`` rejected the lattice settings.
    """
    from ase.build import bulk
    from ase.io import read

    if "file" in st:
        atoms = read(st["file"], index=st.get("index", 0))
        atoms.calc = None
    else:
        kw = {k: st[k] for k in ("a", "c", "cubic", "orthorhombic") if k in st}
        try:
            atoms = bulk(st["element"], st["lattice"], **kw)
        except Exception as exc:
            raise ConfigError(f"structure: ase.build.bulk({st['element']!r}, {st['lattice']!r}) "
                              f"failed: {exc}") from exc
    atoms = atoms.repeat(tuple(st.get("repeat", (1, 1, 1))))
    if st.get("jitter", 0.0) > 0:
        rng = np.random.default_rng(st.get("seed", 0))
        atoms.positions += rng.uniform(-st["jitter"], st["jitter"], atoms.positions.shape)
    return atoms


def maxwell_boltzmann(atoms: "Atoms", temperature_K: float, rng: np.random.Generator) -> None:
    """Give ``atoms`` Maxwell-Boltzmann momenta at ``temperature_K`` drawn from ``rng``
    (ASE's ``thermalize_momenta`` since ASE 3.29, ``MaxwellBoltzmannDistribution`` before)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    else:
        thermalize_momenta(atoms, temperature_K, rng=rng)


def set_velocities(atoms: "Atoms", md: Mapping[str, Any]) -> None:
    """Maxwell-Boltzmann velocities at ``md["temperature_K"]`` (seeded by ``md["seed"]``;
    centre of mass at rest unless ``md["zero_momentum"]`` is false); none without a
    temperature."""
    from ase.md.velocitydistribution import Stationary

    if md.get("temperature_K"):
        if len(atoms) == 1 and md.get("zero_momentum", True):
            # 3N - 3 = 0 degrees of freedom: the thermostats divide by them (NaN positions)
            raise ConfigError("md.temperature_K: one atom with its momentum zeroed has no thermal motion "
                              "(0 degrees of freedom); repeat the cell (structure.repeat) or set "
                              "md.zero_momentum = false")
        maxwell_boltzmann(atoms, md["temperature_K"], np.random.default_rng(md.get("seed", 0)))
        if md.get("zero_momentum", True):
            Stationary(atoms)


def build_dynamics(atoms: "Atoms", md: Mapping[str, Any]) -> "MolecularDynamics | Optimizer":
    """The ASE dynamics of a resolved ``[md]`` section on ``atoms`` (see docs/config.md):
    an MD integrator (random thermostats seeded by ``md["seed"] + 1``) or an optimizer
    (``fmax`` set on it; with ``relax_cell`` on a ``FrechetCellFilter`` of the atoms).

    Raises:
        ConfigError: an unknown integrator, or ASE rejected the settings (e.g. Bussi on
            atoms at rest).
    """
    try:
        return _build_dynamics(atoms, md)
    except (ValueError, TypeError, NotImplementedError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"md.integrator {md['integrator']!r}: ASE rejected the settings: {exc}") from exc


def _build_dynamics(atoms: "Atoms", md: Mapping[str, Any]) -> "MolecularDynamics | Optimizer":
    from ase import units

    kind = md["integrator"]
    if kind in ("bfgs", "fire"):
        return _build_optimizer(atoms, md)
    dt = md["timestep_fs"] * units.fs
    temperature = md.get("temperature_K")
    rng = np.random.default_rng(md.get("seed", 0) + 1)
    taut = md.get("taut_fs", 0.0) * units.fs
    taup = md.get("taup_fs", 0.0) * units.fs
    pressure = md.get("pressure_bar", 0.0) * units.bar
    if kind == "velocity_verlet":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if kind == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=temperature, friction=md["friction"] / units.fs,
                        fixcm=False, rng=rng)
    if kind == "langevin_baoab":
        from ase.md.langevinbaoab import LangevinBAOAB

        from .dynamics_state import deferred_calculator

        with deferred_calculator(atoms):  # it evaluates forces when built; OTF refreshes them
            return LangevinBAOAB(atoms, dt, temperature_K=temperature, T_tau=taut, rng=rng)
    if kind == "bussi":
        from ase.md.bussi import Bussi

        return Bussi(atoms, dt, temperature_K=temperature, taut=taut, rng=rng)
    if kind == "nose_hoover_chain":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, dt, temperature_K=temperature, tdamp=taut)
    if kind == "npt":
        try:
            from ase.md.melchionna import MelchionnaNPT  # ase.md.npt.NPT is its deprecated name
        except ImportError:  # ASE < 3.27
            from ase.md.npt import NPT as MelchionnaNPT

        # pfactor = tau_P^2 B, B = 1 / compressibility (ASE's recommendation)
        bulk_modulus = units.bar / md["compressibility_per_bar"]
        return MelchionnaNPT(atoms, dt, temperature_K=temperature, externalstress=pressure, ttime=taut,
                             pfactor=taup ** 2 * bulk_modulus)
    if kind == "npt_berendsen":
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=temperature, pressure_au=pressure, taut=taut, taup=taup,
                            compressibility_au=md["compressibility_per_bar"] / units.bar)
    if kind == "isotropic_mtk_npt":
        from ase.md.nose_hoover_chain import IsotropicMTKNPT

        return IsotropicMTKNPT(atoms, dt, temperature_K=temperature, pressure_au=pressure, tdamp=taut,
                               pdamp=taup)
    raise ConfigError(f"md.integrator {kind!r} unknown")


def _build_optimizer(atoms: "Atoms", md: Mapping[str, Any]) -> "Optimizer":
    """BFGS or FIRE (no log file: OTF logs every step) on the atoms or a FrechetCellFilter."""
    from ase import units
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE

    target: Any = atoms
    if md.get("relax_cell"):
        target = FrechetCellFilter(atoms, scalar_pressure=md.get("pressure_bar", 0.0) * units.bar)
    opt = {"bfgs": BFGS, "fire": FIRE}[md["integrator"]](target, logfile=None)
    opt.fmax = md["fmax"]  # what OTF.run stops at (ASE's run(fmax=...) would set it)
    return opt


def build_model(model: Mapping[str, Any], environments: int | None = None) -> "GaussianProcess | ScalableGP":
    """The (untrained) model of a resolved ``[model]`` section: a GaussianProcess for
    ``kind = "exact"`` (and ``"auto"``, which the on-the-fly learner switches later: see
    :func:`otf_model_options`), a ScalableGP for ``kind = "scalable"`` -- and for
    ``"auto"`` when ``environments`` (the force environments about to be trained on,
    ``otfgp train``) exceed ``scalable_after``.

    The ScalableGP trains by maximum likelihood unless the section gives ``priors``
    explicitly (its default, docs/scalable.md; the exact GP's default is the priors).

    Raises:
        ConfigError: the model rejected a setting (e.g. an unknown species).
    """
    from .gp import GaussianProcess
    from .scalable import ScalableGP

    cutoffs = {k: model[k] for k in ("twobody", "threebody") if k in model}
    bounds = {k: tuple(v) for k, v in model.get("bounds", {}).items()} or None
    kind = model.get("kind", "exact")
    try:
        if kind == "scalable" or (kind == "auto" and environments is not None
                                  and environments > model["scalable_after"]):
            return ScalableGP(model["species"], cutoffs, hyperparameters=model.get("hyperparameters"),
                              bounds=bounds, priors=scalable_priors(model))
        baseline = build_baseline(model["baseline"]) if "baseline" in model else None
        return GaussianProcess(model["species"], cutoffs, hyperparameters=model.get("hyperparameters"),
                               bounds=bounds, priors=build_priors(model), baseline=baseline)
    except ValueError as exc:
        raise ConfigError(f"[model]: {exc}") from exc


def otf_model_options(model: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`otfgp.OTFOptions` a resolved ``[model]`` section sets: with ``kind =
    "auto"`` the automatic switch ``scalable_after``."""
    return {"scalable_after": model["scalable_after"]} if model.get("kind") == "auto" else {}


def scalable_priors(model: Mapping[str, Any]) -> "Priors | None":
    """The priors of a ScalableGP built from a resolved ``[model]`` section: none (maximum
    likelihood) unless ``priors`` is given."""
    return build_priors(model) if "priors" in model else None


def build_baseline(spec: Mapping[str, Any]) -> Any:
    """The baseline of a resolved ``[model.baseline]`` section: ``Morse``, ``LennardJones``,
    ``ZBL`` or a ``CalculatorBaseline`` (see docs/baselines.md).

    Raises:
        ConfigError: the parameters are rejected, or the calculator cannot be built.
    """
    from . import baselines

    kind = spec["kind"]
    try:
        if kind == "calculator":
            return baselines.CalculatorBaseline(spec=spec["spec"])
        if kind == "zbl":
            return baselines.ZBL(spec["cutoff"])
        cls = baselines.Morse if kind == "morse" else baselines.LennardJones
        return cls(spec["params"], spec["cutoff"], spec.get("pairs", {}))  # the model checks them
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"[model.baseline]: {exc}") from exc


def build_priors(model: Mapping[str, Any]) -> "Priors | None":
    """The hyperparameter priors of a resolved ``[model]`` section: ``None`` (maximum
    likelihood) for ``priors = false``, else the defaults with any [median, factor]
    overrides (log_std = ln(factor))."""
    from .priors import DEFAULT_PRIORS

    spec = model.get("priors", True)
    if spec is False:
        return None
    if spec is True:
        return DEFAULT_PRIORS
    return DEFAULT_PRIORS.with_overrides({k: (v[0], math.log(v[1])) for k, v in spec.items()})


def restore_hyperparameter_settings(gp: "GaussianProcess", model: Mapping[str, Any]) -> None:
    """Priors and bounds of a resolved ``[model]`` section on a model read from a file
    (model files keep hyperparameters but neither priors nor optimisation bounds). A
    ScalableGP's file keeps its bounds; it gets :func:`scalable_priors` for ``kind =
    "scalable"`` and none after the automatic switch (``kind = "auto"``), as it had."""
    from .gp import DEFAULT_BOUNDS, MAXIMUM_LIKELIHOOD_BOUNDS
    from .models import is_scalable

    if is_scalable(gp):
        gp.priors = scalable_priors(model) if model.get("kind") == "scalable" else None
        return
    gp.priors = build_priors(model)
    gp.bounds = dict(DEFAULT_BOUNDS if gp.priors is not None else MAXIMUM_LIKELIHOOD_BOUNDS)
    gp.bounds.update({k: (float(v[0]), float(v[1])) for k, v in model.get("bounds", {}).items()})


def build_labeller(spec: Mapping[str, Any], run_dir: str | os.PathLike) -> "BaseCalculator":
    """The labeller of a ``[labeller]`` section (:func:`otfgp.labellers.make_labeller`); pw.x
    works in ``run_dir/pw`` unless the section gives a directory.

    Raises:
        ConfigError: the labeller rejected a setting or a program/file it needs is missing.
    """
    from .labellers import make_labeller

    try:
        return make_labeller(spec, directory=Path(run_dir) / "pw")
    except (ValueError, TypeError, OSError, ImportError, AttributeError) as exc:  # a setting, a file, a module:function
        raise ConfigError(f"[labeller]: {exc}") from exc
