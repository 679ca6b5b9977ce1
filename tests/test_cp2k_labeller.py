"""A second real DFT code from the command line: CP2K (Debian's cp2k, ASE's CP2K calculator
through ``cp2k_shell``) as ``[labeller] type = "cp2k"`` of ``otfgp otf``.

Cheap, unconverged settings (4-atom Al, Gamma point only, SZV basis, 100 Ry): one CP2K
call, 3-8 s. They test the plumbing, not the physics; docs/labellers.md has real settings.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

pytestmark = pytest.mark.skipif(shutil.which("cp2k_shell") is None,
                                reason="CP2K not installed (Debian: apt-get install cp2k)")

OTFGP = str(Path(sys.executable).parent / "otfgp")
CP2K_INPUT = """
&FORCE_EVAL
  &DFT
    &SCF
      ADDED_MOS 10
      &SMEAR ON
        METHOD FERMI_DIRAC
        ELECTRONIC_TEMPERATURE [K] 1000
      &END SMEAR
      &MIXING
        METHOD BROYDEN_MIXING
        ALPHA 0.3
      &END MIXING
    &END SCF
  &END DFT
&END FORCE_EVAL
"""

CONFIG = f'''
[structure]
lattice = "fcc"
element = "Al"
a = 4.05
cubic = true
jitter = 0.1
seed = 1

[md]
timestep_fs = 2.0
temperature_K = 300
seed = 2
steps = 2

[model]
species = ["Al"]
twobody = 4.0

[labeller]
type = "cp2k"
command = "cp2k_shell"

[labeller.parameters]
xc = "PADE"
basis_set = "SZV-MOLOPT-SR-GTH"
pseudo_potential = "GTH-PADE-q3"
cutoff = 1360.57          # eV (100 Ry)
max_scf = 100
print_level = "LOW"
inp = """{CP2K_INPUT}"""

[otf]
threshold = 100.0         # only the first frame goes to DFT
output_dir = "run"
'''


def test_otf_cli_with_cp2k_labels(tmp_path):
    (tmp_path / "cp2k.toml").write_text(CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([OTFGP, "otf", "cp2k.toml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["dft_call_steps"] == [0]
    print(f"\nCP2K: {summary['wall_time_s']['dft']:.1f} s for one call")
    frame = read(run / "dft" / "frame_0000000.extxyz")
    energy, forces = frame.get_potential_energy(), frame.get_forces()
    assert -60.0 < energy / 4 < -45.0  # GTH 3-electron Al at these settings: about -53 eV/atom
    assert forces.shape == (4, 3) and np.all(np.isfinite(forces))
    assert 0.05 < np.abs(forces).max() < 5.0  # jittered atoms feel forces
    assert np.abs(forces.sum(axis=0)).max() < 0.05  # nearly balanced (GPW grid breaks it slightly)
    assert (run / "pw" / "cp2k.inp").is_file()  # CP2K ran in the labeller's directory
