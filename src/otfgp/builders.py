"""Builders of the objects an ``otfgp otf`` run is made of, from resolved config sections
(:func:`otfgp.config.validate_config`): the starting structure, its velocities, the ASE
integrator, the Gaussian-process model and the labeller.
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

    from .gp import GaussianProcess
    from .priors import Priors


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
        maxwell_boltzmann(atoms, md["temperature_K"], np.random.default_rng(md.get("seed", 0)))
        if md.get("zero_momentum", True):
            Stationary(atoms)


def build_dynamics(atoms: "Atoms", md: Mapping[str, Any]) -> "MolecularDynamics":
    """The ASE integrator of a resolved ``[md]`` section on ``atoms``: VelocityVerlet,
    Langevin (thermostat seeded by ``md["seed"] + 1``) or NPTBerendsen.

    Raises:
        ConfigError: an unknown integrator.
    """
    from ase import units

    dt = md["timestep_fs"] * units.fs
    kind = md["integrator"]
    if kind == "velocity_verlet":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if kind == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=md["temperature_K"], friction=md["friction"] / units.fs,
                        fixcm=False, rng=np.random.default_rng(md.get("seed", 0) + 1))
    if kind == "npt_berendsen":
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=md["temperature_K"],
                            pressure_au=md["pressure_bar"] * units.bar, taut=md["taut_fs"] * units.fs,
                            taup=md["taup_fs"] * units.fs,
                            compressibility_au=md["compressibility_per_bar"] / units.bar)
    raise ConfigError(f"md.integrator {kind!r} unknown")


def build_model(model: Mapping[str, Any]) -> "GaussianProcess":
    """The (untrained) GaussianProcess of a resolved ``[model]`` section.

    Raises:
        ConfigError: the model rejected a setting (e.g. an unknown species).
    """
    from .gp import GaussianProcess
    from .priors import Priors

    cutoffs = {k: model[k] for k in ("twobody", "threebody") if k in model}
    bounds = {k: tuple(v) for k, v in model.get("bounds", {}).items()} or None
    try:
        return GaussianProcess(model["species"], cutoffs, hyperparameters=model.get("hyperparameters"),
                               bounds=bounds, priors=build_priors(model))
    except ValueError as exc:
        raise ConfigError(f"[model]: {exc}") from exc


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
    (model files keep hyperparameters but neither priors nor optimisation bounds)."""
    from .gp import DEFAULT_BOUNDS, MAXIMUM_LIKELIHOOD_BOUNDS

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
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"[labeller]: {exc}") from exc
