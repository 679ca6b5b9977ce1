"""Under `mpirun -np 2 lmp`, the ranks that wait while rank 0 runs the labeller sleep: they
must not take a core from the DFT code (MPICH's blocking collectives busy-poll)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import displaced_al
from lammps_helpers import LMP, MPIRUN, fixed_al_model, learn_deck, write_data

SLEEP_S = 6.0

SLOW_LABELLER = f'''
import time
from pathlib import Path

from ase.calculators.emt import EMT


def slow_emt(atoms):
    """A labeller that takes {SLEEP_S} s, like a (short) DFT call; the file tells the test
    that rank 0 is inside it."""
    Path("labelling").write_text("")
    time.sleep({SLEEP_S})
    Path("labelling").unlink()
    return EMT()
'''

INPUT = learn_deck("5 threshold 0.001 labeller slowlab:slow_emt output_dir learn_out", thermo="thermo 5", steps=5)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    """Process IDs below `root` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _rank_processes(root: int, rank: int) -> list[int]:
    """The processes of MPI rank `rank` under `root` (MPICH's hydra sets PMI_RANK; the venv's
    `lmp` is a Python wrapper, so a rank may be two processes)."""
    found = []
    for pid in _descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in env:
            found.append(pid)
    return found


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes (utime and stime of /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_waiting_ranks_sleep_while_rank0_labels(tmp_path):
    rng = np.random.default_rng(21)
    fixed_al_model(displaced_al(rng), range(6), tmp_path / "model.otfgp")
    write_data(displaced_al(rng, amplitude=0.01), tmp_path / "al.data", ["Al"])
    (tmp_path / "slowlab.py").write_text(SLOW_LABELLER)
    (tmp_path / "in.learn").write_text(INPUT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([MPIRUN, "-np", "2", LMP, "-in", "in.learn", "-log", "none"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "labelling").exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the labeller was never called"
            time.sleep(0.05)
        rank1 = _rank_processes(proc.pid, 1)
        assert rank1, "rank 1's process not found"
        window = SLEEP_S - 2.0  # inside the labeller's sleep, with a margin at both ends
        time.sleep(0.5)
        cpu0, t0 = _cpu_seconds(rank1), time.monotonic()
        time.sleep(window)
        cpu1, t1 = _cpu_seconds(rank1), time.monotonic()
        assert (tmp_path / "labelling").exists(), "the window left the labeller's sleep"
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    assert "otfgp/learn: step 5" in output
    busy = (cpu1 - cpu0) / (t1 - t0)
    assert busy < 0.10, f"rank 1 used {100 * busy:.0f}% of a core while rank 0 was labelling"
