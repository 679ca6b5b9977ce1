"""A 2+3-body GP whose training cost is linear in the data: the reduced-rank basis model.

The exact GP (:class:`otfgp.GaussianProcess`) writes the energy as a sum of a pair function
and a triplet function, each a GP with the squared-exponential kernel. Here each
cutoff-free cluster function is written in a fixed B-spline basis instead -- the basis of
the mapped variance (:mod:`otfgp.mapping`): cubic B-splines for pairs, quadratic tensor
products for triplets, one coefficient per edge-permutation orbit -- and the coefficients
w get the Gaussian prior that makes the function values at the basis points the exact
GP's: cov(w) = Q K Q^T with K the SE kernel (summed over the type's edge permutations)
between the basis points and Q the interpolation operator. Every label is then a linear
functional of w, one row of a design matrix Phi built by the C++ core
(``cpp/core/basis_design.cpp``) that does not depend on the hyperparameters.

The SE prior on a fine basis is numerically low rank, so the coefficients are projected
once (at the first data) onto the prior's significant eigenvectors at the smallest allowed
length scales: w = V w_r with V fixed, the prior of w_r is V^T S V, and below Phi means
Phi V and S means V^T S V.

Training keeps only coefficient-space statistics per label kind k (forces, energies,
stresses): G_k = Phi_k^T Phi_k, b_k = Phi_k^T y_k, y_k^T y_k and the label count, so
adding data is a rank update and memory is rank^2, whatever the number of labels. With
Lambda the label noise and S = cov(w), G = sum G_k / s_k^2 and b = sum b_k / s_k^2,

    log p(y) = -1/2 [y^T Lambda^-1 y - b^T P b + log|I + L^T G L| + log|Lambda| + n log 2 pi]

with S = L L^T and P = (S^-1 + G)^-1 = L (I + L^T G L)^-1 L^T the posterior covariance of
w (never S^-1: the SE prior on a fine grid is numerically singular). Its gradient is
1/2 [u^T dS u - tr((G - G P G) dS)] with u = b - G P b for the prior's sigma and ell, and
closed-form for the noises; each evaluation costs O(basis^3), independent of the labels.

The per-species energy offsets are fitted to the energy labels by least squares on the
compositions, as in the exact GP (from accumulated normal equations).

Scope of this first step: single- and multi-species bases are built alike (one pair block
per species pair, one triplet block per species triple; up to :data:`MAX_COEFFICIENTS`),
maximum-likelihood training by default (optionally MAP with the exact GP's priors); no
analytic baseline; the LAMMPS export is :mod:`otfgp.scalable_maps`; see ``docs/scalable.md``.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.linalg
from ase import Atoms
from ase.data import chemical_symbols
from ase.neighborlist import neighbor_list

from . import _core
from .calibration import (ModelCalibration, SamplePool, epistemic_variances, model_calibration,
                          neighbourhood_scale_values, scale_radius)
from .gp import (AT_BOUND_FRACTION, DEFAULT_BOUNDS, DEFAULT_HYPERPARAMETERS, HYPERPARAMETER_NAMES,
                 MAXIMUM_LIKELIHOOD_BOUNDS, OptimizationReport, Prediction, _label_atom_indices,
                 check_hyperparameter_names, check_train_arguments, energy_stress_labels, exit_state,
                 hyperparameter_values, label_flag, minimize_hyperparameters, model_cutoffs, model_species,
                 refit_offsets)
from .priors import LogNormal, Priors, log_prior
from .mapping import LOWER_MARGIN, _basis_points

log = logging.getLogger(__name__)

#: Default grid nodes per axis: pairs (cubic) and triplets (quadratic).
DEFAULT_NODES2 = 48
DEFAULT_NODES3 = 12
#: Triplet nodes per axis by species count when nodes3 is not given: the basis grows as
#: species^3 x nodes3^3, and these keep one likelihood evaluation at 0.1 / 1.7 / 5.6 s (one
#: core; docs/scalable.md). Four species do not fit (4560 coefficients even at 6 nodes).
AUTO_NODES3 = {1: DEFAULT_NODES3, 2: 8, 3: 6}
#: The length scales are bounded below by this many basis node spacings: a shorter length
#: scale than the basis resolves would be a different model, not a better fit.
MIN_ELL_PER_SPACING = 2.5
#: Training environments above which on-the-fly learning with ``[model] kind = "auto"``
#: switches from the exact GP to this model (otfgp.OTFOptions.scalable_after), and above
#: which ``otfgp train`` builds this model: from about 100 environments on the scalable model
#: made from the same data is as accurate as the exact GP, whose optimised retrain then
#: takes seconds per DFT call and grows as N^2-N^3 (docs/scalable.md has the measurements).
AUTO_SWITCH_ENVIRONMENTS = 150
#: Rows buffered before they are folded into the statistics (one matrix product per batch).
FLUSH_ROWS = 4096
#: Relative jitter on the diagonal of the coefficient prior (in units of the block's signal
#: variance): keeps the Cholesky factor of a numerically singular SE prior finite; 1e-10
#: changes predictions by far less than the basis error.
PRIOR_JITTER = 1e-10
#: Default relative eigenvalue cut of the fixed low-rank projection of the prior.
RANK_TOLERANCE = 1e-9
FILE_FORMAT = "otfgp-scalable-1"
#: Format of files with the on-the-fly learner's state (calibration, per-structure energy
#: rows, environment count); files of FILE_FORMAT still load.
FILE_FORMAT_2 = "otfgp-scalable-2"
#: Largest basis accepted: the prior's blocks are built and eigendecomposed at full size
#: (basis^2 memory per block, basis^3 time), and one likelihood evaluation costs about
#: rank^3 (a few seconds at this size on one core; docs/scalable.md).
MAX_COEFFICIENTS = 4000
_KINDS = ("noise_force", "noise_energy", "noise_stress")


@dataclass
class _Statistics:
    """Coefficient-space sufficient statistics of the labels, per kind (force, energy,
    stress): G = Phi^T Phi, b = Phi^T y, yy = y^T y, n; and for the energy offsets the
    compositions' normal equations (AtA, Aty) and Phi_E^T A."""

    columns: int
    n_species: int
    G: np.ndarray = field(init=False)
    b: np.ndarray = field(init=False)
    yy: np.ndarray = field(init=False)
    n: np.ndarray = field(init=False)
    PhiA: np.ndarray = field(init=False)
    AtA: np.ndarray = field(init=False)
    Aty: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        B, ns = self.columns, self.n_species
        self.G = np.zeros((3, B, B))
        self.b = np.zeros((3, B))
        self.yy = np.zeros(3)
        self.n = np.zeros(3, dtype=np.int64)
        self.PhiA = np.zeros((B, ns))
        self.AtA = np.zeros((ns, ns))
        self.Aty = np.zeros(ns)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("G", "b", "yy", "n", "PhiA", "AtA", "Aty")}


class ScalableGP:
    """Reduced-rank 2+3-body GP (see the module docstring); the API of
    :class:`otfgp.GaussianProcess` for adding data, training, predicting and saving.

    Args:
        species: chemical symbols or atomic numbers.
        cutoffs: ``{"twobody": r2, "threebody": r3}`` (Angstrom); leave a key out to drop
            that body order.
        hyperparameters: any subset of :data:`otfgp.gp.HYPERPARAMETER_NAMES`.
        bounds: optimisation bounds overriding :data:`otfgp.gp.MAXIMUM_LIKELIHOOD_BOUNDS`
            (with priors: :data:`otfgp.gp.DEFAULT_BOUNDS`); the length scales are also kept
            above :data:`MIN_ELL_PER_SPACING` node spacings.
        priors: hyperparameter priors (:class:`otfgp.priors.Priors`) for maximum a
            posteriori training, with the data-dependent signal medians of
            :meth:`otfgp.GaussianProcess.prior_medians`; ``None`` (default): maximum
            likelihood (docs/scalable.md has the measurements behind the default).
        rank_tolerance: the coefficients are projected, once, onto the eigenvectors of each
            block's prior at the smallest allowed length scale whose eigenvalues exceed this
            fraction of the largest (the SE prior on a fine basis is numerically low rank);
            ``None``: no projection. The projection is fixed, so gradients stay exact.
        lower: lower end of the basis (A); default: the shortest distance of the first
            training structure minus :data:`otfgp.mapping.LOWER_MARGIN`. Training clusters
            below it are an error; predictions there are extrapolated with a warning.
        nodes2, nodes3: basis nodes per axis over [lower, cutoff] for pairs and triplets
            (nodes3 default: :data:`AUTO_NODES3` by species count).
    """

    def __init__(self, species: Sequence[str | int], cutoffs: Mapping[str, float],
                 hyperparameters: Mapping[str, float] | None = None,
                 bounds: Mapping[str, tuple[float, float]] | None = None, lower: float | None = None,
                 nodes2: int = DEFAULT_NODES2, nodes3: int | None = None,
                 priors: Priors | None = None, rank_tolerance: float | None = RANK_TOLERANCE) -> None:
        self._numbers = model_species(species)
        self._r2, self._r3 = model_cutoffs(cutoffs)
        hyp = dict(DEFAULT_HYPERPARAMETERS)
        hyp.update(hyperparameter_values(hyperparameters or {}))
        self._hyp = hyp
        if priors is not None and not isinstance(priors, Priors):
            raise TypeError(f"priors must be an otfgp.priors.Priors or None, got {type(priors).__name__}")
        self.priors = priors
        self.evaluations = 0  # likelihood evaluations of the last optimisation
        self.bounds: dict[str, tuple[float, float]] = dict(
            MAXIMUM_LIKELIHOOD_BOUNDS if priors is None else DEFAULT_BOUNDS)
        self._check_names(bounds or {})
        self.bounds.update({k: (float(a), float(b)) for k, (a, b) in (bounds or {}).items()})
        if nodes3 is None:
            nodes3 = AUTO_NODES3.get(len(self._numbers), min(AUTO_NODES3.values()))
        self._nodes = (int(nodes2), int(nodes3))
        if rank_tolerance is not None and not (0 <= rank_tolerance < 1):
            raise ValueError(f"rank_tolerance must be in [0, 1) or None, got {rank_tolerance!r}")
        self._rank_tolerance = rank_tolerance
        self._lower = None if lower is None else float(lower)
        self._design: Any = None
        self._stats: _Statistics | None = None
        self._buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered_rows = 0
        self._n_structures = 0
        self._solution: dict[str, np.ndarray] | None = None
        self._offsets = np.zeros(len(self._numbers))
        self._n_environments = 0
        # per training structure: its projected energy design row and composition (the
        # energy reference of a model trained without energy labels needs E_GP of each;
        # rank + species numbers per structure, linear in the data)
        self._energy_rows: list[np.ndarray] = []
        self._structure_compositions: list[np.ndarray] = []
        self._calibration: ModelCalibration | None = None
        self.last_optimization: OptimizationReport | None = None
        size = _core.BasisDesign(len(self._numbers), self._r2, self._r3, 1.0 if lower is None else float(lower),
                                 *self._nodes).columns
        if size > MAX_COEFFICIENTS:
            raise ValueError(
                f"the basis is too large: {size} coefficients for {len(self._numbers)} species with "
                f"nodes2={nodes2}, nodes3={nodes3} (limit {MAX_COEFFICIENTS}); use fewer triplet nodes "
                f"(the size grows as species^3 x nodes3^3, docs/scalable.md)")
        if lower is not None:
            self._make_design(float(lower))

    @classmethod
    def from_gaussian_process(cls, gp: Any, **kwargs: Any) -> "ScalableGP":
        """A scalable model with ``gp``'s species, cutoffs, hyperparameters and training
        data (untrained: call :meth:`train`), e.g. to continue once the exact GP gets slow.
        ``kwargs`` go to the constructor (``lower``, ``nodes2``, ``nodes3``, ``priors``, ...);
        ``lower`` defaults to the shortest distance of all of ``gp``'s training structures
        minus ``lower_margin`` (A; default :data:`otfgp.mapping.LOWER_MARGIN`), so that later
        data (hotter MD) has room below what was seen.

        Raises:
            NotImplementedError: ``gp`` has an analytic baseline (not yet supported here).
        """
        if gp.baseline is not None:
            raise NotImplementedError("ScalableGP does not support analytic baselines yet; "
                                      "this GaussianProcess has one")
        kwargs.setdefault("hyperparameters", gp.hyperparameters)
        margin = float(kwargs.pop("lower_margin", LOWER_MARGIN))
        structures = [gp.training_structure(i) for i in range(gp.n_training_structures)]
        if "lower" not in kwargs and structures:
            cut = max(gp.cutoffs.values())
            shortest = min((float(d.min()) for d in (neighbor_list("d", s["atoms"], cut) for s in structures)
                            if len(d)), default=cut)
            kwargs["lower"] = max(0.5, shortest - margin)
        model = cls(gp.species, gp.cutoffs, **kwargs)
        for d in structures:
            forces = None
            if len(d["force_atoms"]):
                forces = np.zeros((len(d["atoms"]), 3))
                forces[d["force_atoms"]] = d["forces"]
            model.add_training_data(d["atoms"], forces=False if forces is None else forces,
                                    energy=False if d["energy"] is None else d["energy"],
                                    stress=False if d["stress"] is None else d["stress"],
                                    atom_indices=d["force_atoms"] if forces is not None else None)
        return model

    # ----------------------------------------------------------------- properties
    _check_names = staticmethod(check_hyperparameter_names)

    @property
    def species(self) -> list[str]:
        """Chemical symbols of the species the model knows."""
        return [chemical_symbols[z] for z in self._numbers]

    @property
    def cutoffs(self) -> dict[str, float]:
        """The 2- and 3-body cutoffs (A) of the enabled body orders."""
        out = {}
        if self._r2 > 0:
            out["twobody"] = self._r2
        if self._r3 > 0:
            out["threebody"] = self._r3
        return out

    @property
    def hyperparameters(self) -> dict[str, float]:
        """Current hyperparameters (a copy); assigning any subset untrains the model."""
        return dict(self._hyp)

    @hyperparameters.setter
    def hyperparameters(self, values: Mapping[str, float]) -> None:
        self._hyp.update(hyperparameter_values(values))
        self._solution = None

    @property
    def energy_offsets(self) -> dict[str, float]:
        """Per-species energy offsets fitted to the energy labels (zero without them)."""
        return dict(zip(self.species, map(float, self._offsets)))

    @property
    def n_labels(self) -> int:
        """Number of training labels (force components, energies, stress components)."""
        return int(self._stats.n.sum() if self._stats is not None else 0) + self._buffered_rows

    @property
    def n_training_structures(self) -> int:
        return self._n_structures

    @property
    def n_coefficients(self) -> int:
        """Size of the basis (the model's cost is O(n_coefficients^3) per evaluation)."""
        return 0 if self._design is None else int(self._design.columns)

    @property
    def rank(self) -> int:
        """Number of projected coefficients the statistics and the algebra work with
        (O(rank^3) per likelihood evaluation, 8 x 3 x rank^2 bytes of statistics)."""
        return 0 if self._design is None else int(self._V.shape[1])

    @property
    def lower(self) -> float | None:
        """Lower end of the basis (A), fixed by the first training structure unless given."""
        return self._lower

    @property
    def trained(self) -> bool:
        return self._solution is not None

    @property
    def calibration(self) -> ModelCalibration | None:
        """The installed variance calibration (:class:`otfgp.calibration.ModelCalibration`),
        or None (uncalibrated: latent + noise variance)."""
        return self._calibration

    @calibration.setter
    def calibration(self, value: ModelCalibration | None) -> None:
        if value is not None and not isinstance(value, ModelCalibration):
            raise TypeError(f"calibration must be a ModelCalibration or None, got {type(value).__name__}")
        self._calibration = value

    #: The mean and variance are basis expansions already: there is nothing to map (the
    #: on-the-fly learner and ``otfgp train`` skip :meth:`otfgp.GaussianProcess.map` for it).
    mapped_by_construction = True

    @property
    def n_training_environments(self) -> int:
        """Number of force-labelled atoms (environments) added."""
        return self._n_environments

    @property
    def has_energy_labels(self) -> bool:
        """True if any training structure was added with its energy."""
        return self.n_labels > 0 and bool(self._stats.n[1] > 0 or any(np.any(b[1] == 1) for b in self._buffer))

    def copy(self) -> "ScalableGP":
        """An independent copy (data, solution, calibration)."""
        import copy

        return copy.deepcopy(self)

    def __getstate__(self) -> dict[str, Any]:
        # the C++ design object does not pickle; it is rebuilt from lower and the nodes
        state = dict(self.__dict__)
        state["_design"] = None
        state.pop("_tables", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._lower is not None:
            self._design = _core.BasisDesign(len(self._numbers), self._r2, self._r3, self._lower, *self._nodes)
            self._tables = self._design.tables()
            self._table_columns()

    # ----------------------------------------------------------------- data
    def _make_design(self, lower: float) -> None:
        self._lower = lower
        self._design = _core.BasisDesign(len(self._numbers), self._r2, self._r3, lower, *self._nodes)
        self._tables = self._design.tables()
        self._set_projection(self._projection())

    def _projection(self) -> np.ndarray:
        """The fixed projection V (basis x rank, block diagonal by table): per block the
        prior's eigenvectors, at unit signal and the smallest allowed length scale (the
        richest prior the optimiser may reach), above rank_tolerance of the largest."""
        B = self.n_coefficients
        if self._rank_tolerance is None:
            return np.eye(B)
        b = self.effective_bounds()
        floor = {"sigma2": 1.0, "sigma3": 1.0, "ell2": b["ell2"][0], "ell3": b["ell3"][0]}
        blocks = []
        for t, block, _ in self._prior_blocks(floor, grad=False):
            w, U = np.linalg.eigh(block)
            blocks.append(U[:, w > self._rank_tolerance * w.max()][:, ::-1])
        V = np.zeros((B, sum(v.shape[1] for v in blocks)))
        col = 0
        for t, v in zip(self._tables, blocks):
            V[t["offset"]:t["offset"] + t["size"], col:col + v.shape[1]] = v
            col += v.shape[1]
        return V

    def _set_projection(self, V: np.ndarray) -> None:
        """Install V and the statistics in its space; records each table's column range."""
        self._V = V
        self._table_columns()
        self._stats = _Statistics(V.shape[1], len(self._numbers))

    def _table_columns(self) -> None:
        """Each table's column range in the projected space (from V)."""
        V = self._V
        for t in self._tables:
            cols = np.flatnonzero(np.any(V[t["offset"]:t["offset"] + t["size"]] != 0, axis=0))
            t["roffset"], t["rsize"] = (int(cols[0]), len(cols)) if len(cols) else (0, 0)

    def _arrays(self, atoms: Atoms) -> tuple[np.ndarray, list[bool], np.ndarray, np.ndarray]:
        if not isinstance(atoms, Atoms):
            raise TypeError(f"expected an ase.Atoms, got {type(atoms).__name__}")
        known = {z: i for i, z in enumerate(self._numbers)}
        numbers = atoms.get_atomic_numbers()
        missing = sorted({int(z) for z in numbers} - set(known))
        if missing:
            raise _core.InputError(f"unknown species {[chemical_symbols[z] for z in missing]}; "
                                   f"the model knows {self.species}")
        species = np.array([known[int(z)] for z in numbers], dtype=np.int32)
        return (np.asarray(atoms.cell.array, dtype=float), [bool(p) for p in atoms.pbc],
                np.asarray(atoms.positions, dtype=float), species)

    def add_training_data(self, atoms: Atoms, forces: bool | np.ndarray = True, energy: bool | float = False,
                          stress: bool | np.ndarray = False,
                          atom_indices: Sequence[int] | np.ndarray | None = None) -> None:
        """Add a labelled structure (arguments as :meth:`otfgp.GaussianProcess.add_training_data`).

        Only the structure's design rows are kept until the next batch is folded into the
        coefficient-space statistics; the structure itself is not stored.
        """
        cell, pbc, positions, species = self._arrays(atoms)
        n = len(atoms)
        forces = label_flag(forces)
        with_forces = forces is not False and forces is not None
        if atom_indices is not None and not with_forces:
            raise _core.InputError("atom_indices selects force labels, but forces=False")
        idx = _label_atom_indices(atom_indices, n) if with_forces else np.zeros(0, dtype=np.int64)
        y = []
        if with_forces:
            f = np.asarray(atoms.get_forces(apply_constraint=False) if forces is True else forces, dtype=float)
            if f.shape != (n, 3):
                raise _core.InputError(f"forces must have shape ({n}, 3), got {f.shape}")
            y.append(f[idx].ravel())
        e, s = energy_stress_labels(atoms, energy, stress)
        if e is not None:
            y.append([e])
        if s is not None:
            y.append(s)
        if not y or sum(len(v) for v in y) == 0:
            raise _core.InputError("no labels: give force atoms, an energy or a stress")
        labels = np.concatenate([np.asarray(v, dtype=float) for v in y])
        if not np.all(np.isfinite(labels)):
            raise _core.InputError("labels contain NaN or inf")
        if self._design is None:
            cut = max(self._r2, self._r3)
            d = neighbor_list("d", atoms, cut)
            shortest = float(d.min()) if len(d) else cut
            self._make_design(max(0.5, shortest - LOWER_MARGIN))
            log.info("scalable GP basis: lower end %.3f A, %d coefficients", self._lower, self._design.columns)
        # the energy row always: the energy reference (set_energy_reference) needs it
        phi, kinds, outside = self._design.rows(cell, pbc, positions, species, idx.astype(np.int32),
                                                True, s is not None)
        if outside:
            raise _core.InputError(
                f"{outside} clusters of this structure have an edge below the basis lower end "
                f"{self._lower:.3f} A; build the model with a smaller lower=")
        comp = np.bincount(species, minlength=len(self._numbers)).astype(float)
        phi = phi @ self._V
        kinds = np.asarray(kinds)
        e_row = 3 * len(idx)
        assert kinds[e_row] == 1
        self._energy_rows.append(phi[e_row].copy())
        self._structure_compositions.append(comp)
        if e is None:
            keep = np.arange(len(kinds)) != e_row
            phi, kinds = phi[keep], kinds[keep]
        self._buffer.append((phi, kinds, labels, comp))
        self._n_environments += len(idx)
        self._buffered_rows += len(labels)
        self._n_structures += 1
        self._solution = None
        if self._buffered_rows >= FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Fold the buffered rows into the statistics: one symmetric rank-k update per kind."""
        if not self._buffer:
            return
        st = self._stats
        assert st is not None
        phi = np.concatenate([b[0] for b in self._buffer])
        kinds = np.concatenate([b[1] for b in self._buffer])
        y = np.concatenate([b[2] for b in self._buffer])
        for k in range(3):
            rows = np.flatnonzero(kinds == k)
            if rows.size == 0:
                continue
            P = phi[rows]
            st.G[k] += P.T @ P
            st.b[k] += P.T @ y[rows]
            st.yy[k] += float(y[rows] @ y[rows])
            st.n[k] += rows.size
        erows = np.flatnonzero(kinds == 1)
        if erows.size:
            comps = np.concatenate([np.tile(b[3], (int(np.sum(b[1] == 1)), 1)) for b in self._buffer])
            st.PhiA += phi[erows].T @ comps
            st.AtA += comps.T @ comps
            st.Aty += comps.T @ y[erows]
        self._buffer.clear()
        self._buffered_rows = 0

    # ----------------------------------------------------------------- prior
    def _prior(self, hyp: Mapping[str, float], grad: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Prior covariance of the projected coefficients (block diagonal by table) and, if
        grad, its derivatives by sigma2, ell2, sigma3, ell3."""
        R = self.rank
        S = np.zeros((R, R))
        dS = {k: np.zeros((R, R)) for k in ("sigma2", "ell2", "sigma3", "ell3")} if grad else {}
        for t, block, dblock in self._prior_blocks(hyp, grad):
            Vb = self._V[t["offset"]:t["offset"] + t["size"], t["roffset"]:t["roffset"] + t["rsize"]]
            sl = slice(t["roffset"], t["roffset"] + t["rsize"])
            sig = hyp["sigma2"] if t["dim"] == 1 else hyp["sigma3"]
            pb = Vb.T @ block @ Vb
            S[sl, sl] = sig * sig * pb
            if grad:
                names = ("sigma2", "ell2") if t["dim"] == 1 else ("sigma3", "ell3")
                dS[names[0]][sl, sl] = 2 * sig * pb
                dS[names[1]][sl, sl] = sig * sig * (Vb.T @ dblock @ Vb)
        return S, dS

    def _prior_blocks(self, hyp: Mapping[str, float], grad: bool) -> Any:
        """Per table: (table, unit-signal prior block, its ell-derivative or None), in the
        basis (before the projection)."""
        for t in self._tables:
            ell = hyp["ell2"] if t["dim"] == 1 else hyp["ell3"]
            x, Q = _basis_points(t["nodes"], t["lo"], t["hi"], t["degree"])
            diff2 = (x[:, None] - x[None, :]) ** 2
            K1 = np.exp(-diff2 / (2 * ell * ell))
            S1 = Q @ K1 @ Q.T
            dS1 = Q @ (K1 * diff2 / ell ** 3) @ Q.T
            if t["dim"] == 1:
                block, dblock = S1, dS1
            else:
                N = len(S1)
                rep = np.asarray(t["representatives"])
                idx = np.stack([rep // (N * N), (rep // N) % N, rep % N], axis=1)
                block = np.zeros((len(rep), len(rep)))
                dblock = np.zeros_like(block)
                for p in t["permutations"]:
                    f = [S1[idx[:, e][:, None], idx[:, p[e]][None, :]] for e in range(3)]
                    block += f[0] * f[1] * f[2]
                    if grad:
                        g = [dS1[idx[:, e][:, None], idx[:, p[e]][None, :]] for e in range(3)]
                        dblock += g[0] * f[1] * f[2] + f[0] * g[1] * f[2] + f[0] * f[1] * g[2]
            # A jitter proportional to the block's signal variance, part of the prior (and of
            # its sigma-derivative): the SE prior on a fine basis is numerically singular.
            yield t, block + PRIOR_JITTER * np.eye(len(block)), dblock if grad else None

    @staticmethod
    def _factor_prior(S: np.ndarray) -> np.ndarray:
        """Lower Cholesky factor of the prior covariance."""
        try:
            return scipy.linalg.cholesky(S, lower=True)
        except np.linalg.LinAlgError:
            raise np.linalg.LinAlgError("the coefficient prior is not positive definite; "
                                        "use a coarser basis (nodes2 / nodes3)") from None

    # ----------------------------------------------------------------- likelihood
    def _offsets_fit(self) -> np.ndarray:
        st = self._stats
        assert st is not None
        ns = len(self._numbers)
        if st.n[1] == 0:
            return np.zeros(ns)
        present = np.diag(st.AtA) > 0
        out = np.zeros(ns)
        out[present] = scipy.linalg.lstsq(st.AtA[np.ix_(present, present)], st.Aty[present])[0]
        return out

    def _kind_terms(self, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """b_k and y_k^T y_k of the targets with the energy offsets removed."""
        st = self._stats
        assert st is not None
        b = st.b.copy()
        yy = st.yy.copy()
        b[1] -= st.PhiA @ offsets
        yy[1] += -2 * float(offsets @ st.Aty) + float(offsets @ st.AtA @ offsets)
        return b, yy

    def _active(self) -> list[str]:
        assert self._stats is not None
        names = []
        if self._r2 > 0:
            names += ["sigma2", "ell2"]
        if self._r3 > 0:
            names += ["sigma3", "ell3"]
        names += [name for k, name in enumerate(_KINDS) if self._stats.n[k] > 0]
        return names

    def _evaluate(self, hyp: Mapping[str, float], grad: bool) -> tuple[float, dict[str, float], dict[str, np.ndarray]]:
        """Log marginal likelihood, its gradient and the posterior (m, P) at hyp."""
        if self.n_labels == 0:
            raise _core.NotTrainedError("no training data: call add_training_data() first")
        self._flush()
        st = self._stats
        assert st is not None
        offsets = self._offsets_fit()
        bk, yyk = self._kind_terms(offsets)
        s2 = np.array([hyp[k] ** 2 for k in _KINDS])
        G = np.tensordot(1.0 / s2, st.G, axes=1)
        b = (bk / s2[:, None]).sum(axis=0)
        c = float(np.sum(yyk / s2))
        n = int(st.n.sum())
        S, dS = self._prior(hyp, grad)
        L = self._factor_prior(S)
        A = np.eye(len(S)) + L.T @ G @ L
        LA = scipy.linalg.cholesky(A, lower=True)
        W = scipy.linalg.solve_triangular(LA, L.T, lower=True)  # P = W^T W
        P = W.T @ W
        m = P @ b
        logdet = 2.0 * float(np.sum(np.log(np.diag(LA))))
        # The data fit y^T C^-1 y equals c - b.m, but that difference cancels catastrophically
        # when the noise is small and A ill-conditioned (measured: 2000 Al frames with energy
        # and stress labels, where it came out negative and drew the optimiser to the bounds).
        # Written as the minimised penalised residual, the same number is stationary in m, so
        # the solve's error enters only to second order.
        Gm = G @ m
        wm = scipy.linalg.solve_triangular(L, m, lower=True)
        fit = c - 2.0 * float(b @ m) + float(m @ Gm) + float(wm @ wm)
        value = -0.5 * (fit + logdet + float(np.sum(st.n * np.log(s2))) + n * math.log(2 * math.pi))
        sol = {"m": m, "P": P, "offsets": offsets}
        if not grad:
            return value, {}, sol
        GP = G @ P
        u = b - Gm
        R = G - GP @ G
        Gam = 0.5 * (np.outer(u, u) - R)
        g = {k: float(np.sum(Gam * dS[k])) for k in dS}
        for k, name in enumerate(_KINDS):
            sk = hyp[name]
            dG = -2.0 * st.G[k] / sk ** 3
            db = -2.0 * bk[k] / sk ** 3
            dc = -2.0 * yyk[k] / sk ** 3
            g[name] = -0.5 * (dc - 2 * float(m @ db) + float(m @ dG @ m) + float(np.sum(P * dG))
                              + 2 * st.n[k] / sk)
        return value, g, sol

    def log_likelihood(self, hyperparameters: Mapping[str, float] | None = None) -> float:
        """Log marginal likelihood of the training labels at the given (or current) hyperparameters."""
        hyp = self.hyperparameters
        hyp.update(hyperparameters or {})
        return self._evaluate(hyp, grad=False)[0]

    def log_likelihood_gradient(self, hyperparameters: Mapping[str, float] | None = None) -> dict[str, float]:
        """Gradient of :meth:`log_likelihood` with respect to every active hyperparameter."""
        hyp = self.hyperparameters
        hyp.update(hyperparameters or {})
        return self._evaluate(hyp, grad=True)[1]

    def prior_medians(self) -> dict[str, LogNormal]:
        """:attr:`priors` with every median concrete: a data-dependent signal std is the one
        at which that body order alone, at the median length scale, gives a prior variance
        of half the mean square label of the first label kind present (as
        :meth:`otfgp.GaussianProcess.prior_medians`). The mean prior variance of the rows
        is tr(S_unit G_k) / n_k, from the statistics alone."""
        if self.priors is None:
            raise ValueError("this model has no priors (priors=None: maximum likelihood)")
        self._flush()
        st = self._stats
        if st is None or st.n.sum() == 0:
            raise _core.NotTrainedError("no training data: call add_training_data() first")
        needed = [k for k in ("sigma2", "sigma3") if self.priors.get(k).median is None]
        data: dict[str, float] = {}
        if needed:
            ells = {"ell2": self.priors.ell2.median, "ell3": self.priors.ell3.median}
            if None in ells.values():
                raise ValueError("data-dependent signal medians need fixed length-scale medians")
            kind = int(np.flatnonzero(st.n > 0)[0])
            _, yy = self._kind_terms(self._offsets_fit())
            mean_square = yy[kind] / st.n[kind]
            S, _ = self._prior({**self._hyp, **ells, "sigma2": 1.0, "sigma3": 1.0}, grad=False)
            for name, dim in (("sigma2", 1), ("sigma3", 3)):
                if name not in needed:
                    continue
                cols = np.concatenate([np.arange(t["roffset"], t["roffset"] + t["rsize"])
                                       for t in self._tables if t["dim"] == dim] or [np.zeros(0, int)])
                mean_d = float(np.sum(S[np.ix_(cols, cols)] * st.G[kind][np.ix_(cols, cols)])) / st.n[kind]
                ok = mean_square > 0 and mean_d > 0
                data[name] = math.sqrt(0.5 * mean_square / mean_d) if ok else DEFAULT_HYPERPARAMETERS[name]
        return self.priors.resolve(data)

    def _ell_floor(self, dim: int) -> float:
        t = next((t for t in self._tables if t["dim"] == dim), None)
        return 0.0 if t is None else MIN_ELL_PER_SPACING * (t["hi"] - t["lo"]) / (t["nodes"] - 1)

    def effective_bounds(self) -> dict[str, tuple[float, float]]:
        """:attr:`bounds` with the length scales kept resolvable by the basis."""
        out = dict(self.bounds)
        for name, dim in (("ell2", 1), ("ell3", 3)):
            lo, hi = out[name]
            out[name] = (max(lo, self._ell_floor(dim)), hi)
        return out

    # ----------------------------------------------------------------- training
    def train(self, optimize: bool = True, max_iterations: int = 100, restarts: int = 0,
              seed: int | None = None) -> None:
        """Fit the model: optionally maximise the log marginal likelihood over the
        hyperparameters (L-BFGS-B in a bounded log parametrisation, within
        :meth:`effective_bounds`; :attr:`last_optimization` reports how it ended), then
        compute the coefficients' posterior. A calibration stays installed (as for the
        exact GP; refit it with :meth:`calibrate`).

        Raises:
            ValueError: ``restarts`` > 0 (random restarts are not implemented here; ``seed``
                is accepted for the exact GP's signature and unused).
        """
        check_train_arguments(optimize, restarts, max_iterations, seed)
        if restarts:
            raise ValueError(f"ScalableGP.train has no random restarts (restarts={restarts!r}); use restarts=0")
        if self.n_labels == 0:
            raise _core.NotTrainedError("no training data: call add_training_data() first")
        self._flush()
        if optimize:
            self._optimize(max_iterations)
        _, _, self._solution = self._evaluate(self._hyp, grad=False)
        self._offsets = self._solution["offsets"]

    def _optimize(self, max_iterations: int) -> None:
        names = self._active()
        bounds = self.effective_bounds()
        lo = np.log([bounds[k][0] for k in names])
        hi = np.log([bounds[k][1] for k in names])
        span = hi - lo
        base = self.hyperparameters
        self.evaluations = 0
        priors = self.prior_medians() if self.priors is not None else None

        # log(theta) = lo + span * logistic(u): unconstrained, so L-BFGS-B's first step is
        # normalised (as in GaussianProcess._optimize).
        def to_theta(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            sig = 0.5 * (1.0 + np.tanh(0.5 * u))
            return np.exp(lo + span * sig), span * sig * (1.0 - sig)

        def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
            theta, dlog = to_theta(u)
            hyp = dict(base)
            hyp.update(zip(names, theta))
            self.evaluations += 1
            try:
                value, g, _ = self._evaluate(hyp, grad=True)
            except np.linalg.LinAlgError:
                return 1e10, np.zeros_like(u)
            if priors is not None:
                p_value, p_grad = log_prior(hyp, priors, names)
                value += p_value
                g = {k: g[k] + p_grad[k] for k in g}
            return -value, -np.array([g[k] * hyp[k] for k in names]) * dlog

        margin = 0.05 * span
        start = np.clip(np.log([base[k] for k in names]), lo + margin, hi - margin)
        frac = (start - lo) / span
        u0 = np.log(frac / (1 - frac))
        res = minimize_hyperparameters(objective, u0, max_iterations)
        log.info("scalable GP optimisation: -log L = %.6g after %d iterations, %d evaluations (%s)",
                 res.fun, res.nit, self.evaluations, res.message)
        if res.fun >= 1e10:
            raise np.linalg.LinAlgError("no hyperparameters within the bounds give a positive definite posterior")
        self._hyp.update(zip(names, map(float, to_theta(res.x)[0])))
        frac = (np.log([self._hyp[k] for k in names]) - lo) / span
        at_bounds = {k: ("lower" if f < AT_BOUND_FRACTION else "upper")
                     for k, f in zip(names, frac) if f < AT_BOUND_FRACTION or f > 1 - AT_BOUND_FRACTION}
        message, converged, abnormal = exit_state(res)
        p_value = log_prior(self._hyp, priors, names)[0] if priors is not None else 0.0
        self.last_optimization = OptimizationReport(
            log_likelihood=float(-res.fun - p_value), iterations=int(res.nit), converged=converged,
            message=message, abnormal=abnormal, at_bounds=at_bounds, log_prior=float(p_value))

    # ----------------------------------------------------------------- prediction
    def predict(self, atoms: Atoms, variance: bool = True) -> Prediction:
        """Energy, forces, stress and local energies (with latent and reported variances if
        asked).

        Reported variances are latent + label noise (local energies: latent only), as for an
        uncalibrated :class:`otfgp.GaussianProcess`. The per-species energy offsets go into
        the energy and the local energies.
        """
        if self._solution is None:
            raise _core.NotTrainedError("the model is not trained: call train()")
        cell, pbc, positions, species = self._arrays(atoms)
        n = len(atoms)
        with_stress = bool(all(pbc) and abs(np.linalg.det(cell)) > 1e-8)
        phi, _, outside = self._design.rows(cell, pbc, positions, species, np.arange(n, dtype=np.int32),
                                            True, with_stress, True)
        if outside:
            log.warning("%d clusters lie below the basis lower end %.3f A: extrapolated", outside, self._lower)
        e_row, s_rows, l_rows = 3 * n, slice(3 * n + 1, 3 * n + 7), slice(phi.shape[0] - n, phi.shape[0])
        phi = phi @ self._V
        mean = phi @ self._solution["m"]
        offsets = self._offsets[species]
        out = Prediction(energy=float(mean[e_row] + np.sum(offsets)), forces=mean[:3 * n].reshape(n, 3),
                         local_energies=mean[l_rows] + offsets,
                         stress=mean[s_rows] if with_stress else np.full(6, np.nan))
        if variance:
            var = np.einsum("ij,ij->i", phi @ self._solution["P"], phi)
            np.maximum(var, 0.0, out=var)
            self._set_variances(out, var[:3 * n].reshape(n, 3), float(var[e_row]),
                                var[s_rows] if with_stress else np.full(6, np.nan), var[l_rows], atoms)
        return out

    def _set_variances(self, out: Prediction, lf: np.ndarray, le: float, ls: np.ndarray, ll: np.ndarray,
                       atoms: Atoms) -> None:
        """Latent, reported and epistemic variances into ``out``: latent + label noise while
        uncalibrated, else the calibration's maps (:mod:`otfgp.calibration`; the rules of the
        exact GP: forces scaled with the predicted force of the atom or of its
        neighbourhood, local energies without noise)."""
        hyp = self._hyp
        nf, ne, ns = hyp["noise_force"] ** 2, hyp["noise_energy"] ** 2, hyp["noise_stress"] ** 2
        out.latent_force_variances, out.latent_energy_variance = lf, le
        out.latent_stress_variance, out.latent_local_energy_variances = ls, ll
        out.noise_force_variance = nf
        cal = self.calibration
        if cal is None:
            out.force_variances, out.energy_variance = lf + nf, le + ne
            out.stress_variance, out.local_energy_variances = ls + ns, ll
            out.epistemic_force_variances, out.epistemic_stress_variance = lf, ls
            out.epistemic_local_energy_variances = ll
            return
        radius = cal.force.coefficients()["radius"]
        scales = neighbourhood_scale_values(atoms, out.forces, radius)  # radius 0: the atom's own
        out.force_variances = cal.force.apply(lf, nf, scales)
        out.energy_variance = float(np.ravel(cal.energy.apply(np.array([le]), ne))[0])
        out.stress_variance = cal.stress.apply(ls, ns)
        out.local_energy_variances = cal.local_energy.apply(ll, 0.0)
        out.epistemic_force_variances = epistemic_variances(cal.force, lf)
        out.epistemic_stress_variance = epistemic_variances(cal.stress, ls)
        out.epistemic_local_energy_variances = epistemic_variances(cal.local_energy, ll)

    # ----------------------------------------------------------------- calibration and energy reference
    @property
    def force_scale_radius(self) -> float:
        """Radius (A) of the ``neighbourhood`` calibration's force scale, as
        :attr:`otfgp.GaussianProcess.force_scale_radius`."""
        return scale_radius(self.cutoffs)

    def calibrate(self, frames: Sequence[Atoms] | None = None, samples: Any = None, loo: bool = False,
                  form: str = "neighbourhood", min_samples: int = 30) -> ModelCalibration:
        """Fit the variance calibration on held-out errors, install it and return it: the
        rule of :meth:`otfgp.GaussianProcess.calibrate` (same forms, transfer of the force
        map's latent scale, ``info``), on ``frames`` (structures with reference labels) and
        ``samples`` (e.g. the on-the-fly learner's pre-update errors).

        Raises:
            ValueError: ``loo=True``: leave-one-out residuals need the stored label rows,
                which this model does not keep (its statistics are Phi^T Phi and Phi^T y).
        """
        if loo:
            raise ValueError("ScalableGP keeps no label rows, so it has no leave-one-out residuals "
                             "(loo=True); calibrate it on held-out frames or samples")
        if not self.trained:
            raise _core.NotTrainedError("calibrate a trained model: call train() first")
        hyp = self._hyp
        noise = {"force": hyp["noise_force"] ** 2, "energy": hyp["noise_energy"] ** 2,
                 "stress": hyp["noise_stress"] ** 2}
        radius = self.force_scale_radius
        pool = SamplePool(radius if form == "neighbourhood" else 0.0)  # the scales only for the form using them
        pool.add_frames(frames, lambda atoms: self.predict(atoms, variance=True), noise)
        pool.add_samples(samples, noise)
        self.calibration = model_calibration(pool.pooled, pool.counts, noise, form, min_samples, radius=radius,
                                             energy_labels=self.has_energy_labels)
        return self.calibration

    def set_energy_reference(self, energies: Sequence[float | None]) -> dict[str, float]:
        """Fit the per-species energy offsets of a model trained without energy labels to
        reference energies of its training structures (one entry per structure, in the
        order added; ``None``: not used; a species in none of the used ones keeps its
        offset), as :meth:`otfgp.GaussianProcess.set_energy_reference`:
        least squares of ``energies[i] - E_GP(structure i)`` on the compositions, from the
        stored energy rows. Returns the offsets.

        Raises:
            ValueError: the model trains on energy labels, is not trained, or ``energies``
                has the wrong length or a non-finite entry.
        """
        if self.has_energy_labels:
            raise ValueError("this model trains on energy labels, which fit its energy offsets; "
                             "set_energy_reference is for models without them")
        if not self.trained:
            raise ValueError("set_energy_reference needs a trained model (call train() first)")
        n = self._n_structures
        if len(energies) != n or len(self._energy_rows) != n:
            raise ValueError(f"energies needs one entry per training structure ({n}), got {len(energies)}")
        for i, e in enumerate(energies):
            if e is not None and not math.isfinite(float(e)):
                raise ValueError(f"reference energy of training structure {i} is not finite: {e!r}")
        used = [i for i, e in enumerate(energies) if e is not None]
        if used:
            A = np.array([self._structure_compositions[i] for i in used], dtype=float)
            gp_energy = np.array([self._energy_rows[i] for i in used]) @ self._solution["m"]
            self._offsets = refit_offsets(self._offsets, A, np.array([float(energies[i]) for i in used]) - gp_energy)
        return self.energy_offsets

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the model (basis, hyperparameters, statistics and solution; no labels)
        to a compressed ``.npz`` file whose size does not depend on the number of labels."""
        self._flush()
        data: dict[str, Any] = {
            "format": np.array(FILE_FORMAT_2),
            "numbers": np.array(self._numbers),
            "cutoffs": np.array([self._r2, self._r3]),
            "nodes": np.array(self._nodes),
            "lower": np.array(np.nan if self._lower is None else self._lower),
            "hyperparameters": np.array([self._hyp[k] for k in HYPERPARAMETER_NAMES]),
            "bounds": np.array([self.bounds[k] for k in HYPERPARAMETER_NAMES]),
            "n_structures": np.array(self._n_structures),
            "offsets": self._offsets,
        }
        data["rank_tolerance"] = np.array(np.nan if self._rank_tolerance is None else self._rank_tolerance)
        data["n_environments"] = np.array(self._n_environments)
        data["energy_rows"] = np.array(self._energy_rows).reshape(len(self._energy_rows), self.rank)
        data["structure_compositions"] = np.array(self._structure_compositions).reshape(
            len(self._structure_compositions), len(self._numbers))
        if self.calibration is not None:
            data["calibration"] = np.array(json.dumps(self.calibration.to_dict()))
        if self._stats is not None:
            data["V"] = self._V
            data.update({f"stat_{k}": v for k, v in self._stats.arrays().items()})
        if self._solution is not None:
            data["m"], data["P"] = self._solution["m"], self._solution["P"]
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **data)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ScalableGP":
        """Read a model written by :meth:`save`; a file of another kind is a ValueError."""
        try:
            with np.load(path, allow_pickle=False) as z:
                # fresh (aligned) copies: the BLAS kernels numpy picks can depend on the
                # alignment, and a resumed run must repeat the uninterrupted one bit for bit
                d = {k: np.array(z[k], copy=True) for k in z.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable scalable-GP model file ({exc})") from None
        if str(d.get("format", "")) not in (FILE_FORMAT, FILE_FORMAT_2):
            raise ValueError(f"{path}: not a scalable-GP model file (format {d.get('format')!r}, "
                             f"expected {FILE_FORMAT_2})")
        r2, r3 = map(float, d["cutoffs"])
        cutoffs = {k: v for k, v in (("twobody", r2), ("threebody", r3)) if v > 0}
        lower = float(d["lower"])
        tol = float(d["rank_tolerance"])
        model = cls([int(z) for z in d["numbers"]], cutoffs,
                    dict(zip(HYPERPARAMETER_NAMES, map(float, d["hyperparameters"]))),
                    {k: tuple(map(float, b)) for k, b in zip(HYPERPARAMETER_NAMES, d["bounds"])},
                    lower=None if math.isnan(lower) else lower, nodes2=int(d["nodes"][0]), nodes3=int(d["nodes"][1]),
                    rank_tolerance=None if math.isnan(tol) else tol)
        model._n_structures = int(d["n_structures"])
        model._offsets = d["offsets"]
        if "V" in d:  # the stored projection, bit for bit (not recomputed)
            model._set_projection(d["V"])
            for k in model._stats.arrays():
                setattr(model._stats, k, d[f"stat_{k}"])
        if "m" in d:
            model._solution = {"m": d["m"], "P": d["P"], "offsets": d["offsets"]}
        if "n_environments" in d:  # FILE_FORMAT_2
            model._n_environments = int(d["n_environments"])
            model._energy_rows = list(d["energy_rows"])
            model._structure_compositions = list(d["structure_compositions"])
        if "calibration" in d:
            model.calibration = ModelCalibration.from_dict(json.loads(str(d["calibration"])))
        return model

    # ----------------------------------------------------------------- export (maps)
    def to_mapped(self, calibration: Any = None) -> Any:
        """This trained model as a mapped-only :class:`otfgp.GaussianProcess` (exact: same
        predictions to rounding); see :func:`otfgp.scalable_maps.to_mapped_model`."""
        from .scalable_maps import to_mapped_model

        return to_mapped_model(self, calibration)

    def save_mapped(self, path: str | os.PathLike, calibration: Any = None) -> None:
        """Write this trained model as an otfgp model file for ``pair_style otfgp`` and
        ``compute otfgp/std/atom`` (size set by the basis, not the labels); see
        :func:`otfgp.scalable_maps.save_mapped`."""
        from .scalable_maps import save_mapped

        save_mapped(self, path, calibration)

