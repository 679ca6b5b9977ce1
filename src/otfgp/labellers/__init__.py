"""Reference labellers (ASE calculators) for training data."""
from .espresso import espresso_al_calculator

__all__ = ["espresso_al_calculator"]
