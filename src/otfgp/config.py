"""Config-file schema and validation of ``otfgp otf``: the known keys of every section,
:func:`load_config` (TOML or YAML), :func:`validate_config` (defaults filled in, errors
naming the bad key) and :func:`stage_bounds`. The reference of every key is docs/config.md.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from .arguments import count, flag

CONFIG_SECTIONS = ("structure", "md", "model", "labeller", "otf")
STRUCTURE_KEYS = ("lattice", "element", "a", "c", "cubic", "orthorhombic", "repeat", "jitter",
                  "seed", "file", "index")
MD_KEYS = ("integrator", "timestep_fs", "temperature_K", "seed", "friction", "steps", "stages",
           "pressure_bar", "taut_fs", "taup_fs", "compressibility_per_bar", "zero_momentum", "fmax",
           "relax_cell")
STAGE_KEYS = ("steps", "rescale_to_K", "temperature_K", "name")
MODEL_KEYS = ("species", "twobody", "threebody", "hyperparameters", "bounds", "priors", "baseline", "kind",
              "scalable_after")
# OTFOptions fields set by [model] (kind = "auto": model.scalable_after), not [otf] keys
MODEL_OTF_OPTIONS = ("scalable_after",)
# [model.baseline]: kind (morse / lj / zbl / calculator) and its parameters (docs/config.md)
BASELINE_KEYS = ("kind", "cutoff", "params", "pairs", "spec")
BASELINE_KINDS = {"morse": 3, "lj": 2, "zbl": 0, "calculator": 0}  # kind -> values per element
# md.integrator -> the [md] keys of its own (besides integrator, seed, steps, stages, and
# timestep_fs, temperature_K, zero_momentum for the MD integrators); built by
# otfgp.builders.build_dynamics
INTEGRATOR_KEYS: dict[str, tuple[str, ...]] = {
    "velocity_verlet": (),
    "langevin": ("friction",),
    "langevin_baoab": ("taut_fs",),
    "bussi": ("taut_fs",),
    "nose_hoover_chain": ("taut_fs",),
    "npt": ("taut_fs", "taup_fs", "pressure_bar", "compressibility_per_bar"),
    "npt_berendsen": ("taut_fs", "taup_fs", "pressure_bar", "compressibility_per_bar"),
    "isotropic_mtk_npt": ("taut_fs", "taup_fs", "pressure_bar"),
    "bfgs": ("fmax", "relax_cell", "pressure_bar"),
    "fire": ("fmax", "relax_cell", "pressure_bar"),
}
INTEGRATORS = tuple(INTEGRATOR_KEYS)
OPTIMIZERS = ("bfgs", "fire")  # stop at fmax; no time step, temperature or velocities
# thermostats whose target a stage can change (ASE's set_temperature)
TARGET_CHANGES = ("langevin", "langevin_baoab", "npt", "npt_berendsen")
_MD_DEFAULTS: dict[str, Any] = {"friction": 0.01, "taut_fs": 100.0, "taup_fs": 1000.0, "pressure_bar": 1.01325,
                                "compressibility_per_bar": 1.0e-6, "fmax": 0.05, "relax_cell": False}
_MD_OWN_KEYS = tuple(_MD_DEFAULTS)


class ConfigError(ValueError):
    """The config file is invalid; the message names the offending key."""


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml, needs PyYAML) config file, unvalidated.

    Raises:
        ConfigError: the file is missing, unreadable as its format, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError as exc:
                raise ConfigError("reading TOML on Python 3.10 needs tomli (pip install tomli)") from exc
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError as exc:
            raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml); "
                              "or write the config as TOML") from exc
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    else:
        raise ConfigError(f"{path}: unknown config format {suffix!r} (use .toml, .yaml or .yml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a table/mapping of sections")
    return data


def known_keys() -> dict[str, tuple[str, ...]]:
    """The keys the schema accepts, by section: ``structure``, ``md``, ``md.stages``,
    ``model``, ``model.hyperparameters`` (also the keys of ``model.bounds`` and
    ``model.priors``) and ``otf``
    (the :class:`otfgp.OTFOptions` fields). ``[labeller]`` keys belong to the labeller
    registry (:func:`otfgp.labellers.check_labeller_spec`)."""
    from .gp import HYPERPARAMETER_NAMES
    from .otf import OTFOptions

    return {
        "config": CONFIG_SECTIONS,
        "structure": STRUCTURE_KEYS,
        "md": MD_KEYS,
        "md.stages": STAGE_KEYS,
        "model": MODEL_KEYS,
        "model.hyperparameters": tuple(HYPERPARAMETER_NAMES),
        "model.baseline": BASELINE_KEYS,
        "otf": tuple(f.name for f in fields(OTFOptions) if f.name not in MODEL_OTF_OPTIONS),
    }


def check_output_path(option: str, path: str | os.PathLike,
                      others: Sequence[tuple[str, str | os.PathLike]] = ()) -> None:
    """ConfigError unless ``path`` can be written as the output ``option`` names: its
    directory exists, it is not a directory, and it is none of ``others`` (``(what, path)``
    pairs: the files the command reads, or its other outputs), which the write would
    replace. Checked before the work, which may take long, not found when it is done."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option}: {p} is a directory; give a file name")
    if not p.parent.is_dir():
        raise ConfigError(f"{option}: {p}: directory {p.parent} does not exist")
    for what, other in others:
        if p.resolve() == Path(other).resolve():
            raise ConfigError(f"{option}: {p} is also {what}, which writing it would replace")


def _check_keys(section: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """Raise :class:`ConfigError` unless ``section`` is a mapping of ``known`` keys only."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"[{where}] must be a table/mapping, got {type(section).__name__}")
    bad = [k for k in section if k not in known]
    if bad:
        raise ConfigError(f"unknown key {where}.{bad[0]}" + (f" (and {bad[1:]})" if bad[1:] else "")
                          + f"; known keys of [{where}]: {', '.join(known)}")


def _number(section: Mapping[str, Any], key: str, where: str, default: Any = None,
            positive: bool = False, allow_zero: bool = True, integer: bool = False) -> Any:
    """``section[key]`` checked to be a finite number (an integer with ``integer``; >= 0, or
    > 0 without ``allow_zero``, with ``positive``), or ``default`` when the key is absent."""
    if key not in section:
        return default
    v = section[key]
    kind = int if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, kind) or (not integer and not math.isfinite(v)):
        raise ConfigError(f"{where}.{key} must be {'an integer' if integer else 'a number'}, got {v!r}")
    if positive and (v < 0 or (v == 0 and not allow_zero)):
        raise ConfigError(f"{where}.{key} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return v


def _flag(section: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    """``section[key]`` checked to be true or false (:func:`otfgp.arguments.flag`), or
    ``default`` when the key is absent."""
    try:
        return bool(flag(f"{where}.{key}", section.get(key, default)))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def validate_config(cfg: Mapping[str, Any], base_dir: str | os.PathLike = ".") -> dict[str, Any]:
    """Check a config and return it resolved (defaults filled in, stages explicit, a
    structure file made absolute, relative to ``base_dir``).

    Raises:
        ConfigError: a missing or unknown section or key, or a bad value (the message
            names the key).
    """
    cfg = copy.deepcopy(dict(cfg))
    _check_keys(cfg, CONFIG_SECTIONS, "config")
    for name in CONFIG_SECTIONS:
        if name not in cfg:
            raise ConfigError(f"missing section [{name}]")
    out: dict[str, Any] = {}
    out["structure"] = _validate_structure(cfg["structure"], base_dir)
    out["md"] = _validate_md(cfg["md"])
    out["model"] = _validate_model(cfg["model"], out["structure"])
    out["labeller"] = _validate_labeller(cfg["labeller"])
    out["otf"] = _validate_otf(cfg["otf"])
    return out


def _validate_structure(s: Mapping[str, Any], base_dir: str | os.PathLike) -> dict[str, Any]:
    """The resolved ``[structure]`` section."""
    _check_keys(s, STRUCTURE_KEYS, "structure")
    st: dict[str, Any] = {}
    if "file" in s:
        other = [k for k in ("lattice", "element", "a", "c", "cubic", "orthorhombic") if k in s]
        if other:
            raise ConfigError(f"structure.file and structure.{other[0]} exclude each other")
        f = Path(str(s["file"]))
        f = f if f.is_absolute() else Path(base_dir) / f
        if not f.is_file():
            raise ConfigError(f"structure.file: {f} not found")
        st["file"] = str(f.resolve())
        st["index"] = _number(s, "index", "structure", 0, integer=True)
    else:
        for key in ("lattice", "element"):
            if key not in s:
                raise ConfigError(f"structure.{key} missing (or give structure.file)")
            if not isinstance(s[key], str):
                raise ConfigError(f"structure.{key} must be a string, got {s[key]!r}")
        st.update(lattice=s["lattice"], element=s["element"])
        for key in ("a", "c"):
            if key in s:
                st[key] = float(_number(s, key, "structure", positive=True, allow_zero=False))
        for key in ("cubic", "orthorhombic"):
            if key in s:
                st[key] = _flag(s, key, "structure", False)
    rep = s.get("repeat", [1, 1, 1])
    if isinstance(rep, int) and not isinstance(rep, bool):
        rep = [rep] * 3
    if (not isinstance(rep, (list, tuple)) or len(rep) != 3
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rep)):
        raise ConfigError(f"structure.repeat must be three positive integers, got {rep!r}")
    st["repeat"] = list(rep)
    st["jitter"] = float(_number(s, "jitter", "structure", 0.0, positive=True))
    st["seed"] = _number(s, "seed", "structure", 0, integer=True)
    return st


def _validate_md(m: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved ``[md]`` section, with its stages explicit."""
    _check_keys(m, MD_KEYS, "md")
    md: dict[str, Any] = {}
    integ = m.get("integrator", "velocity_verlet")
    if integ not in INTEGRATORS:
        raise ConfigError(f"md.integrator {integ!r} unknown: use one of {', '.join(INTEGRATORS)}")
    md["integrator"] = integ
    md["seed"] = _number(m, "seed", "md", 0, integer=True)
    if integ in OPTIMIZERS:
        given = [k for k in ("timestep_fs", "temperature_K", "zero_momentum") if k in m]
        if given:
            raise ConfigError(f"md.{given[0]} applies to MD integrators, not to the {integ} optimizer")
    else:
        if "timestep_fs" not in m:
            raise ConfigError("md.timestep_fs missing")
        md["timestep_fs"] = float(_number(m, "timestep_fs", "md", positive=True, allow_zero=False))
        md["temperature_K"] = _number(m, "temperature_K", "md", None, positive=True)
        md["zero_momentum"] = _flag(m, "zero_momentum", "md", True)
        if integ != "velocity_verlet" and md["temperature_K"] is None:
            raise ConfigError(f"md.temperature_K missing (the {integ} thermostat target)")
    own = INTEGRATOR_KEYS[integ]
    other = [k for k in _MD_OWN_KEYS if k in m and k not in own]
    if other:
        users = [i for i, keys in INTEGRATOR_KEYS.items() if other[0] in keys]
        raise ConfigError(f"md.{other[0]} applies to the {', '.join(users)} integrator(s) only, not {integ}")
    for key in own:
        if key == "relax_cell":
            md[key] = _flag(m, key, "md", False)
        elif key == "pressure_bar":
            md[key] = float(_number(m, key, "md", _MD_DEFAULTS[key]))
        else:
            md[key] = float(_number(m, key, "md", _MD_DEFAULTS[key], positive=True, allow_zero=False))
    if integ in OPTIMIZERS and "pressure_bar" in m and not md["relax_cell"]:
        raise ConfigError("md.pressure_bar of an optimizer needs md.relax_cell = true (the cell relaxes "
                          "under that pressure)")
    if "stages" in m:
        if "steps" in m:
            raise ConfigError("give md.steps or [[md.stages]], not both")
        stages_in = m["stages"]
        if not isinstance(stages_in, list) or not stages_in:
            raise ConfigError("md.stages must be a non-empty list of tables")
    else:
        if "steps" not in m:
            raise ConfigError("md.steps missing (or give [[md.stages]])")
        stages_in = [{"steps": m["steps"]}]
    stages = []
    for i, stage in enumerate(stages_in):
        where = f"md.stages[{i}]"
        _check_keys(stage, STAGE_KEYS, where)
        if "steps" not in stage:
            raise ConfigError(f"{where}.steps missing")
        steps = _number(stage, "steps", where, integer=True, positive=True)
        entry: dict[str, Any] = {"steps": steps, "name": str(stage.get("name", f"stage {i}"))}
        for key in ("rescale_to_K", "temperature_K"):
            if key in stage:
                entry[key] = float(_number(stage, key, where, positive=True, allow_zero=False))
        if "temperature_K" in entry and integ not in TARGET_CHANGES:
            raise ConfigError(f"{where}.temperature_K sets a new thermostat target, which {integ} cannot "
                              f"change during a run (those that can: {', '.join(TARGET_CHANGES)})"
                              + ("; use rescale_to_K" if integ not in OPTIMIZERS else ""))
        if "rescale_to_K" in entry and integ in OPTIMIZERS:
            raise ConfigError(f"{where}.rescale_to_K rescales velocities; the {integ} optimizer has none")
        stages.append(entry)
    md["stages"] = stages
    return md


def _validate_model(mo: Mapping[str, Any], st: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved ``[model]`` section (species default to the element of ``[structure]``)."""
    from .gp import HYPERPARAMETER_NAMES

    _check_keys(mo, MODEL_KEYS, "model")
    species = mo.get("species")
    if species is None:
        species = sorted({st["element"]}) if "element" in st else None
    if not species or not isinstance(species, list) or not all(isinstance(x, str) for x in species):
        raise ConfigError("model.species must be a non-empty list of chemical symbols")
    model: dict[str, Any] = {"species": species}
    for key in ("twobody", "threebody"):
        if key in mo:
            model[key] = float(_number(mo, key, "model", positive=True, allow_zero=False))
    if "twobody" not in model and "threebody" not in model:
        raise ConfigError("model.twobody and model.threebody missing: give at least one cutoff (A)")
    for key in ("hyperparameters", "bounds"):
        if key in mo:
            d = mo[key]
            if not isinstance(d, Mapping):
                raise ConfigError(f"model.{key} must be a table/mapping")
            for name, v in d.items():
                if name not in HYPERPARAMETER_NAMES:
                    raise ConfigError(f"unknown key model.{key}.{name}; known: {', '.join(HYPERPARAMETER_NAMES)}")
                if key == "hyperparameters":
                    _number(d, name, f"model.{key}", positive=True, allow_zero=False)
                elif (not isinstance(v, (list, tuple)) or len(v) != 2
                      or not all(isinstance(x, (int, float)) and x > 0 for x in v) or v[0] > v[1]):
                    raise ConfigError(f"model.bounds.{name} must be [low, high] with 0 < low <= high, got {v!r}")
            model[key] = {k: (float(v) if key == "hyperparameters" else [float(x) for x in v])
                          for k, v in d.items()}
    if "priors" in mo:
        model["priors"] = _validate_priors(mo["priors"])
    if "baseline" in mo:
        model["baseline"] = _validate_baseline(mo["baseline"])
    model.update(_validate_kind(mo, "baseline" in model))
    return model


def _validate_kind(mo: Mapping[str, Any], baseline: bool) -> dict[str, Any]:
    """``model.kind`` (exact / scalable / auto, otfgp.models) and, for auto,
    ``model.scalable_after`` (training environments; default
    :data:`otfgp.scalable.AUTO_SWITCH_ENVIRONMENTS`)."""
    from .models import MODEL_KINDS
    from .scalable import AUTO_SWITCH_ENVIRONMENTS

    kind = mo.get("kind", "exact")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"model.kind must be one of {', '.join(map(repr, MODEL_KINDS))}, got {kind!r}")
    out: dict[str, Any] = {"kind": kind}
    if kind != "exact" and baseline:
        raise ConfigError(f"model.kind = {kind!r}: the scalable GP has no baselines yet; "
                          f"use kind = 'exact' with model.baseline")
    if "scalable_after" in mo:
        if kind != "auto":
            raise ConfigError(f"model.scalable_after is the threshold of kind = 'auto' (kind is {kind!r})")
        v = mo["scalable_after"]
        try:
            count("model.scalable_after", v)  # training environments
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if kind == "auto":
        out["scalable_after"] = int(mo.get("scalable_after", AUTO_SWITCH_ENVIRONMENTS))
    return out


def _validate_baseline(b: Any) -> dict[str, Any]:
    """``[model.baseline]``: an analytic prior (``kind`` morse / lj / zbl with ``cutoff``,
    per-element ``params`` and optional per-pair ``pairs``) or an ASE calculator (``kind =
    "calculator"`` with ``spec``). Values are checked here for shape; the baseline classes
    check the physics (positive parameters, every species covered)."""
    where = "model.baseline"
    if not isinstance(b, Mapping):
        raise ConfigError(f"{where} must be a table/mapping")
    _check_keys(b, BASELINE_KEYS, where)
    kind = b.get("kind")
    if kind not in BASELINE_KINDS:
        raise ConfigError(f"{where}.kind must be one of {', '.join(map(repr, BASELINE_KINDS))}, got {kind!r}")
    out: dict[str, Any] = {"kind": kind}
    if kind == "calculator":
        extra = sorted(set(b) - {"kind", "spec"})
        if extra:
            raise ConfigError(f"{where}: kind = 'calculator' takes only spec, not {', '.join(extra)}")
        spec = b.get("spec")
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"{where}.spec must name the calculator: 'emt', 'chgnet' or 'package.module:factory'")
        out["spec"] = spec
        return out
    if "spec" in b:
        raise ConfigError(f"{where}.spec belongs to kind = 'calculator', not {kind!r}")
    if "cutoff" not in b:
        raise ConfigError(f"{where}.cutoff missing: the baseline's own cutoff (A)")
    out["cutoff"] = float(_number(b, "cutoff", where, positive=True, allow_zero=False))
    n = BASELINE_KINDS[kind]
    for key in ("params", "pairs"):
        if key not in b:
            continue
        if n == 0:
            raise ConfigError(f"{where}.{key}: ZBL has no parameters")
        table = b[key]
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}.{key} must be a table {'element' if key == 'params' else 'A-B'} -> list")
        for name, v in table.items():
            if (not isinstance(v, (list, tuple)) or len(v) != n
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                raise ConfigError(f"{where}.{key}.{name} must be a list of {n} numbers, got {v!r}")
        out[key] = {k: [float(x) for x in v] for k, v in table.items()}
    if n and "params" not in out:
        raise ConfigError(f"{where}.params missing: give each species' parameters")
    return out


def _validate_priors(p: Any) -> bool | dict[str, list[float]]:
    """``model.priors``: ``true`` (the default priors), ``false`` (maximum likelihood) or a
    table of overrides, hyperparameter name -> [median, factor] (factor > 1: the prior's
    spread, a factor per standard deviation of the log)."""
    from .gp import HYPERPARAMETER_NAMES

    if isinstance(p, bool):
        return p
    if not isinstance(p, Mapping):
        raise ConfigError(f"model.priors must be true, false or a table name -> [median, factor], got {p!r}")
    out = {}
    for name, v in p.items():
        if name not in HYPERPARAMETER_NAMES:
            raise ConfigError(f"unknown key model.priors.{name}; known: {', '.join(HYPERPARAMETER_NAMES)}")
        if (not isinstance(v, (list, tuple)) or len(v) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                or v[0] <= 0 or v[1] <= 1):
            raise ConfigError(f"model.priors.{name} must be [median, factor] with median > 0 and factor > 1, got {v!r}")
        out[name] = [float(v[0]), float(v[1])]
    return out


def _validate_labeller(lab: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[labeller]`` section, checked by the labeller registry without building anything."""
    from .labellers import check_labeller_spec

    try:
        check_labeller_spec(lab)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return dict(lab)


def _validate_otf(o: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[otf]`` section: any :class:`otfgp.OTFOptions` field; ``output_dir`` defaults to otf_run."""
    from .otf import OTFOptions

    known = [f.name for f in fields(OTFOptions) if f.name not in MODEL_OTF_OPTIONS]
    _check_keys(o, known, "otf")
    o = dict(o)
    if "relative_threshold" in o and "threshold" not in o:
        o["threshold"] = None  # the dataclass default is an absolute threshold
    try:
        OTFOptions.from_dict(o)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[otf]: {exc}") from exc
    o.setdefault("output_dir", "otf_run")
    return o


def stage_bounds(stages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Cumulative step at which each stage starts, plus the final step."""
    b = [0]
    for s in stages:
        b.append(b[-1] + int(s["steps"]))
    return b


# --------------------------------------------------------------------------- resume overrides
RESUME_SECTIONS = ("otf", "labeller")  # what may change on resume; the system and MD may not


def parse_set(expr: str) -> tuple[str, str, Any]:
    """``"SECTION.KEY=VALUE"`` (``otfgp otf --resume DIR --set ...``) as (section, key,
    value); VALUE is read as a TOML value (``0.05``, ``true``, ``[2, 2, 2]``, ``"x"``), and
    as a plain string when it is not one.

    Raises:
        ConfigError: not of the form SECTION.KEY=VALUE.
    """
    name, sep, raw = expr.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {expr!r}: expected SECTION.KEY=VALUE, e.g. otf.threshold=0.02")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key.strip(), value


def apply_overrides(cfg: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]
                    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The resolved config ``cfg`` with ``overrides`` ({section: {key: value}}) applied
    and validated, and the settings that really changed ({section: {key: value}}).

    Only ``[otf]`` and ``[labeller]`` settings may change on resume (``otf.output_dir``
    not); a threshold of the other kind replaces the current one (``relative_threshold``
    switches the absolute ``threshold`` off and vice versa).

    Raises:
        ConfigError: another section, an unknown key or a bad value (naming the key).
    """
    out = copy.deepcopy(dict(cfg))
    changed: dict[str, dict[str, Any]] = {}
    for section, values in overrides.items():
        if section not in RESUME_SECTIONS:
            raise ConfigError(f"[{section}] settings cannot change on resume (the checkpoint holds that "
                              f"system and its dynamics); only {', '.join(f'[{s}]' for s in RESUME_SECTIONS)} "
                              f"can: start a new run for the others")
        if section == "otf" and "output_dir" in values:
            raise ConfigError("otf.output_dir cannot change on resume (it is the run directory)")
        target = out[section]
        if section == "labeller" and "type" in values and values["type"] != target.get("type"):
            target = out[section] = {}  # another labeller: the old one's keys do not apply
        if section == "otf":
            if values.get("relative_threshold") is not None and "threshold" not in values:
                target["threshold"] = None
            if values.get("threshold") is not None and "relative_threshold" not in values:
                target.pop("relative_threshold", None)
        for key, value in values.items():
            if cfg[section].get(key, object()) != value:
                changed.setdefault(section, {})[key] = value
            target[key] = value
    if "otf" in overrides:
        out["otf"] = _validate_otf(out["otf"])
    if "labeller" in overrides:
        out["labeller"] = _validate_labeller(out["labeller"])
    return out, changed
