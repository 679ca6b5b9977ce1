"""The report of a mapped GP: how its tables were built and how far they are from the exact
GP. Stored as JSON in the model file's maps section; read by :attr:`GaussianProcess.map_report`
without importing the mapping code."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

#: Default largest force deviation of the map from the exact GP (eV/A) on held-out atoms.
DEFAULT_TOLERANCE = 5e-4


@dataclass
class MapReport:
    """How a map was built and how far it is from the exact GP (eV, eV/A)."""

    grid2: int = 0
    grid3: int = 0
    grid2_variance: int = 0
    grid3_variance: int = 0
    lower2: float = 0.0
    lower3: float = 0.0
    tolerance: float = DEFAULT_TOLERANCE
    heldout_atoms: int = 0
    force_error_mean: float = float("nan")
    force_error_max: float = float("nan")
    energy_error_max_per_atom: float = float("nan")
    variance_spearman: float = float("nan")
    variance_relative_error_median: float = float("nan")
    variance_relative_error_p90: float = float("nan")
    build_seconds: float = 0.0
    iterations: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "MapReport":
        return cls(**json.loads(text)) if text else cls()

    def summary(self) -> str:
        """One line for logs and the CLI."""
        s = (f"grids {self.grid2} (pairs) / {self.grid3}^3 (triplets); force deviation from the "
             f"exact GP on {self.heldout_atoms} held-out atoms: mean {self.force_error_mean * 1e3:.3f}, "
             f"max {self.force_error_max * 1e3:.3f} meV/A; built in {self.build_seconds:.2f} s")
        if np.isfinite(self.variance_spearman):
            s += (f"; mapped std vs exact: Spearman {self.variance_spearman:.3f}, median relative "
                  f"error {self.variance_relative_error_median:.0%}")
        return s
