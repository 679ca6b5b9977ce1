"""The labeller registry beyond pw.x: any ASE calculator by name, ``module:function`` with
parameters, launcher templates, and the restart rule's displacement (no DFT program runs
here; see test_qe_restart.py and test_cp2k_labeller.py for the real ones)."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
from otfgp.config import ConfigError, load_config, validate_config
from otfgp.learning import label
from otfgp.labellers import check_labeller_spec, launch_command, make_labeller
from otfgp.labellers.restart import max_displacement, should_restart

PW = shutil.which("pw.x")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _config(labeller: dict) -> dict:
    """The EMT example's config with another [labeller]."""
    return {**load_config(EXAMPLES / "otf_al_emt.toml"), "labeller": labeller}


# --------------------------------------------------------------- any ASE calculator
@pytest.mark.parametrize("labeller", [
    {"type": "vasp", "parameters": {"xc": "PBE", "encut": 400, "kpts": [4, 4, 4]},
     "command": "srun -n 64 vasp_std"},
    {"type": "cp2k"},
    {"type": "ase:vasp"},
    {"type": "ase:espresso", "command": "pw.x", "profile": {"pseudo_dir": "/tmp"}},
])
def test_config_accepts_any_ase_calculator_by_name(labeller):
    assert validate_config(_config(labeller))["labeller"] == labeller


@pytest.mark.parametrize("labeller,match", [
    ({"type": "vasp_std"}, "'vasp_std' unknown.*ASE calculator name"),
    ({"type": "ase:vaspx"}, "'vaspx' is not an ASE calculator"),
    ({"type": "vasp", "encut": 400}, "unknown key labeller.encut.*known: command, directory, parameters, profile"),
    ({"type": "vasp", "parameters": 400}, "labeller.parameters must be a table"),
    ({"type": "mymodule:factory", "kpts": 4}, "unknown key labeller.kpts.*known: parameters"),
])
def test_config_rejects_bad_ase_and_function_labellers_naming_the_problem(labeller, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(_config(labeller))


def test_ase_calculator_that_does_not_import_is_a_clear_error():
    if importlib.util.find_spec("gpaw") is not None:
        pytest.skip("gpaw is installed here")
    with pytest.raises(ValueError, match="'gpaw' does not import.*installed"):
        check_labeller_spec({"type": "gpaw"})


def test_vasp_labeller_gets_its_parameters_command_and_directory(tmp_path):
    calc = make_labeller({"type": "vasp", "parameters": {"xc": "PBE", "encut": 400, "kpts": [2, 2, 2]},
                          "command": "sh -c 'exit 1'"}, directory=tmp_path / "dft")
    assert type(calc).__name__ == "Vasp"
    assert calc.parameters["encut"] == 400 and calc.parameters["xc"] == "PBE"
    assert calc.command == "sh -c 'exit 1'"
    assert (tmp_path / "dft").is_dir() and str(calc.directory) == str(tmp_path / "dft")


def test_command_whose_program_is_missing_is_reported_up_front(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-vasp"):
        make_labeller({"type": "vasp", "command": "srun no-such-vasp"}, directory=tmp_path)


def test_profile_based_ase_calculator_gets_its_profile(tmp_path):
    calc = make_labeller({"type": "ase:espresso", "command": "mpiexec -n 2 pw.x",
                          "profile": {"pseudo_dir": str(tmp_path)},
                          "parameters": {"input_data": {"system": {"ecutwfc": 20}}}}, directory=tmp_path)
    assert type(calc).__name__ == "Espresso" and type(calc).__module__ == "ase.calculators.espresso"
    assert calc.profile.command == "mpiexec -n 2 pw.x" and calc.profile.pseudo_dir == str(tmp_path)
    with pytest.raises(ValueError, match="'vasp' is not one"):
        make_labeller({"type": "vasp", "command": "sh", "profile": {"x": 1}}, directory=tmp_path)
    with pytest.raises(ValueError, match="profile needs labeller.command"):
        make_labeller({"type": "ase:espresso", "profile": {"pseudo_dir": "/tmp"}}, directory=tmp_path)


def test_ase_calculator_by_name_labels_frames_in_an_otf_run(tmp_path):
    """``ase:emt`` (ASE's EMT through the by-name route) drives a short on-the-fly run."""
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.rattle(0.05, seed=1)
    frame = label(atoms, make_labeller("ase:emt", directory=tmp_path))
    ref = atoms.copy()
    ref.calc = EMT()
    np.testing.assert_allclose(frame.get_forces(), ref.get_forces(), atol=1e-12)
    from ase.md.verlet import VelocityVerlet
    model = otfgp.GaussianProcess(["Al"], {"twobody": 4.0})
    otf = otfgp.OTF(VelocityVerlet(atoms, 1e-15), model, {"type": "ase:emt"}, threshold=1e-9,
                    output_dir=str(tmp_path / "run"))
    assert otf.run(2)["dft_call_steps"] == [0, 1, 2]


def test_function_labeller_is_called_with_its_parameters(tmp_path, monkeypatch):
    (tmp_path / "my_labellers.py").write_text(
        "from ase.calculators.emt import EMT\n"
        "seen = []\n"
        "def factory(atoms, scale=1.0, tag=None):\n"
        "    seen.append((len(atoms), scale, tag))\n"
        "    atoms.calc = EMT()\n"
        "    return {'forces': scale * atoms.get_forces()}\n")
    monkeypatch.chdir(tmp_path)
    fn = make_labeller({"type": "my_labellers:factory", "parameters": {"scale": 2.0, "tag": "x"}})
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.rattle(0.05, seed=2)
    frame = label(atoms, fn)
    ref = atoms.copy()
    ref.calc = EMT()
    np.testing.assert_allclose(frame.get_forces(), 2.0 * ref.get_forces(), atol=1e-12)
    assert sys.modules["my_labellers"].seen == [(4, 2.0, "x")]


# --------------------------------------------------------------- launcher templates
@pytest.mark.parametrize("launcher,ranks,expected", [
    ("srun -n {ranks}", 4, ["srun", "-n", "4", "/opt/qe/pw.x"]),
    ("mpiexec -n {ranks} -ppn 2", 2, ["mpiexec", "-n", "2", "-ppn", "2", "/opt/qe/pw.x"]),
    ("mpiexec -n {ranks} {program} -nk 2", 8, ["mpiexec", "-n", "8", "/opt/qe/pw.x", "-nk", "2"]),
    ("site-wrapper --cores={ranks} -- {program}", 1, ["site-wrapper", "--cores=1", "--", "/opt/qe/pw.x"]),
    ("mpirun -np {ranks}", 1, ["mpirun", "-np", "1", "/opt/qe/pw.x"]),  # a launcher is used on 1 rank too
])
def test_launcher_template_builds_the_command(launcher, ranks, expected):
    assert launch_command("/opt/qe/pw.x", ranks, launcher=launcher) == expected


def test_default_launch_is_todays_openmpi_command():
    assert launch_command("/usr/bin/pw.x", 1) == ["/usr/bin/pw.x"]
    assert launch_command("/usr/bin/pw.x", 4, mpirun="/usr/bin/mpirun", mpi_args=["--mca", "x", "1"]) == [
        "/usr/bin/mpirun", "--allow-run-as-root", "-np", "4", "--mca", "x", "1", "/usr/bin/pw.x"]


def test_program_path_with_spaces_stays_one_argument():
    assert launch_command("/opt/my qe/pw.x", 2, launcher="srun -n {ranks} {program}") == [
        "srun", "-n", "2", "/opt/my qe/pw.x"]


@pytest.mark.parametrize("kwargs,match", [
    ({"launcher": "srun -n {nranks}"}, r"unknown placeholder \{nranks\}"),
    ({"launcher": "srun -n {ranks"}, "not a valid template"),
    ({"launcher": "  "}, "non-empty"),
    ({"launcher": "srun -n {ranks}", "mpirun": "/usr/bin/mpirun"}, "either launcher or mpirun"),
    ({"launcher": "srun -n {ranks}", "ranks": 0}, "mpi_ranks must be a positive integer"),
])
def test_bad_launcher_is_a_clear_error(kwargs, match):
    ranks = kwargs.pop("ranks", 2)
    with pytest.raises(ValueError, match=match):
        launch_command("pw.x", ranks, **kwargs)


@pytest.mark.skipif(PW is None, reason="pw.x not installed")
def test_espresso_labeller_takes_a_launcher_from_the_config(tmp_path):
    from otfgp.builders import build_labeller

    calc = build_labeller({"type": "espresso", "launcher": "env OMP_NUM_THREADS=1 {program}"}, tmp_path)
    assert calc.profile.command == f"env OMP_NUM_THREADS=1 {PW}"
    calc = build_labeller({"type": "espresso", "launcher": "srun -n {ranks}", "mpi_ranks": 4}, tmp_path) \
        if shutil.which("srun") else None
    if calc is not None:
        assert calc.profile.command == f"srun -n 4 {PW}"
    else:  # no srun here: the missing launcher is named up front, not at the first frame
        with pytest.raises(ConfigError, match="'srun'"):
            build_labeller({"type": "espresso", "launcher": "srun -n {ranks}", "mpi_ranks": 4}, tmp_path)
    with pytest.raises(ConfigError, match=r"unknown placeholder \{n\}"):
        build_labeller({"type": "espresso", "launcher": "srun -n {n}"}, tmp_path)


# --------------------------------------------------------------- restart rule
def test_max_displacement_uses_the_minimum_image():
    a = Atoms("Al2", positions=[[0.05, 1, 1], [2, 2, 2]], cell=[4, 4, 4], pbc=True)
    b = a.copy()
    b.positions[0, 0] = 3.98  # crossed the boundary: 0.07 A, not 3.93 A
    b.positions[1, 1] += 0.03
    assert max_displacement(a, b) == pytest.approx(0.07)
    assert should_restart(a, b, 0.1) == (True, pytest.approx(0.07))
    assert should_restart(a, b, 0.05)[0] is False
    assert should_restart(a, b, 0.0) == (False, None)  # 0: never
    assert should_restart(None, b, 0.1) == (False, None)


@pytest.mark.parametrize("change", ["cell", "species", "count", "pbc"])
def test_a_different_system_never_restarts(change):
    a = bulk("Al", "fcc", a=4.05, cubic=True)
    b = a.copy()
    if change == "cell":
        b.set_cell(b.cell * 1.001, scale_atoms=False)
    elif change == "species":
        b.symbols[0] = "Cu"
    elif change == "count":
        b = b[:3]
    else:
        b.pbc = [True, True, False]
    assert max_displacement(a, b) is None
    assert should_restart(a, b, 10.0) == (False, None)


needs_pw = pytest.mark.skipif(shutil.which("pw.x") is None, reason="needs Quantum ESPRESSO's pw.x")


@needs_pw
@pytest.mark.parametrize("settings, match", [
    ({"kpts": [2.7, 1.5, 2]}, "kpts must be a positive integer"),  # ASE wrote 2 1 2 without a word
    ({"kpts": 2}, "kpts must be three integers"),
    ({"koffset": [2, 5, -1]}, "koffset must be three values 0 or 1"),
    ({"ecutwfc": float("nan")}, "ecutwfc must be a positive number"),
    ({"ecutwfc": "abc"}, "ecutwfc must be a positive number"),
    ({"conv_thr": -1.0}, "conv_thr must be a positive number"),
    ({"smearing": "gausian"}, "smearing must be one of"),
    ({"input_data": {"sytem": {"nspin": 2}}}, "'sytem' is not a pw.x namelist"),  # pw.x ignored it
    ({"input_data": "abc"}, "input_data must be a table"),
])
def test_espresso_settings_pw_x_would_misread_are_refused(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match):
        make_labeller({"type": "espresso", **settings}, directory=tmp_path)


@needs_pw
def test_relative_paths_are_made_absolute_for_pw_x(tmp_path, monkeypatch):
    """pw.x runs in the labeller's directory: a relative pseudo_dir was read from there, and
    pw.x silently fell back to its own default pseudopotentials."""
    (tmp_path / "pseudo").mkdir()
    from otfgp.labellers.espresso import DEFAULT_PSEUDO_DIR

    shutil.copy(Path(DEFAULT_PSEUDO_DIR) / "Al.pz-vbc.UPF", tmp_path / "pseudo")
    monkeypatch.chdir(tmp_path)
    calc = make_labeller({"type": "espresso", "pseudo_dir": "pseudo"}, directory=tmp_path / "run" / "pw")
    assert calc.profile.pseudo_dir == str(tmp_path / "pseudo")


def test_labeller_results_that_cannot_be_labels_are_named():
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    forces = np.zeros((4, 3))
    for result, match in (({"forces": forces, "energy": np.zeros(4)}, "energy .* of shape \\(4,\\)"),
                          ({"forces": forces, "energy": "abc"}, "energy 'abc'"),
                          ({"forces": forces, "energy": None}, "energy None"),
                          ({"forces": "abc"}, "forces 'abc'"),
                          ({"energy": 1.0}, "no forces")):
        with pytest.raises(otfgp.LabellerError, match=match):
            label(atoms, lambda a, r=result: r)


def test_a_partial_labeller_is_named_by_its_function():
    import functools

    from otfgp.label_checks import labeller_name

    assert labeller_name(functools.partial(make_labeller, "emt")) == "otfgp.labellers:make_labeller"


def test_config_labellers_that_cannot_be_built_are_config_errors(tmp_path):
    from otfgp.builders import build_labeller

    for spec, match in (({"type": "nosuchmodule_xyz:func"}, "nosuchmodule_xyz"), ({"type": "os:nosuchfunc"},
                                                                                   "nosuchfunc")):
        with pytest.raises(ConfigError, match=match):
            build_labeller(spec, tmp_path)


def test_one_atom_with_a_temperature_is_refused_before_any_dft():
    """Its only momentum zeroed, it has no degrees of freedom: the thermostat then divided
    by zero and the run died on NaN positions after the first DFT call."""
    from otfgp.builders import set_velocities

    atoms = bulk("Al", "fcc", a=4.05)
    with pytest.raises(ConfigError, match="0 degrees of freedom"):
        set_velocities(atoms, {"temperature_K": 300.0, "seed": 0})
    set_velocities(atoms, {"temperature_K": 300.0, "seed": 0, "zero_momentum": False})
    assert atoms.get_kinetic_energy() > 0


# --------------------------------------------------------------- a killed run leaves no pw.x
FAKE_PW = """#!/bin/sh
echo $$ > "{pidfile}"
exec sleep 120
"""

LABEL_ONE_FRAME = """
import sys
from ase.build import bulk
from otfgp.labellers.espresso import espresso_calculator

calc = espresso_calculator(sys.argv[1], pseudo_dir=sys.argv[2], pw_command=sys.argv[3])
atoms = bulk("Al", "fcc", a=4.05, cubic=True)
atoms.calc = calc
atoms.get_forces()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("setpriv") is None,
                    reason="needs Linux's setpriv (util-linux)")
def test_pw_dies_with_a_killed_parent(tmp_path):
    """SIGKILL of the process running the espresso labeller also ends its pw.x (here a
    stand-in that sleeps): an orphan would write into the resumed run's directory."""
    import os
    import signal
    import subprocess
    import time

    pidfile = tmp_path / "pw.pid"
    fake = tmp_path / "pw.x"
    fake.write_text(FAKE_PW.format(pidfile=pidfile))
    fake.chmod(0o755)
    (tmp_path / "pseudo").mkdir()
    (tmp_path / "pseudo" / "Al.pz-vbc.UPF").write_text("")
    parent = subprocess.Popen([sys.executable, "-c", LABEL_ONE_FRAME, str(tmp_path / "pw"),
                               str(tmp_path / "pseudo"), str(fake)])
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            assert parent.poll() is None, "the labeller stopped before it started pw.x"
            time.sleep(0.1)
        child = int(pidfile.read_text())
        os.kill(child, 0)  # running
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if Path(f"/proc/{child}/stat").read_text().split(") ")[-1].startswith("Z"):
                break  # a zombie waiting for its reaper: it has ended
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("pw.x survived its killed parent")
    finally:
        parent.kill()
