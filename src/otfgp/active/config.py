"""Config files of ``otfgp active``: schema, validation and the run they describe.

An ``otfgp active`` config has the ``[structure]``, ``[model]`` and ``[labeller]`` sections
of an ``otfgp otf`` config (validated by the same code, :mod:`otfgp.config`) and an
``[active]`` section: the task (``task = "relax"`` and its keys), the loop's options
(:class:`otfgp.active.ActiveOptions` fields), ``output_dir`` and ``workers``. Every key is
documented in docs/config.md (``## [active]``).
"""
from __future__ import annotations

import copy
import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..config import (ConfigError, _check_keys, _flag, _number, _validate_labeller, _validate_model,
                      _validate_structure)
from .loop import ActiveOptions

if TYPE_CHECKING:
    from ase import Atoms

    from .loop import ActiveResult
    from .task import Task

ACTIVE_SECTIONS = ("structure", "model", "labeller", "active")
# task -> its own [active] keys (built by build_task)
TASK_KEYS: dict[str, tuple[str, ...]] = {
    "relax": ("fmax", "optimizer", "steps", "model_fmax", "max_step", "anchor", "fix_below"),
}
TASKS = tuple(TASK_KEYS)
RUN_KEYS = ("task", "output_dir", "workers")
OPTION_KEYS = tuple(f.name for f in fields(ActiveOptions))


def active_keys() -> tuple[str, ...]:
    """Every key ``[active]`` knows: the run's, every task's and the loop options'."""
    task_keys = tuple(dict.fromkeys(k for keys in TASK_KEYS.values() for k in keys))
    return RUN_KEYS + task_keys + OPTION_KEYS


def validate_active_config(cfg: Mapping[str, Any], base_dir: str | os.PathLike = ".") -> dict[str, Any]:
    """Check an ``otfgp active`` config and return it resolved (defaults filled in).

    Raises:
        ConfigError: a missing or unknown section or key, or a bad value (naming the key).
    """
    cfg = copy.deepcopy(dict(cfg))
    _check_keys(cfg, ACTIVE_SECTIONS, "config")
    for name in ACTIVE_SECTIONS:
        if name not in cfg:
            raise ConfigError(f"missing section [{name}]")
    out: dict[str, Any] = {"structure": _validate_structure(cfg["structure"], base_dir)}
    out["model"] = _validate_model(cfg["model"], out["structure"])
    out["labeller"] = _validate_labeller(cfg["labeller"])
    out["active"] = _validate_active(cfg["active"])
    return out


def _validate_active(a: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys(a, active_keys(), "active")
    task = a.get("task")
    if task not in TASKS:
        raise ConfigError(f"active.task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    other = [k for k in a if k not in TASK_KEYS[task] and k not in RUN_KEYS and k not in OPTION_KEYS]
    if other:
        users = [t for t, keys in TASK_KEYS.items() if other[0] in keys]
        raise ConfigError(f"active.{other[0]} applies to task {', '.join(map(repr, users))}, not {task!r}")
    out: dict[str, Any] = {"task": task, "output_dir": str(a.get("output_dir", "active_run")),
                           "workers": _number(a, "workers", "active", 1, integer=True)}
    if out["workers"] < 1:
        raise ConfigError(f"active.workers must be >= 1, got {out['workers']}")
    if task == "relax":
        out.update(_validate_relax(a))
    options = {k: a[k] for k in OPTION_KEYS if k in a}
    try:
        ActiveOptions.from_dict(options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[active]: {exc}") from exc
    out.update(options)
    return out


def _validate_relax(a: Mapping[str, Any]) -> dict[str, Any]:
    from .relax import OPTIMIZERS

    out: dict[str, Any] = {"fmax": float(_number(a, "fmax", "active", 0.05, positive=True, allow_zero=False)),
                           "steps": _number(a, "steps", "active", 200, integer=True)}
    if out["steps"] < 1:
        raise ConfigError(f"active.steps must be >= 1, got {out['steps']}")
    optimizer = a.get("optimizer", "bfgs")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"active.optimizer {optimizer!r} unknown: use one of {', '.join(OPTIMIZERS)}")
    out["optimizer"] = optimizer
    for key, default in (("model_fmax", None), ("max_step", 0.5)):
        value = _number(a, key, "active", default, positive=True, allow_zero=False)
        out[key] = None if value is None else float(value)
    out["anchor"] = _flag(a, "anchor", "active", True)
    if "fix_below" in a:
        out["fix_below"] = float(_number(a, "fix_below", "active"))
    return out


def build_task(atoms: "Atoms", active: Mapping[str, Any]) -> "Task":
    """The task of a resolved ``[active]`` section on ``atoms``."""
    if active["task"] == "relax":
        from ase.constraints import FixAtoms

        from .relax import RelaxTask

        if "fix_below" in active:
            below = atoms.positions[:, 2] < active["fix_below"]
            atoms.set_constraint(list(atoms.constraints) + [FixAtoms(mask=below)])
        return RelaxTask(atoms, fmax=active["fmax"], optimizer=active["optimizer"], steps=active["steps"],
                         model_fmax=active["model_fmax"], max_step=active["max_step"], anchor=active["anchor"])
    raise ConfigError(f"active.task {active['task']!r} unknown")


def run_active(cfg: Mapping[str, Any], run_dir: Path, atoms: "Atoms", resume: bool) -> "ActiveResult":
    """Run (or, with ``resume``, continue) the active learning of a resolved config in
    ``run_dir`` from the starting structure ``atoms``."""
    from ..batch import _default_executor
    from ..builders import build_model
    from .loop import ActiveLearner

    active = cfg["active"]
    # a resumed run reads its run_config.json, which a user may have edited: its errors are
    # config errors naming the file's section, found before any labeller call
    try:
        _check_keys(active, active_keys(), "active")
        task = build_task(atoms, active)
        options = {k: active[k] for k in OPTION_KEYS if k in active}
        ActiveOptions.from_dict(options)
    except KeyError as exc:
        raise ConfigError(f"[active]: {exc.args[0]!r} missing") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[active]: {exc}") from None
    labeller = dict(cfg["labeller"])  # a specification: each job builds it in its own directory
    executor = _default_executor(active["workers"], active["workers"]) if active["workers"] > 1 else None
    try:
        with ActiveLearner(build_model(cfg["model"]), labeller, task, run_dir, options, executor=executor,
                           resume=resume) as learner:
            return learner.run()
    finally:
        if executor is not None:
            executor.shutdown(wait=True)


def format_active_summary(result: "ActiveResult") -> str:
    """The human-readable end-of-run report of ``otfgp active``."""
    lines = [f"{'converged' if result.converged else 'NOT converged'} after {result.iterations} iteration(s)",
             f"oracle calls: {result.oracle_calls} ({result.labels} labels, {result.failed_attempts} failed)"]
    for key, value in result.task.items():
        lines.append(f"{key}: {value}")
    cal = result.pre_update_calibration
    if cal is not None:  # the held-out check of the stds the run compared
        lines.append(f"pre-update errors ({cal['frames']} frames): force RMSE {cal['rmse']:.4g} eV/A, RMS reported std "
                     f"{cal['rms_reported_std']:.4g} eV/A, mean z^2 {cal['mean_squared_z_reported']:.3g}, "
                     f"1-std coverage {cal['coverage_1std_reported']:.2f} (calibrated: 1 and 0.68)")
    return "\n".join(lines)
