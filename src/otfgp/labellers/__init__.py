"""Reference labellers (ASE calculators) for training data."""
from .espresso import (
    clean_mpi_environment,
    emt_labeller,
    espresso_al_calculator,
    espresso_calculator,
    find_openmpi_mpirun,
    make_labeller,
)

__all__ = [
    "clean_mpi_environment",
    "emt_labeller",
    "espresso_al_calculator",
    "espresso_calculator",
    "find_openmpi_mpirun",
    "make_labeller",
]
