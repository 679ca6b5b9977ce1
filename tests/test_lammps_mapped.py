"""A mapped model in LAMMPS: same forces and stds as Python, MPI = serial, NVE energy drift."""
from __future__ import annotations

import numpy as np
import pytest

import otfgp
from otfgp.lammps.thermo import thermo_rows
from conftest import displaced_al
from lammps_helpers import fixed_al_model, run_lmp, write_data


@pytest.fixture(scope="module")
def mapped_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mapped")
    rng = np.random.default_rng(17)
    exact = fixed_al_model(displaced_al(rng, amplitude=0.04), range(16), d / "exact.otfgp")
    mapped = otfgp.GaussianProcess.load(d / "exact.otfgp")
    mapped.map()
    mapped.save(d / "mapped.otfgp")
    atoms = displaced_al(rng, amplitude=0.03)
    write_data(atoms, d / "al.data", ["Al"])
    return d, exact, mapped, atoms


def test_mapped_pair_style_matches_python(mapped_dir):
    d, exact, mapped, atoms = mapped_dir
    (d / "in.run0").write_text("""
units metal
atom_style atomic
read_data al.data
pair_style otfgp
pair_coeff * * mapped.otfgp Al
compute std all otfgp/std/atom
compute stdx all otfgp/std/atom exact
dump d all custom 1 out.txt id fx fy fz c_std[1] c_std[2] c_std[3] c_stdx[1] c_stdx[2] c_stdx[3]
dump_modify d format float %.15g sort id
thermo_style custom step pe
thermo_modify format float %.15g
run 0
""")
    out = run_lmp(["-in", "in.run0", "-log", "none"], d)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = np.loadtxt(d / "out.txt", skiprows=9)
    ref = mapped.predict(atoms, variance="mapped")
    np.testing.assert_allclose(rows[:, 1:4], ref.forces, rtol=1e-9, atol=1e-10)
    assert thermo_rows(out.stdout)[0, 1] == pytest.approx(ref.energy, rel=1e-10)
    np.testing.assert_allclose(rows[:, 4:7], ref.force_stds, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(rows[:, 7:10], exact.predict(atoms, variance="exact").force_stds, rtol=1e-7, atol=1e-12)
    # Mapped and exact GP agree to the map's tolerance, in LAMMPS too.
    assert np.abs(rows[:, 1:4] - exact.predict(atoms, variance=False).forces).max() < 1e-3


NVE = """
units metal
atom_style atomic
read_data al.data
pair_style otfgp
pair_coeff * * {model} Al
velocity all create 600 4242 dist gaussian
fix 1 all nve
timestep 0.002
{extra}
thermo_style custom step pe ke etotal {cols}
thermo_modify format float %20.12g
thermo {every}
run {steps}
"""


def test_mapped_mpi_equals_serial(mapped_dir):
    d, *_ = mapped_dir
    text = NVE.format(model="mapped.otfgp", steps=100, every=10,
                      extra="compute std all otfgp/std/atom\ncompute mx all reduce max c_std[4]", cols="c_mx")
    (d / "in.mpi").write_text(text)
    serial = run_lmp(["-in", "in.mpi", "-log", "none"], d)
    mpi = run_lmp(["-in", "in.mpi", "-log", "none"], d, nprocs=2)
    assert serial.returncode == 0 and mpi.returncode == 0, serial.stdout[-2000:] + mpi.stdout[-2000:]
    a, b = thermo_rows(serial.stdout), thermo_rows(mpi.stdout)
    assert a.shape == (11, 5) and a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-8)


def _drift(model: str, d) -> tuple[float, float]:
    (d / f"in.nve_{model}").write_text(NVE.format(model=model, steps=1000, every=10, extra="", cols=""))
    out = run_lmp(["-in", f"in.nve_{model}", "-log", "none"], d, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = thermo_rows(out.stdout)
    assert rows.shape[0] == 101
    etot, natoms = rows[:, 3], 32
    # Drift: change of the mean total energy between the first and last 100 steps, per atom;
    # plus the largest excursion from the start.
    return abs(etot[-10:].mean() - etot[:10].mean()) / natoms, np.abs(etot - etot[0]).max() / natoms


def test_mapped_nve_drift_no_worse_than_exact(mapped_dir):
    d, *_ = mapped_dir
    drift_m, excursion_m = _drift("mapped.otfgp", d)
    drift_e, excursion_e = _drift("exact.otfgp", d)
    print(f"NVE 1000 steps, 32 atoms: drift mapped {drift_m:.3g}, exact {drift_e:.3g} eV/atom; "
          f"max excursion mapped {excursion_m:.3g}, exact {excursion_e:.3g} eV/atom")
    # Both are set by the integrator (same forces to < 1 meV/A); the map adds no drift of its own.
    assert excursion_m < 1e-3 and excursion_e < 1e-3
    assert drift_m <= 1.2 * drift_e + 2e-6
    assert excursion_m <= 1.2 * excursion_e + 2e-6


def test_shipped_example_models_are_current(tmp_path):
    """examples/lammps ships its models: they load in this version and the uncertainty example
    runs (a model file left behind by a format change would fail here, not for a user)."""
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "examples" / "lammps"
    exact = otfgp.GaussianProcess.load(src / "al.otfgp")
    mapped = otfgp.GaussianProcess.load(src / "al_mapped.otfgp")
    assert not exact.mapped and mapped.mapped and mapped.core.maps["covariance"] is not None
    for name in ("al.data", "al_mapped.otfgp", "in.uncertainty"):
        shutil.copy(src / name, tmp_path / name)
    out = run_lmp(["-in", "in.uncertainty", "-log", "none"], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    stds = thermo_rows(out.stdout)[:, -1]  # c_maxstd
    assert len(stds) == 11 and np.all(np.isfinite(stds)) and np.all(stds > 0)
