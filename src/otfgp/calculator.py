"""ASE calculator: GP energies, forces and stress with their uncertainties."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .arguments import count
from .gp import GaussianProcess


STD_PROPERTIES: tuple[str, ...] = (
    "force_stds", "latent_force_stds", "epistemic_force_stds",
    "energies_stds", "latent_energies_stds", "epistemic_energies_stds",
    "energy_std", "latent_energy_std", "stress_stds", "latent_stress_stds", "epistemic_stress_stds",
)
"""The uncertainty results of :class:`GPCalculator` (also through ``get_property``)."""

_EXACT_ONLY = ("energy_std", "latent_energy_std", "stress_stds", "latent_stress_stds",
               "epistemic_stress_stds")  # the mapped variance has none


class GPCalculator(Calculator):
    """An ASE calculator backed by an otfgp :class:`~otfgp.GaussianProcess`.

    Besides the standard properties, ``calc.results`` holds the predictive standard
    deviations whenever they are computed. They are the *reported* stds: the model's
    calibration (:attr:`GaussianProcess.calibration`) applied to the GP's latent variance,
    which without a calibration is latent + label noise (see :class:`otfgp.gp.Prediction`):

    - ``force_stds`` (N x 3, eV/A), also copied into ``atoms.arrays["force_stds"]`` so
      that ``ase.io.write`` (extxyz) stores it with the frame; ``latent_force_stds`` the
      latent (noise-free GP) part;
    - ``energies_stds`` (N, eV), the local energies' reported stds, and
      ``latent_energies_stds``;
    - ``energy_std`` (eV) and ``stress_stds`` (6, eV/A^3), and their latent parts
      ``latent_energy_std`` and ``latent_stress_stds`` (exact variance only).

    All of them (:data:`STD_PROPERTIES`) are implemented properties:
    ``calc.get_property("force_stds", atoms)`` computes them when the last calculation did
    not (also with ``uncertainty=False`` or between ``uncertainty_every`` steps; the exact
    variance for ``energy_std`` and the stress stds). ``repr(calc)`` and ``calc.todict()``
    describe the model (species, cutoffs, training-set size, mapped, calibrated); the
    calculator, like its model, pickles and deep-copies.

    A mapped model (:meth:`GaussianProcess.map`) gives the mean from its spline tables and,
    by default, the mapped force and local-energy uncertainty, whose cost does not grow with
    the training set.

    ``stresses`` (per-atom, N x 6 Voigt, summing to ``stress``) are the clusters' virials
    shared among their centre atoms; they cost an extra pass and are computed only when
    asked for.

    Args:
        model: a trained GaussianProcess or ScalableGP.
        uncertainty: ``True`` (the mapped force std if the model has variance maps, else
            the exact variances, which cost about 10x the exact mean), ``"exact"``,
            ``"mapped"`` or ``False``.
        uncertainty_every: compute them only on every n-th calculation (the others carry
            no ``force_stds``), e.g. to monitor a long MD run cheaply.
    """

    # ASE's get_property serves any name listed here (its all_properties list is only the
    # standard names that trajectories and databases store, and is not ours to extend), so
    # calc.get_property("force_stds", atoms) works; the extxyz writer stores force_stds
    # through atoms.arrays.
    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "stresses",
                              *STD_PROPERTIES]
    default_parameters: dict[str, Any] = {}

    def __init__(self, model: GaussianProcess, uncertainty: bool | str = True, uncertainty_every: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from .models import is_scalable

        if not (isinstance(model, GaussianProcess) or is_scalable(model)):
            raise TypeError(f"model must be an otfgp.GaussianProcess or otfgp.ScalableGP, got {type(model).__name__}")
        count("uncertainty_every", uncertainty_every)
        self.model = model
        if not isinstance(uncertainty, (bool, np.bool_)) and uncertainty not in ("auto", "exact", "mapped"):
            raise ValueError(f"uncertainty must be True, False, 'auto', 'exact' or 'mapped', got {uncertainty!r}")
        self.uncertainty: bool | str = uncertainty if isinstance(uncertainty, str) else bool(uncertainty)
        self.uncertainty_every = int(uncertainty_every)
        self.n_calculations = 0

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = tuple(all_changes)) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms if atoms is None else atoms
        mode: bool | str = self.uncertainty
        if self.n_calculations % self.uncertainty_every != 0:
            mode = False
        asked = [p for p in properties if p in STD_PROPERTIES]
        if asked and not mode:  # an explicit request (get_property) is always served
            mode = self.uncertainty or True
        if any(p in _EXACT_ONLY for p in asked):
            mode = "exact"
        want_var = bool(mode)
        self.n_calculations += 1
        pred = self.model.predict(self.atoms, variance=mode)
        self.results = {
            "energy": pred.energy,
            "free_energy": pred.energy,
            "energies": pred.local_energies.copy(),
            "forces": pred.forces.copy(),
        }
        if self.atoms.pbc.all() and self.atoms.cell.volume > 1e-8:
            self.results["stress"] = pred.stress.copy()
            if "stresses" in properties:
                self.results["stresses"] = self.model.per_atom_stresses(self.atoms)
        if want_var:
            force_stds = pred.force_stds
            self.results["force_stds"] = force_stds
            self.results["latent_force_stds"] = pred.latent_force_stds
            self.results["energies_stds"] = pred.local_energy_stds
            self.results["latent_energies_stds"] = pred.latent_local_energy_stds
            self.results["epistemic_force_stds"] = pred.epistemic_force_stds
            self.results["epistemic_energies_stds"] = pred.epistemic_local_energy_stds
            if np.isfinite(pred.energy_variance):  # NaN for the mapped (force, local energy) variance
                self.results["energy_std"] = pred.energy_std
                self.results["latent_energy_std"] = pred.latent_energy_std
                if "stress" in self.results:
                    self.results["stress_stds"] = pred.stress_stds
                    self.results["latent_stress_stds"] = pred.latent_stress_stds
                    self.results["epistemic_stress_stds"] = pred.epistemic_stress_stds
            atoms.arrays["force_stds"] = force_stds.copy()
        elif "force_stds" in atoms.arrays:
            del atoms.arrays["force_stds"]  # stale values must not be written with this frame

    def describe(self) -> dict[str, Any]:
        """The model and settings behind this calculator as plain JSON types."""
        m = self.model
        return {
            "model": f"otfgp.{type(m).__name__}",
            "species": m.species,
            "cutoffs": m.cutoffs,
            "trained": m.trained,
            "training_structures": m.n_training_structures,
            "training_environments": m.n_training_environments,
            "training_labels": m.n_labels,
            "hyperparameters": m.hyperparameters,
            # a ScalableGP is its own map (mean and variance are basis expansions)
            "mapped": getattr(m, "mapped_by_construction", False) or m.mapped,
            "variance_maps": getattr(m, "mapped_by_construction", False) or m.has_variance_maps,
            "calibrated": m.calibration is not None,
            "uncertainty": self.uncertainty,
            "uncertainty_every": self.uncertainty_every,
        }

    def todict(self, skip_default: bool = True) -> dict[str, Any]:
        """:meth:`describe`: what ASE stores as the calculator's parameters (trajectories,
        databases). The model itself is not in it; save it with ``model.save``."""
        return self.describe()

    def __repr__(self) -> str:
        return f"GPCalculator(model={self.model!r}, uncertainty={self.uncertainty!r}, " \
               f"uncertainty_every={self.uncertainty_every})"
