"""Mapped GP: spline tables of the mean and of a reduced force variance.

The 2+3-body GP mean is exactly a sum of a pair function phi2(r) per species pair and a
triplet function phi3(r_ij, r_ik, r_jk) per species triple. :func:`build_maps` tabulates
them as uniform cubic B-splines (1-D for pairs, 3-D tensor products for triplets) so that
predictions no longer sum over the training set. The C++ core evaluates the tables
(``cpp/core/maps.cpp``); forces are the exact derivatives of the tabulated energy.

Fitting. A cubic spline through n nodes has n + 2 coefficients per axis; the two extra
conditions are the end slopes, which the GP gives exactly ("clamped" spline, O(h^4) error
everywhere including the ends). For a 3-D tensor product the same construction needs the
mixed derivatives on the lower faces' edges and corner (they vanish at the cutoff face,
where every term carries (r_c - r)^2); those come from central differences of the exact
gradient. Like species make phi3 symmetric under edge permutations, so only one grid node
per symmetry orbit is evaluated (1/6 of them for a single element).

Grid choice. Starting from a coarse grid, the pair and the triplet grid are refined
(x1.5) until the largest force deviation from the exact GP on held-out environments
(rattled copies of training structures unless given) is below the tolerance. Each body
order is checked alone too -- the core falls back to the exact GP for clusters without a
table -- so only the order that is off gets refined. Clusters shorter than a table's
lower end (below the training data's shortest distance minus a margin) also fall back to
the exact GP, so the mapped model is never wrong, only slower, there.

Variance. The exact predictive variance of a force is a double sum over clusters of the
posterior covariance and cannot be tabulated per cluster (per-cluster variances, summed,
miss that the data pin down sums of cluster energies, not each one: a loose bound). Instead
the GP itself is reduced: the cutoff-free cluster function of every species type is written
in a coarser B-spline basis interpolating its values at grid nodes (a structured-kernel-
interpolation GP: the node values get the exact SE prior, nodes spaced <= ell/3 apart), and
that finite GP is conditioned on the same labels with the same noise. The joint posterior
covariance C of all basis coefficients is stored; the variance of any force is u^T C u with
u the force's functional in the basis, so its per-atom cost depends on the basis, not on
the training set. Its rank correlation and relative error against the exact variance are
measured on the held-out environments and reported; the exact variance stays available
(``variance="exact"``).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np
import scipy.stats

from .arguments import count, positive_number
from .map_report import DEFAULT_TOLERANCE, MapReport

if TYPE_CHECKING:
    from ase import Atoms


class MappableModel(Protocol):
    """The public interface of :class:`otfgp.GaussianProcess` that mapping uses, and all of
    it: mapping depends on the GP, never on its internals, and the GP module imports
    nothing of mapping but :func:`build_maps`."""

    @property
    def core(self) -> Any: ...
    @property
    def cutoffs(self) -> dict[str, float]: ...
    @property
    def hyperparameters(self) -> dict[str, float]: ...
    @property
    def species(self) -> list[str]: ...
    @property
    def trained(self) -> bool: ...
    @property
    def n_labels(self) -> int: ...
    @property
    def n_training_structures(self) -> int: ...
    @property
    def map_report(self) -> MapReport | None: ...
    def noise_diagonal(self, hyperparameters: Mapping[str, float] | None = None) -> np.ndarray: ...
    def training_structure(self, index: int) -> dict[str, Any]: ...
    def predict(self, atoms: "Atoms", variance: bool | str = True) -> Any: ...

log = logging.getLogger(__name__)

#: Tabulated range starts this far below the shortest training distance (Angstrom).
LOWER_MARGIN = 0.5
MAX_GRID_NODES = 4096  # per axis: the core's spline tables (cpp/core/maps.cpp)
#: Largest number of variance-basis coefficients over all triplet tables.
VARIANCE_BASIS_LIMIT = 3000
# Triplet variance basis: quadratic B-splines (27 coefficients per triplet instead of 64,
# the bulk of the per-atom cost of a mapped variance) with nodes <= ell3 / 3 apart.
TRIPLET_VARIANCE_DEGREE = 2
TRIPLET_VARIANCE_PER_ELL = 3.0
_FD_STEP = 1e-3  # Angstrom; central differences of the exact gradient (error ~1e-7 relative)


# ------------------------------------------------------------------ spline algebra
def _clamped_operator(n: int, h: float) -> np.ndarray:
    """M with coefficients = M @ [f_0 .. f_{n-1}, f'(lo), f'(hi)] for a clamped uniform
    cubic B-spline (coefficient k multiplies the B-spline centred at node k - 1)."""
    A = np.zeros((n + 2, n + 2))
    for i in range(n):
        A[i, i:i + 3] = (1.0 / 6.0, 4.0 / 6.0, 1.0 / 6.0)
    A[n, 0], A[n, 2] = -0.5 / h, 0.5 / h
    A[n + 1, n - 1], A[n + 1, n + 1] = -0.5 / h, 0.5 / h
    return np.linalg.inv(A)


def _slope_estimator(n: int, h: float) -> np.ndarray:
    """E with [f, f'(lo), f'(hi)] ~= E @ f from node values (second-order one-sided)."""
    E = np.zeros((n + 2, n))
    E[:n, :n] = np.eye(n)
    E[n, :3] = np.array([-3.0, 4.0, -1.0]) / (2 * h)
    E[n + 1, n - 3:] = np.array([1.0, -4.0, 3.0]) / (2 * h)
    return E


def _apply3(op: np.ndarray, data: np.ndarray) -> np.ndarray:
    return np.einsum("ia,jb,kc,abc->ijk", op, op, op, data, optimize=True)


# ------------------------------------------------------------------ grid values
def _orbit_codes(core: Any, type_: int, n: int) -> np.ndarray:
    """For every node of an n^3 grid (flat index, last axis fastest): the smallest flat index
    among its images under the type's edge permutations, i.e. its orbit's representative.
    The same rule as the core's (cpp/core/maps.cpp), so both number orbits alike."""
    perms = np.asarray(core.triplet_permutations(type_), dtype=int)
    idx = np.indices((n, n, n)).reshape(3, -1).T
    return np.stack([(idx[:, p] * np.array([n * n, n, 1])).sum(axis=1) for p in perms]).min(axis=0)


def _symmetric_grid(core: Any, type_: int, nodes: np.ndarray) -> np.ndarray:
    """Exact phi of a triplet type on the full grid nodes^3 (n, n, n), evaluating one node
    per orbit of the type's edge permutations."""
    n = len(nodes)
    unique, inverse = np.unique(_orbit_codes(core, type_, n), return_inverse=True)
    reps = np.stack([unique // (n * n), (unique // n) % n, unique % n], axis=1)
    phi, _ = core.cluster_means(type_, nodes[reps])
    return phi[inverse].reshape(n, n, n)


def _pair_table(core: Any, type_: int, n: int, lo: float, hi: float) -> dict[str, Any]:
    nodes = np.linspace(lo, hi, n)
    phi, dphi = core.cluster_means(type_, nodes[:, None])
    data = np.concatenate([phi, [dphi[0, 0], dphi[-1, 0]]])
    coef = _clamped_operator(n, nodes[1] - nodes[0]) @ data
    return {"dim": 1, "type": type_, "n": n, "lo": lo, "hi": hi, "mean": coef}


def _triplet_table(core: Any, type_: int, n: int, lo: float, hi: float) -> dict[str, Any]:
    nodes = np.linspace(lo, hi, n)
    h = nodes[1] - nodes[0]
    data = np.zeros((n + 2, n + 2, n + 2))
    data[:n, :n, :n] = _symmetric_grid(core, type_, nodes)
    # Slopes on the lower faces (index n along that axis); at the upper faces, slopes and
    # mixed derivatives vanish with the cutoff factor, so index n + 1 stays zero.
    grid2 = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), axis=-1).reshape(-1, 2)
    for m in range(3):
        d = np.insert(grid2, m, lo, axis=1)
        _, g = core.cluster_means(type_, d)
        face = g[:, m].reshape(n, n)
        sl = [slice(0, n)] * 3
        sl[m] = n
        data[tuple(sl)] = face
    # Mixed second derivatives on the lower-lower edges and the third at the lower corner.
    for a, b in ((0, 1), (0, 2), (1, 2)):
        c = 3 - a - b
        pts = np.full((2, n, 3), lo)
        pts[:, :, c] = nodes
        pts[0, :, b] += _FD_STEP
        pts[1, :, b] -= _FD_STEP
        _, g = core.cluster_means(type_, pts.reshape(-1, 3))
        g = g.reshape(2, n, 3)
        mixed = (g[0, :, a] - g[1, :, a]) / (2 * _FD_STEP)
        sl = [slice(0, n)] * 3
        sl[a] = n
        sl[b] = n
        data[tuple(sl)] = mixed
    pts = np.array([[lo, lo + s1 * _FD_STEP, lo + s2 * _FD_STEP] for s1 in (1, -1) for s2 in (1, -1)])
    _, g = core.cluster_means(type_, pts)
    data[n, n, n] = (g[0, 0] - g[1, 0] - g[2, 0] + g[3, 0]) / (4 * _FD_STEP ** 2)
    coef = _apply3(_clamped_operator(n, h), data)
    return {"dim": 3, "type": type_, "n": n, "lo": lo, "hi": hi, "mean": coef.ravel()}


def _node_covariance(nodes: np.ndarray, perms: np.ndarray | None, sigma: float, ell: float) -> np.ndarray:
    """sigma^2 sum_p exp(-|x_u - P_p x_v|^2 / 2 ell^2) between grid nodes x (the cutoff-free
    SE kernel of the exact GP, summed over the type's edge permutations)."""
    x = nodes if nodes.ndim == 2 else nodes[:, None]
    K = np.zeros((len(x), len(x)))
    for p in (perms if perms is not None else [np.arange(x.shape[1])]):
        diff = x[:, None, :] - x[None, :, p]
        K += np.exp(-np.einsum("uvk,uvk->uv", diff, diff) / (2 * ell * ell))
    return sigma * sigma * K


def _axis_weights(x: np.ndarray, lo: float, hi: float, n: int,
                  degree: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First coefficient index, uniform B-spline weights (degree 3 or 2) and their
    x-derivatives (same as C++)."""
    h = (hi - lo) / (n - 1)
    u = (x - lo) / h
    i = np.clip(np.floor(u).astype(int), 0, n - 2)
    t = u - i
    s = 1.0 - t
    if degree == 2:
        w = np.stack([0.5 * s * s, 0.5 + t - t * t, 0.5 * t * t], axis=1)
        dw = np.stack([-s, 1 - 2 * t, t], axis=1) / h
        return i, w, dw
    w = np.stack([s ** 3, 3 * t ** 3 - 6 * t ** 2 + 4, -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1, t ** 3], axis=1) / 6
    dw = np.stack([-0.5 * s * s, 1.5 * t * t - 2 * t, -1.5 * t * t + t + 0.5, 0.5 * t * t], axis=1) / h
    return i, w, dw


def _functional_matrix(rows: np.ndarray, d: np.ndarray, a: np.ndarray, lo: float, hi: float,
                       nv: int, n_rows: int, degree: int = 3) -> "scipy.sparse.csr_matrix":
    """Sparse matrix of the functionals sum a0 S(d) + sum_m a_m dS/dd_m over basis coefficients."""
    import scipy.sparse

    dim = d.shape[1]
    N = nv + degree - 1
    S = degree + 1
    axes = [_axis_weights(d[:, m], lo, hi, nv, degree) for m in range(dim)]
    if dim == 1:
        i, w, dw = axes[0]
        vals = a[:, :1] * w + a[:, 1:2] * dw
        cols = i[:, None] + np.arange(S)
        size = N
    else:
        (ix, wx, dx), (iy, wy, dy), (iz, wz, dz) = axes
        vals = (np.einsum("e,ea,eb,ec->eabc", a[:, 0], wx, wy, wz) + np.einsum("e,ea,eb,ec->eabc", a[:, 1], dx, wy, wz)
                + np.einsum("e,ea,eb,ec->eabc", a[:, 2], wx, dy, wz) + np.einsum("e,ea,eb,ec->eabc", a[:, 3], wx, wy, dz))
        rs = np.arange(S)
        cols = (((ix[:, None, None, None] + rs[:, None, None]) * N + (iy[:, None, None, None] + rs[None, :, None])) * N
                + (iz[:, None, None, None] + rs[None, None, :]))
        size = N ** 3
    vals = vals.reshape(len(d), -1)
    cols = cols.reshape(len(d), -1)
    rr = np.repeat(rows, vals.shape[1])
    return scipy.sparse.csr_matrix((vals.ravel(), (rr, cols.ravel())), shape=(n_rows, size))


def _basis_points(nv: int, lo: float, hi: float, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Points whose function values define the variance basis, and the operator Q with
    coefficients = Q @ values. Cubic: the nv nodes (clamped spline, end slopes by one-sided
    differences). Quadratic: the nv + 1 centres of the B-splines, lo - h/2 .. hi + h/2 (the
    cutoff-free function is defined beyond the range), interpolated there."""
    h = (hi - lo) / (nv - 1)
    if degree == 3:
        return np.linspace(lo, hi, nv), _clamped_operator(nv, h) @ _slope_estimator(nv, h)
    n = nv + 1
    B = np.diag(np.full(n, 0.75)) + np.diag(np.full(n - 1, 0.125), 1) + np.diag(np.full(n - 1, 0.125), -1)
    return lo + (np.arange(n) - 0.5) * h, np.linalg.inv(B)


def _variance_covariance(gp: MappableModel, tables: list[dict[str, Any]]) -> np.ndarray:
    """Joint posterior covariance of the variance-basis coefficients of all tables, given the
    training labels (sets each table's "nv" beforehand)."""
    import scipy.linalg
    import scipy.sparse

    core = gp.core
    hyp = gp.hyperparameters
    n_rows = gp.n_labels
    # Training functionals per table: (label row, descriptor, coefficients a0, a_1..a_dim).
    entries: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for g in range(core.n_groups):
        blocks = core.group_blocks(g)
        off = core.group_row_offset(g)
        for name, dim in (("two", 1), ("three", 3)):
            types, desc, coef = blocks[name]
            for t in np.unique(types):
                sel = types == t
                k, rows = int(sel.sum()), coef.shape[1]
                entries.setdefault((dim, int(t)), []).append((
                    np.repeat(off + np.arange(rows)[None, :], k, axis=0).ravel(),
                    np.repeat(desc[sel], rows, axis=0),
                    coef[sel].reshape(k * rows, dim + 1)))
    prior_blocks, phis = [], []
    for t in tables:
        dim, nv, lo, hi = t["dim"], t["nv"], t["lo"], t["hi"]
        degree = t.get("variance_degree", 3)
        nodes1, Q = _basis_points(nv, lo, hi, degree)  # Q: values at nodes1 -> coefficients
        if dim == 1:
            K = _node_covariance(nodes1, None, hyp["sigma2"], hyp["ell2"])
        else:
            nodes = np.stack(np.meshgrid(nodes1, nodes1, nodes1, indexing="ij"), axis=-1).reshape(-1, 3)
            perms = np.asarray(core.triplet_permutations(t["type"]), dtype=int)
            K = _node_covariance(nodes, perms, hyp["sigma3"], hyp["ell3"])
            Q = np.kron(np.kron(Q, Q), Q)
        prior_blocks.append(Q @ K @ Q.T)
        parts = entries.get((dim, t["type"]), [])
        if parts:
            rows = np.concatenate([p[0] for p in parts])
            d = np.concatenate([p[1] for p in parts])
            a = np.concatenate([p[2] for p in parts])
            phis.append(_functional_matrix(rows, d, a, lo, hi, nv, n_rows, degree))
        else:
            phis.append(scipy.sparse.csr_matrix((n_rows, prior_blocks[-1].shape[0])))
    prior = scipy.linalg.block_diag(*prior_blocks)
    Phi = scipy.sparse.hstack(phis).tocsr()
    A = np.asarray(Phi @ prior)  # label-coefficient prior covariance
    C = np.asarray(Phi @ A.T) + np.diag(gp.noise_diagonal(hyp))
    L = scipy.linalg.cholesky((C + C.T) / 2, lower=True)
    W = scipy.linalg.solve_triangular(L, A, lower=True)
    post = prior - W.T @ W
    post = (post + post.T) / 2
    # Symmetric functions have symmetric coefficients: keep one per permutation orbit (the
    # core maps every coefficient to its orbit, cpp/core/maps.cpp).
    keep, off = [], 0
    for t, block in zip(tables, prior_blocks):
        keep.append(off + _orbit_representatives(core, t))
        off += block.shape[0]
    keep = np.concatenate(keep)
    return post[np.ix_(keep, keep)]


def _orbit_representatives(core: Any, table: dict[str, Any]) -> np.ndarray:
    """Sorted flat indices of the variance-basis coefficients that represent their orbit
    under the type's edge permutations (all of them for pairs)."""
    N = table["nv"] + table.get("variance_degree", 3) - 1
    if table["dim"] == 1:
        return np.arange(N)
    return np.flatnonzero(_orbit_codes(core, table["type"], N) == np.arange(N ** 3))


def _variance_nodes(span: float, ell: float, per_ell: float, lowest: int, highest: int) -> int:
    return int(min(highest, max(lowest, np.ceil(span * per_ell / ell) + 1)))


# ------------------------------------------------------------------ the build
def _types(n_species: int) -> tuple[list[int], list[int]]:
    ns = n_species
    pairs = [a * ns + b for a in range(ns) for b in range(a, ns)]
    triplets = [(a * ns + b) * ns + c for a in range(ns) for b in range(a, ns) for c in range(b, ns)]
    return pairs, triplets


def _shortest_training_distance(gp: MappableModel) -> float:
    from ase.neighborlist import neighbor_list

    cut = max(gp.cutoffs.values())
    shortest = cut
    for i in range(gp.n_training_structures):
        d = neighbor_list("d", gp.training_structure(i)["atoms"], cut)
        if len(d):
            shortest = min(shortest, float(d.min()))
    return shortest


#: Gaussian displacements (A) of the default held-out structures: near the training data,
#: and far enough from it for the variance calibration to see novel environments.
HELDOUT_RATTLES = (0.03, 0.1, 0.2, 0.3)


def default_heldout(gp: MappableModel, rattles: Sequence[float] = HELDOUT_RATTLES,
                    seed: int = 0) -> list["Atoms"]:
    """Rattled copies of training structures (spread over the training set), one per entry
    of ``rattles`` (Gaussian displacement std in A)."""
    ns = gp.n_training_structures
    picks = [int(round(k)) for k in np.linspace(0, ns - 1, len(rattles))]
    out = []
    for k, (i, amp) in enumerate(zip(picks, rattles)):
        atoms = gp.training_structure(i)["atoms"].copy()
        atoms.calc = None
        atoms.rattle(stdev=amp, seed=seed + k)
        out.append(atoms)
    return out


def _force_deviation(gp: MappableModel, structures: Sequence["Atoms"],
                     exact: list[tuple[np.ndarray, float]]) -> tuple[float, float, float]:
    errs, eerr = [], 0.0
    for atoms, (f_exact, e_exact) in zip(structures, exact):
        p = gp.predict(atoms, variance=False)
        errs.append(np.abs(p.forces - f_exact).ravel())
        eerr = max(eerr, abs(p.energy - e_exact) / len(atoms))
    e = np.concatenate(errs)
    return float(e.mean()), float(e.max()), eerr


def build_maps(gp: MappableModel, tolerance: float | None = DEFAULT_TOLERANCE, variance: bool = True,
               heldout: Sequence["Atoms"] | None = None, grid2: int | None = None,
               grid3: int | None = None, max_grid3: int = 64,
               max_grid2: int = 2048) -> MapReport:
    """Tabulate ``gp`` (see the module docstring) and install the maps in it.

    Args:
        tolerance: largest force-component deviation from the exact GP (eV/A) allowed on the
            held-out environments (None: :data:`DEFAULT_TOLERANCE`); grids are refined until it holds (or hit their maxima).
        variance: also build the reduced-GP variance (see the module docstring).
        heldout: structures to measure on; default: rattled copies of training structures.
        grid2, grid3: fixed grid sizes (nodes per axis) instead of the automatic choice.
    Returns:
        the :class:`MapReport`, also stored in the model (``gp.map_report``).
    """
    if not gp.trained:
        raise RuntimeError("map a trained model: call train() first")
    if gp.core.mapped_only:
        raise ValueError("this model is already the maps of an exported ScalableGP (no training data to "
                         "map from); map the ScalableGP itself with save_mapped() / to_mapped()")
    tolerance = DEFAULT_TOLERANCE if tolerance is None else positive_number("tolerance", tolerance)
    # the core's spline tables take 4 to 4096 nodes per axis; the triplet table grows as
    # nodes^3, so a fixed grid3 stays within the automatic choice's maximum
    for name, value, high in (("grid2", grid2, MAX_GRID_NODES), ("grid3", grid3, max_grid3)):
        if count(name, value, 4, allow_none=True) is not None and value > high:
            raise ValueError(f"{name} must be at most {high} nodes, got {value!r}")
    t0 = time.perf_counter()
    core = gp.core
    core.clear_maps()
    cut = gp.cutoffs
    rc2, rc3 = cut.get("twobody", 0.0), cut.get("threebody", 0.0)
    shortest = _shortest_training_distance(gp)
    lo = max(0.5, shortest - LOWER_MARGIN)
    pair_types, triplet_types = _types(len(gp.species))
    structures = list(heldout) if heldout is not None else default_heldout(gp)
    exact = []
    for atoms in structures:
        p = gp.predict(atoms, variance=False)
        exact.append((p.forces, p.energy))
    report = MapReport(lower2=lo if rc2 else 0.0, lower3=lo if rc3 else 0.0, tolerance=tolerance,
                       heldout_atoms=sum(len(a) for a in structures))

    n2 = grid2 or 96
    n3 = grid3 or 12
    pairs: list[dict[str, Any]] = []
    triplets: list[dict[str, Any]] = []
    built2 = built3 = 0
    auto = grid2 is None or grid3 is None
    while True:
        if rc2 and built2 != n2:
            pairs = [_pair_table(core, t, n2, lo, rc2) for t in pair_types]
            built2 = n2
        if rc3 and built3 != n3:
            triplets = [_triplet_table(core, t, n3, lo, rc3) for t in triplet_types]
            built3 = n3
        core.set_maps(pairs + triplets)
        mean_err, max_err, e_err = _force_deviation(gp, structures, exact)
        step = {"grid2": n2, "grid3": n3, "force_error_max": max_err, "force_error_mean": mean_err}
        if not auto or max_err <= tolerance:
            report.iterations.append(step)
            break
        # Which body order is off? Each alone (the other falls back to the exact GP).
        errs = {}
        for name, tables in (("pairs", pairs), ("triplets", triplets)):
            if tables:
                core.set_maps(tables)
                errs[name] = _force_deviation(gp, structures, exact)[1]
        step.update({f"{k}_only_error_max": v for k, v in errs.items()})
        report.iterations.append(step)
        log.info("map grids %d / %d^3: max force deviation %.3g eV/A (%s)", n2, n3, max_err, errs)
        grew = False
        if grid2 is None and errs.get("pairs", 0.0) > 0.5 * tolerance and n2 < max_grid2:
            n2, grew = min(max_grid2, int(n2 * 1.5)), True
        if grid3 is None and errs.get("triplets", 0.0) > 0.5 * tolerance and n3 < max_grid3:
            n3, grew = min(max_grid3, int(np.ceil(n3 * 1.5))), True
        if not grew:  # neither alone is off by much, or at the limits: refine the worse one
            worse = max(errs, key=errs.get) if errs else "pairs"
            if worse == "pairs" and grid2 is None and n2 < max_grid2:
                n2 = min(max_grid2, int(n2 * 1.5))
            elif worse == "triplets" and grid3 is None and n3 < max_grid3:
                n3 = min(max_grid3, int(np.ceil(n3 * 1.5)))
            else:
                log.warning("map: grid limits reached with max force deviation %.3g eV/A", max_err)
                core.set_maps(pairs + triplets)
                break
    report.grid2, report.grid3 = (n2 if rc2 else 0), (n3 if rc3 else 0)
    report.force_error_mean, report.force_error_max, report.energy_error_max_per_atom = mean_err, max_err, e_err

    covariance = None
    if variance:
        hyp = gp.hyperparameters
        # Basis nodes <= ell/3 apart; the triplet bases are capped so that the joint
        # covariance stays below ~3000^2 entries (coarser for many species).
        cap3 = max(5, int(np.floor((VARIANCE_BASIS_LIMIT / max(1, len(triplets))) ** (1 / 3))) - 2)
        for t in pairs:
            t["nv"] = _variance_nodes(t["hi"] - t["lo"], hyp["ell2"], 3.0, 8, 64)
        for t in triplets:
            t["nv"] = _variance_nodes(t["hi"] - t["lo"], hyp["ell3"], TRIPLET_VARIANCE_PER_ELL, 5, cap3)
            t["variance_degree"] = TRIPLET_VARIANCE_DEGREE
        report.grid2_variance = pairs[0]["nv"] if pairs else 0
        report.grid3_variance = triplets[0]["nv"] if triplets else 0
        covariance = _variance_covariance(gp, pairs + triplets)
        core.set_maps(pairs + triplets, covariance, "")
        mapped_v, exact_v = [], []
        for atoms in structures:
            # Latent against latent: the calibration on top is the same map for both.
            mapped_v.append(gp.predict(atoms, variance="mapped").latent_force_variances.ravel())
            exact_v.append(gp.predict(atoms, variance="exact").latent_force_variances.ravel())
        m_std, e_std = np.sqrt(np.concatenate(mapped_v)), np.sqrt(np.concatenate(exact_v))
        ok = e_std > 0
        rel = np.abs(m_std[ok] - e_std[ok]) / e_std[ok]
        report.variance_spearman = float(scipy.stats.spearmanr(m_std, e_std)[0])
        report.variance_relative_error_median = float(np.median(rel))
        report.variance_relative_error_p90 = float(np.percentile(rel, 90))
    report.build_seconds = time.perf_counter() - t0
    core.set_maps(pairs + triplets, covariance, report.to_json())
    log.info("mapped GP: %s", report.summary())
    return report
