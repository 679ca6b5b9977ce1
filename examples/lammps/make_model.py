"""Build the small Al model and data file used by the LAMMPS examples (deterministic).

    python make_model.py     # writes al.otfgp (exact GP), al_mapped.otfgp (mapped) and al.data
"""
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

import otfgp

rng = np.random.default_rng(2024)
gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
for _ in range(4):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    atoms.positions += rng.uniform(-0.2, 0.2, atoms.positions.shape)
    atoms.calc = EMT()
    gp.add_training_data(atoms, atom_indices=rng.choice(len(atoms), 10, replace=False))
gp.train(optimize=True)
gp.save("al.otfgp")
report = gp.map()  # spline tables of the mean and the reduced-GP variance
gp.save("al_mapped.otfgp")
print(report.summary())

start = bulk("Al", "fcc", a=4.05, cubic=True).repeat((3, 3, 3))  # 108 atoms
start.positions += rng.uniform(-0.04, 0.04, start.positions.shape)
write("al.data", start, format="lammps-data", atom_style="atomic", masses=True)
print(gp, gp.hyperparameters)
