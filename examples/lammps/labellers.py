"""Labellers for fix otfgp/learn: module:function names that take an ase.Atoms and return an
ASE calculator (or a dict with energy/forces/stress)."""
from ase.calculators.emt import EMT

from otfgp.labellers import espresso_al_calculator


def emt(atoms):
    """ASE's EMT: the cheap stand-in oracle."""
    return EMT()


def qe(atoms):
    """Quantum ESPRESSO (pw.x) with the cheap Al settings of otfgp's labeller."""
    return espresso_al_calculator("qe_run", kpts=(1, 1, 1))
