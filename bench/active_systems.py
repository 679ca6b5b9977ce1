"""Systems and oracle references of the NEB and MD sections of bench/active_learning.py.

- **O on Cu(100), hollow-to-hollow diffusion.** A 3 x 3 x 3 Cu(100) slab (bottom two layers
  fixed) with O 1.2 A above a hollow site; the final state is O above the neighbouring hollow
  (one surface lattice vector along x). The end points are *not* pre-relaxed. The oracle
  reference relaxes both end points with the oracle (BFGS, same fmax), then runs a
  climbing-image NEB (5 images, improved tangent, BFGS) on the oracle; its oracle calls are
  the force evaluations of both steps.
- **CO on Cu(100), 300 K NVT MD.** The same slab with CO upright on a top site (C 1.9 A
  above the Cu atom, C-O 1.15 A); Langevin dynamics at 300 K. The reference is the oracle
  MD's radial distribution function (ase.geometry.rdf).

The oracle is ASE's EMT (it has parameters for C and O, "for testing only"); its numbers are
those of EMT, not of DFT. Run ``python bench/active_systems.py`` to measure the references.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, fcc100
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.geometry.rdf import get_rdf
from ase.md.langevin import Langevin
from ase.mep import NEB
from ase.optimize import BFGS
from otfgp.builders import maxwell_boltzmann

N_IMAGES = 5
"""Images of the NEB, end points included."""
RDF_RMAX = 3.6
"""RDF range (A): below half the 3 x 3 slab's in-plane period (7.66 A), as ASE requires."""
RDF_BINS = 72


class CountingEMT(EMT):
    """EMT that counts its calculations (one per force evaluation of a new geometry)."""

    def __init__(self, counter: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counter = counter

    def calculate(self, *args: Any, **kwargs: Any) -> None:
        self.counter[0] += 1
        super().calculate(*args, **kwargs)


def cu100_slab(size: tuple[int, int, int] = (3, 3, 3), vacuum: float = 6.0) -> Atoms:
    """A Cu(100) slab (a = 3.61 A) with its bottom two layers fixed (``tag`` counts layers
    from the top)."""
    slab = fcc100("Cu", size, a=3.61, vacuum=vacuum)
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag > size[2] - 2]))
    return slab


def o_diffusion_endpoints(size: tuple[int, int, int] = (3, 3, 3), height: float = 1.2) -> tuple[Atoms, Atoms]:
    """Initial and final states of O hollow-to-hollow diffusion on Cu(100), not relaxed."""
    initial = cu100_slab(size)
    add_adsorbate(initial, "O", height, "hollow")
    final = initial.copy()
    final.positions[-1, 0] += initial.cell[0, 0] / size[0]
    final.set_constraint(initial.constraints)
    return initial, final


def co_on_cu100(size: tuple[int, int, int] = (3, 3, 3)) -> Atoms:
    """CO upright on a top site of Cu(100), C down (C 1.9 A up, C-O 1.15 A)."""
    slab = cu100_slab(size)
    add_adsorbate(slab, "C", 1.9, "ontop")
    add_adsorbate(slab, "O", 1.9 + 1.15, "ontop")
    return slab


def interpolated_band(initial: Atoms, final: Atoms, n_images: int = N_IMAGES) -> list[Atoms]:
    """``n_images`` images from ``initial`` to ``final`` (end points included), linearly
    interpolated (IDPP would need a calculator-free band; linear is what the issue's images are)."""
    images = [initial.copy()] + [initial.copy() for _ in range(n_images - 2)] + [final.copy()]
    NEB(images, method="improvedtangent").interpolate()
    for im in images:
        im.set_constraint(initial.constraints)
    return images


def run_neb(images: Sequence[Atoms], calc: Callable[[], Calculator], fmax: float,
            steps: int = 500) -> tuple[list[Atoms], bool]:
    """Climbing-image NEB (improved tangent, BFGS) of ``images`` with a fresh ``calc()`` per
    image; returns the converged images and whether it converged."""
    images = [im.copy() for im in images]
    for im in images:
        im.calc = calc()
    band = NEB(images, climb=True, method="improvedtangent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converged = BFGS(band, logfile=None).run(fmax=fmax, steps=steps)
    return images, bool(converged)


def oracle_neb(fmax: float, size: tuple[int, int, int] = (3, 3, 3), n_images: int = N_IMAGES) -> dict[str, Any]:
    """The oracle reference: relax both end points on the oracle, then a CI-NEB on it."""
    counter = [0]
    initial, final = o_diffusion_endpoints(size)
    for end in (initial, final):
        end.calc = CountingEMT(counter)
        BFGS(end, logfile=None).run(fmax=fmax)
    endpoint_calls = counter[0]
    images, converged = run_neb(interpolated_band(initial, final, n_images), lambda: CountingEMT(counter), fmax)
    energies = np.array([im.get_potential_energy() for im in images])
    return {
        "fmax": fmax, "n_images": n_images, "converged": converged,
        "oracle_calls": counter[0], "endpoint_calls": endpoint_calls,
        "neb_calls": counter[0] - endpoint_calls,
        "barrier": float(energies.max() - energies[0]),
        "reverse_barrier": float(energies.max() - energies[-1]),
        "energies": (energies - energies[0]).round(5).tolist(),
        "saddle_index": int(energies.argmax()),
    }


def run_md(atoms: Atoms, calc: Calculator, steps: int, temperature: float = 300.0, seed: int = 0,
           timestep: float = 1.0, every: int = 10, friction: float = 0.02) -> list[Atoms]:
    """Langevin NVT MD of ``atoms`` (velocities drawn at ``temperature``) for ``steps`` steps;
    returns a snapshot every ``every`` steps (positions only, no calculator)."""
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ASE >= 3.28 warns of Langevin's default fixcm=True
        maxwell_boltzmann(atoms, temperature, rng)
        dyn = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs, rng=rng)
    frames: list[Atoms] = []

    def snapshot() -> None:
        frame = atoms.copy()
        frame.calc = None
        frames.append(frame)

    dyn.attach(snapshot, interval=every)
    dyn.run(steps)
    return frames


def rdf(frames: Sequence[Atoms], elements: tuple[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The frames' mean radial distribution function (r, g) up to :data:`RDF_RMAX`; with
    ``elements`` the partial RDF of that pair."""
    result = [get_rdf(f, RDF_RMAX, RDF_BINS, elements=elements) for f in frames]
    return result[0][1], np.mean([g for g, _ in result], axis=0)


def rdf_difference(frames_a: Sequence[Atoms], frames_b: Sequence[Atoms],
                   elements: tuple[str, str] | None = None) -> dict[str, float]:
    """Two RDFs compared: the largest |g_a - g_b| and the overlap
    1 - sum|g_a - g_b| / sum(g_a + g_b) (1 = identical, 0 = disjoint)."""
    _, ga = rdf(frames_a, elements)
    _, gb = rdf(frames_b, elements)
    total = float(np.sum(ga + gb))
    return {"max_abs_diff": float(np.max(np.abs(ga - gb))),
            "overlap": 1.0 - float(np.sum(np.abs(ga - gb))) / total if total > 0 else 1.0}


def md_observables(frames: Sequence[Atoms]) -> dict[str, float]:
    """The C-O distance (mean, min, max) and the C height above the top Cu layer (mean)."""
    d = np.array([f.get_distance(-2, -1, mic=True) for f in frames])
    h = np.array([f.positions[-2, 2] - f.positions[:-2, 2].max() for f in frames])
    return {"co_mean": float(d.mean()), "co_min": float(d.min()), "co_max": float(d.max()),
            "c_height_mean": float(h.mean())}


def oracle_md(steps: int = 2000, seed: int = 0) -> tuple[list[Atoms], dict[str, Any]]:
    """The oracle MD of CO on Cu(100) at 300 K and a summary of it."""
    t0 = time.perf_counter()
    frames = run_md(co_on_cu100(), EMT(), steps, seed=seed)
    return frames, {"steps": steps, "seed": seed, "frames": len(frames),
                    "seconds": time.perf_counter() - t0, **md_observables(frames[len(frames) // 5:])}


def main(argv: Sequence[str] = ()) -> None:
    out: dict[str, Any] = {"neb": [oracle_neb(f) for f in (0.05, 0.03)]}
    frames, summary = oracle_md()
    frames2, _ = oracle_md(seed=1)
    summary["rdf_seed0_vs_seed1"] = rdf_difference(frames[len(frames) // 5:], frames2[len(frames2) // 5:])
    out["md"] = summary
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
