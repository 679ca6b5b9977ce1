"""LAMMPS input decks of bench/lammps_speed.py: fcc Al with one pair style, an untimed setup run,
a timed run stopped by a timeout and an untimed final run (see bench/README.md)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TEMPERATURE = 300.0
TIMESTEP = 0.002  # ps
DISPLACEMENT = 0.04  # A, uniform per coordinate
SEED_DISPLACE = 12345
SEED_VELOCITY = 4928459
LATTICE, A0, MASS = "fcc", 4.05, 26.9815385
SIZES = {256: (4, 4, 4), 4000: (10, 10, 10), 32000: (20, 20, 20)}  # atoms -> cubic cells


def coord_lines(coord_cutoffs: Sequence[float]) -> list[str]:
    """Computes and a thermo style printing the mean number of neighbours and of neighbour
    pairs within each cutoff (columns c_nI[1], c_nI[2] for the I-th cutoff)."""
    lines, columns = [], []
    for i, rc in enumerate(coord_cutoffs):
        # just inside the cutoff: coord/atom refuses a cutoff beyond the pair cutoff, which
        # for sw is sigma*a, rounded
        lines += [f"compute         k{i} all coord/atom cutoff {rc * (1 - 1e-9):.10f}",
                  f"variable        p{i} atom c_k{i}*(c_k{i}-1)/2",
                  f"compute         n{i} all reduce ave c_k{i} v_p{i}"]
        columns += [f"c_n{i}[1]", f"c_n{i}[2]"]
    return lines + [f"thermo_style    custom step temp pe etotal {' '.join(columns)}".rstrip(),
                    "thermo          0"]


def uncoord_lines(coord_cutoffs: Sequence[float]) -> list[str]:
    """Undo coord_lines (the thermo style back to step temp pe etotal)."""
    lines = ["thermo_style    custom step temp pe etotal"]
    for i, _ in enumerate(coord_cutoffs):
        lines += [f"uncompute       n{i}", f"variable        p{i} delete", f"uncompute       k{i}"]
    return lines


def header(size: int, pair_lines: list[str], coord_cutoffs: Sequence[float] = ()) -> list[str]:
    """Structure (`size` atoms, a key of SIZES), potential, velocities and the untimed setup
    `run 0` (with neighbour counts within `coord_cutoffs`)."""
    nx, ny, nz = SIZES[size]
    return [
        "units           metal",
        "atom_style      atomic",
        "boundary        p p p",
        f"lattice         {LATTICE} {A0}",
        f"region          box block 0 {nx} 0 {ny} 0 {nz}",
        "create_box      1 box",
        "create_atoms    1 box",
        f"mass            1 {MASS}",
        f"displace_atoms  all random {DISPLACEMENT} {DISPLACEMENT} {DISPLACEMENT} "
        f"{SEED_DISPLACE} units box",
        *pair_lines,
        f"velocity        all create {TEMPERATURE} {SEED_VELOCITY} dist gaussian",
        "fix             nve all nve",
        f"timestep        {TIMESTEP}",
        *coord_lines(coord_cutoffs),
        "run             0               # setup, untimed",
        *uncoord_lines(coord_cutoffs),
    ]


def timed(lines: list[str], target: float, check_every: int,
          coord_cutoffs: Sequence[float] = ()) -> str:
    """The timed run, stopped by the timeout, then an untimed `run 0` that prints the
    final temperature, energy and neighbour counts."""
    return "\n".join([*lines, f"timer           timeout {target:g} every {check_every}",
                      "run             100000000       # timed, stopped by the timeout",
                      "timer           timeout off",
                      *coord_lines(coord_cutoffs),
                      "run             0               # final state, untimed", ""])


def baseline_input(style: str, size: int, potentials: Path, sw_path: Path | None,
                   coord_cutoffs: Sequence[float], target: float, check_every: int) -> str:
    """A timed sw run (with `sw_path`) or eam/alloy run (Al_zhou from `potentials`; no
    neighbour counts: they are compared between sw and otfgp only)."""
    if style.startswith("sw"):
        pair = ["pair_style      sw", f"pair_coeff      * * {sw_path} Al"]
    else:
        pair = ["pair_style      eam/alloy",
                f"pair_coeff      * * {potentials / 'Al_zhou.eam.alloy'} Al"]
        coord_cutoffs = ()
    return timed(header(size, pair, coord_cutoffs), target, check_every, coord_cutoffs)


def otfgp_input(size: int, model: Path, std_every: int | None, coord_cutoffs: Sequence[float],
                target: float, check_every: int) -> str:
    """A timed otfgp run; with `std_every`, thermo prints the largest per-atom force std
    (compute otfgp/std/atom) every `std_every` steps."""
    lines = header(size, ["pair_style      otfgp", f"pair_coeff      * * {model} Al"],
                   coord_cutoffs)
    if std_every:
        lines += ["compute         std all otfgp/std/atom",
                  "compute         maxstd all reduce max c_std[4]",
                  "thermo_style    custom step temp c_maxstd",
                  f"thermo          {std_every}"]
    return timed(lines, target, check_every, coord_cutoffs)
