"""pw.x for real: starting a frame's SCF from the previous frame gives the same labels as
from scratch; the rule restarts only near frames of the same system; a failed or unread
restart falls back to scratch; launcher templates start the real pw.x.

4-atom Al cells, ecut 15 Ry, k 2x2x2: about 1 s per pw.x call on an idle core.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from otfgp.labellers import espresso_calculator, find_openmpi_mpirun

pytestmark = pytest.mark.skipif(
    shutil.which("pw.x") is None,
    reason="Quantum ESPRESSO pw.x not on PATH (apt-get install quantum-espresso quantum-espresso-data)")

SETTINGS = {"kpts": (2, 2, 2), "ecutwfc": 15.0}


def _frames() -> tuple[Atoms, Atoms]:
    a = bulk("Al", "fcc", a=4.05, cubic=True)
    a.rattle(0.05, seed=1)
    b = a.copy()
    b.rattle(0.02, seed=2)  # every atom within ~0.06 A of a
    return a, b


def _label(calc, atoms: Atoms) -> tuple[float, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def _calls_log(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "pw_calls.jsonl").read_text().splitlines()]


def test_restart_from_the_previous_frame_gives_the_scratch_labels(tmp_path):
    """Same labels to SCF tolerance (conv_thr 1e-10 Ry: measured 1e-5 eV/A apart; at the
    default 1e-6 Ry the two differ by ~1 meV/A, each that far from the converged SCF)."""
    a, b = _frames()
    scratch = espresso_calculator(tmp_path / "scratch", conv_thr=1e-10, restart_displacement=0, **SETTINGS)
    e_ref, f_ref = _label(scratch, b)
    assert scratch.calls[-1]["restart"] is False
    assert not (tmp_path / "scratch" / "otfgp.save").exists()  # no restart: no files written

    calc = espresso_calculator(tmp_path / "restart", conv_thr=1e-10, restart_displacement=0.2, **SETTINGS)
    _label(calc, a)
    e, f = _label(calc, b)
    first, second = calc.calls
    assert first["restart"] is False and first["max_displacement_A"] is None
    assert second["restart"] is True and 0.0 < second["max_displacement_A"] < 0.2
    assert "initial density is read from file" in (tmp_path / "restart" / "espresso.pwo").read_text()
    assert isinstance(second["scf_iterations"], int) and 1 <= second["scf_iterations"] < 100
    assert second["scf_iterations"] <= scratch.calls[-1]["scf_iterations"]
    assert calc.results["restart"] is True and calc.results["scf_iterations"] == second["scf_iterations"]
    assert _calls_log(tmp_path / "restart") == calc.calls  # recorded in the labeller's directory
    print(f"\nscratch {scratch.calls[-1]['scf_iterations']} iterations, restart {second['scf_iterations']}; "
          f"|dE| = {abs(e - e_ref):.2e} eV, max |dF| = {np.abs(f - f_ref).max():.2e} eV/A")
    assert abs(e - e_ref) < 1e-5
    np.testing.assert_allclose(f, f_ref, atol=1e-4)


def test_far_frames_and_other_cells_start_from_scratch(tmp_path):
    a, _ = _frames()
    far = a.copy()
    far.positions[0] += [0.3, 0.0, 0.0]
    strained = a.copy()
    strained.set_cell(a.cell * 1.01, scale_atoms=True)
    calc = espresso_calculator(tmp_path, restart_displacement=0.2, **SETTINGS)
    for frame in (a, far, strained):
        _label(calc, frame)
    assert [c["restart"] for c in calc.calls] == [False, False, False]
    assert calc.calls[1]["max_displacement_A"] == pytest.approx(0.3)
    assert calc.calls[2]["max_displacement_A"] is None  # another cell: not comparable


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_failed_restart_is_repeated_from_scratch(tmp_path):
    """A pw.x that fails whenever asked to start from files: the labeller repeats the
    frame from scratch and the labels are the scratch ones."""
    pw = shutil.which("pw.x")
    fake = _script(tmp_path / "pw-no-restart",
                   f'if grep -q startingpot espresso.pwi; then echo "cannot restart" >&2; exit 3; fi\n'
                   f'exec {pw} "$@"\n')
    a, b = _frames()
    calc = espresso_calculator(tmp_path / "run", pw_command=fake, restart_displacement=0.2, **SETTINGS)
    _label(calc, a)
    e, f = _label(calc, b)
    e_ref, f_ref = _label(espresso_calculator(tmp_path / "ref", restart_displacement=0, **SETTINGS), b)
    assert calc.calls[-1]["restart"] is False
    assert abs(e - e_ref) < 1e-4 and np.abs(f - f_ref).max() < 1e-3  # both from scratch, conv_thr 1e-6


def test_unreadable_restart_files_are_recorded_as_scratch(tmp_path):
    """pw.x silently starts from atoms when the saved density is gone: the record says so."""
    a, b = _frames()
    calc = espresso_calculator(tmp_path, restart_displacement=0.2, **SETTINGS)
    _label(calc, a)
    shutil.rmtree(tmp_path / "otfgp.save")
    _label(calc, b)
    assert calc.calls[-1]["restart"] is False


def test_launcher_template_starts_the_real_pw_x(tmp_path):
    record = tmp_path / "launched.txt"
    wrapper = _script(tmp_path / "site-launch", f'echo "$@" >> {record}\nshift\nexec "$@"\n')
    calc = espresso_calculator(tmp_path / "run", launcher=f"{wrapper} {{ranks}} {{program}}",
                               restart_displacement=0, **SETTINGS)
    energy, forces = _label(calc, _frames()[0])
    assert -58.0 < energy / 4 < -56.0 and forces.shape == (4, 3)
    assert record.read_text().split() == ["1", shutil.which("pw.x"), "-in", "espresso.pwi"]


def test_mpirun_template_runs_pw_x_under_openmpi(tmp_path):
    try:
        mpirun = find_openmpi_mpirun()
    except FileNotFoundError:
        pytest.skip("no OpenMPI mpirun")
    calc = espresso_calculator(tmp_path, launcher=f"{mpirun} --allow-run-as-root -np {{ranks}}",
                               mpi_ranks=1, restart_displacement=0, **SETTINGS)
    assert calc.profile.command == f"{mpirun} --allow-run-as-root -np 1 {shutil.which('pw.x')}"
    energy, _ = _label(calc, _frames()[0])
    assert -58.0 < energy / 4 < -56.0
