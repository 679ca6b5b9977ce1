"""MD stages of an ``otfgp otf`` run: :func:`run_stages` drives an :class:`otfgp.OTF` learner
through the ``[[md.stages]]`` of a resolved config, and ``stages.json`` in the run directory
records each stage transition (velocity rescale) so that a resumed run does it exactly once.

Only the public checkpoint API of OTF is used: ``otf.checkpoint_index`` and
``otf.write_checkpoint()``.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .atomic_io import write_json
from .builders import set_velocities
from .config import stage_bounds
from .run_dir import RunDirError, read_json_file

if TYPE_CHECKING:
    from .otf import OTF

STAGES_FILE = "stages.json"

log = logging.getLogger(__name__)


def read_stages_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The contents of ``run_dir/stages.json``: ``transitions`` (stage index -> step, from_K,
    to_K, checkpoint_index), ``completed`` stage indices and, once a run ended,
    ``dft_calls_per_stage``. An empty state when the file does not exist yet."""
    p = Path(run_dir) / STAGES_FILE
    if p.exists():
        state = read_json_file(p, "delete it to have it rebuilt on resume (a velocity rescale at the "
                                  "step resumed from is then done again)")
        if not isinstance(state, dict) or not isinstance(state.get("transitions"), dict):
            raise RunDirError(f"{p} is damaged (not a stages record): delete it to have it rebuilt")
        return state
    return {"transitions": {}, "completed": []}


def _write_stages_state(run_dir: Path, state: Mapping[str, Any]) -> None:
    write_json(run_dir / STAGES_FILE, state, indent=2)


def _thermostat_target(stages: Sequence[Mapping[str, Any]], i: int, md: Mapping[str, Any]) -> float | None:
    """The thermostat temperature of stage ``i``: the last ``temperature_K`` set up to it."""
    t = md.get("temperature_K")
    for s in stages[: i + 1]:
        t = s.get("temperature_K", t)
    return t


def run_stages(otf: "OTF", cfg: Mapping[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the MD stages of the resolved config ``cfg`` from ``otf.step`` on; returns the
    OTF summary with ``stages`` (DFT calls per stage) added.

    Each velocity rescale happens exactly once: a transition is recorded in
    ``stages.json`` (atomically) together with the index of the checkpoint that holds the
    rescaled velocities, before that checkpoint is written; on resume it counts as done
    only if the restored checkpoint is at least that one.
    """
    from ase import units

    from .dynamics_state import is_optimizer

    run_dir = Path(run_dir)
    md = cfg["md"]
    stages = md["stages"]
    bounds = stage_bounds(stages)
    state = read_stages_state(run_dir)
    summary: dict[str, Any] = {}
    for i, stage in enumerate(stages):
        start, end = bounds[i], bounds[i + 1]
        if otf.step >= end:
            continue
        target = _thermostat_target(stages, i, md)
        if target is not None and hasattr(otf.dyn, "set_temperature") and md["integrator"] != "velocity_verlet":
            otf.dyn.set_temperature(temperature_K=target)
        if otf.step == start and "rescale_to_K" in stage:
            done = state["transitions"].get(str(i))
            if done is None or otf.checkpoint_index < done["checkpoint_index"]:
                atoms = otf.atoms
                t_now = atoms.get_temperature()
                t_new = stage["rescale_to_K"]
                if t_now > 1e-8:
                    atoms.set_momenta(atoms.get_momenta() * math.sqrt(t_new / t_now))
                else:
                    set_velocities(atoms, {"temperature_K": t_new, "seed": md.get("seed", 0) + 1 + i})
                state["transitions"][str(i)] = {"step": start, "from_K": t_now, "to_K": t_new,
                                                "checkpoint_index": otf.checkpoint_index + 1}
                _write_stages_state(run_dir, state)
                otf.write_checkpoint()
                log.info("%s: velocities rescaled from %.0f K to %.0f K at step %d",
                         stage["name"], t_now, t_new, start)
        log.info("%s: steps %d-%d (dt %.2f fs)", stage["name"], otf.step, end,
                 0.0 if is_optimizer(otf.dyn) else otf.dyn.dt / units.fs)
        summary = otf.run(end - otf.step)
        if i not in state["completed"]:
            state["completed"].append(i)
        _write_stages_state(run_dir, state)
    if not summary:  # all steps done before an interruption: just write the final outputs
        summary = otf.run(0)
    calls = summary.get("dft_call_steps", [])
    state["dft_calls_per_stage"] = [
        {"name": s["name"], "start_step": bounds[i], "end_step": bounds[i + 1],
         # a boundary step's positions come from the stage that ends there
         "dft_calls": sum(1 for c in calls if bounds[i] < c <= bounds[i + 1] or (i == 0 and c == 0))}
        for i, s in enumerate(stages)]
    _write_stages_state(run_dir, state)
    summary["stages"] = state["dft_calls_per_stage"]
    return summary
