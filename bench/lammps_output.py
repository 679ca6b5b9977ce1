"""What bench/lammps_speed.py reads from a LAMMPS screen output beyond the thermo rows
(otfgp.lammps.thermo): the per-run timing breakdown, CPU use and neighbour-list statistics."""
from __future__ import annotations

import re

from otfgp.lammps.thermo import LOOP_RE, thermo_blocks

CPU_RE = re.compile(r"^([\d.]+)% CPU use with (\d+) MPI tasks x (\d+) OpenMP threads")
NEIGHS_RE = re.compile(r"^Ave neighs/atom = (\S+)")
BUILDS_RE = re.compile(r"^Neighbor list builds = (\d+)")
DANGEROUS_RE = re.compile(r"^Dangerous builds = (\d+)")
TIMER_COLUMNS = ("min", "avg", "max", "varavg_percent", "total_percent")


def parse_runs(output: str) -> list[dict]:
    """Every completed run of a LAMMPS screen output: loop time, procs (MPI tasks x OpenMP
    threads), steps, atoms, the timer breakdown (``timers``: average seconds per section;
    ``timer_table``: the whole MPI task timing table), the last thermo row, CPU use,
    ``Performance:`` line and neighbour statistics (those present in the output)."""
    lines = output.splitlines()
    runs = []
    for block in thermo_blocks(output):
        if block.loop is None:
            continue
        loop = block.loop
        run = {"loop_seconds": loop.seconds, "procs": loop.procs, "steps": loop.steps,
               "atoms": loop.atoms, "timers": {}, "timer_table": {},
               "last_thermo": block.last()}
        _read_statistics(lines, block.loop_line + 1, run)
        runs.append(run)
    return runs


def _read_statistics(lines: list[str], start: int, run: dict) -> None:
    """Add to `run` what LAMMPS prints after its Loop time line, from line `start` up to
    the next run."""
    j = start
    in_table = False
    while j < len(lines) and not LOOP_RE.match(lines[j]):
        s = lines[j]
        if s.startswith("Setting up") or s.startswith("Total wall time"):
            break
        c = CPU_RE.match(s)
        if c:
            run["cpu_use_percent"] = float(c.group(1))
            run["lammps_threads"] = int(c.group(3))
        if s.startswith("Performance:"):
            run["performance"] = s.split(":", 1)[1].strip()
        if s.startswith("Section |") and not run["timers"] and not in_table:
            in_table = True  # the first (MPI) table only, not the OpenMP one
            j += 2  # skip the dashed separator
            continue
        if in_table:
            if "|" in s:
                cols = [x.strip() for x in s.split("|")]
                try:
                    run["timers"][cols[0]] = float(cols[2])  # average over ranks
                    run["timer_table"][cols[0]] = dict(zip(
                        TIMER_COLUMNS, (float(x) for x in cols[1:6])))
                except (ValueError, IndexError):
                    pass
            else:
                in_table = False
        for key, rx, cast in (("ave_neighs_per_atom", NEIGHS_RE, float),
                              ("neighbor_list_builds", BUILDS_RE, int),
                              ("dangerous_builds", DANGEROUS_RE, int)):
            n = rx.match(s)
            if n and key not in run:
                run[key] = cast(n.group(1))
        j += 1


def neighbor_info(output: str) -> dict:
    """The neighbour-list cutoff and the attributes of the pair style's list."""
    info = {}
    m = re.search(r"master list distance cutoff = (\S+)", output)
    if m:
        info["list_cutoff"] = float(m.group(1))
    m = re.search(r"^\s*\(1\) pair (\S+), perpetual.*?\n\s*attributes: (.*)$", output, re.M)
    if m:
        info["pair_list"] = f"{m.group(1)}: {m.group(2).strip()}"
    return info


def banner_version(output: str) -> str | None:
    """The version in LAMMPS's banner, e.g. ``22 Jul 2025 - Update 4``."""
    m = re.search(r"^LAMMPS \((.*?)\)", output, re.M)
    return m.group(1) if m else None


def errors(output: str) -> list[str]:
    """LAMMPS's ERROR lines."""
    return [s.strip() for s in output.splitlines() if s.lstrip().startswith("ERROR")]
