"""ASE's EMT potential as a labeller: the cheap stand-in oracle for tests and benchmarks.
Registered as labeller type ``"emt"`` (see :mod:`otfgp.labellers`)."""
from __future__ import annotations

from ase.calculators.calculator import Calculator


def emt_labeller() -> Calculator:
    """ASE's EMT potential (Al, Cu, Ag, Au, Ni, Pd, Pt; also H, C, N, O): a cheap stand-in oracle."""
    from ase.calculators.emt import EMT

    return EMT()
