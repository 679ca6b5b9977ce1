"""docs/config.md lists exactly the keys the config schema knows, so the reference cannot
silently drift from otfgp.config, otfgp.OTFOptions or the espresso labeller."""
from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from otfgp import OTFOptions
from otfgp.active import ActiveOptions
from otfgp.active.config import ACTIVE_SECTIONS, active_keys
from otfgp.config import INTEGRATORS, MODEL_OTF_OPTIONS, known_keys
from otfgp.gp import DEFAULT_HYPERPARAMETERS
from otfgp.labellers import FUNCTION_KEYS, check_labeller_spec, espresso_calculator
from otfgp.labellers.ase_calculator import ASE_KEYS

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"

# heading of docs/config.md -> the schema section its table documents
HEADINGS = {
    "## [structure]": "structure",
    "## [md]": "md",
    "## [[md.stages]]": "md.stages",
    "## [model]": "model",
    "### model.hyperparameters and model.bounds": "model.hyperparameters",
    "### [model.baseline]": "model.baseline",
    "## [labeller]": "labeller",
    '### type = "espresso"': "labeller.espresso",
    "### type = any ASE calculator": "labeller.ase",
    '### type = "module:function"': "labeller.function",
    "## [otf]": "otf",
    "## [active]": "active",
}
ROW = re.compile(r"^\| `([A-Za-z_0-9]+)` \|(.*)\|\s*$")


def _doc_tables() -> dict[str, dict[str, list[str]]]:
    """{schema section: {key: [type, default, unit, meaning]}} from the doc's tables."""
    tables: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            current = HEADINGS.get(line.strip())
            if current is not None:
                assert current not in tables, f"heading {line!r} twice in {DOC.name}"
                tables[current] = {}
            continue
        m = ROW.match(line)
        if m and current is not None:
            key = m.group(1)
            assert key not in tables[current], f"{current}.{key} listed twice in {DOC.name}"
            tables[current][key] = [c.strip() for c in m.group(2).split("|")]
    return tables


def _schema() -> dict[str, set[str]]:
    keys = {k: set(v) for k, v in known_keys().items() if k != "config"}
    # every OTFOptions field but those [model] sets (kind = "auto": model.scalable_after)
    assert keys["otf"] == {f.name for f in fields(OTFOptions)} - set(MODEL_OTF_OPTIONS)
    keys["labeller"] = {"type"}
    keys["labeller.espresso"] = set(inspect.signature(espresso_calculator).parameters)
    keys["labeller.ase"] = set(ASE_KEYS)
    keys["labeller.function"] = set(FUNCTION_KEYS)
    keys["active"] = set(active_keys())
    return keys


@pytest.mark.parametrize("section", sorted(_schema()))
def test_doc_lists_every_key_of_the_schema(section):
    doc = _doc_tables()
    assert section in doc, f"{DOC.name} has no table for [{section}]"
    schema = _schema()[section]
    missing = sorted(schema - set(doc[section]))
    extra = sorted(set(doc[section]) - schema)
    assert not missing, f"keys of [{section}] not documented in {DOC.name}: {missing}"
    assert not extra, f"{DOC.name} documents keys [{section}] does not have: {extra}"
    for key, cells in doc[section].items():
        assert len(cells) == 4 and all(cells), f"{section}.{key}: give type, default, unit, meaning"


def test_doc_has_a_heading_for_every_section():
    text = DOC.read_text()
    for name in known_keys()["config"] + ACTIVE_SECTIONS:
        assert f"## [{name}]" in text


def test_documented_labeller_keys_are_accepted_by_the_labeller_registry():
    doc = _doc_tables()
    for key in doc["labeller.espresso"]:
        check_labeller_spec({"type": "espresso", key: None})  # raises on an unknown key
    for key in doc["labeller.ase"]:
        check_labeller_spec({"type": "vasp", key: None})
    for key in doc["labeller.function"]:
        check_labeller_spec({"type": "my_module:my_function", key: None})


def _default(cell: str) -> object:
    """The TOML literal of a default cell (`0.05`, `"exact"`, `true`), parsed."""
    assert cell.startswith("`") and cell.endswith("`"), f"default {cell!r} is not a literal"
    return tomllib.loads(f"v = {cell[1:-1]}")["v"]


def test_documented_defaults_match_the_code():
    doc = _doc_tables()
    for f in fields(OTFOptions):
        if f.default is not MISSING and f.default is not None:
            assert _default(doc["otf"][f.name][1]) == f.default, f"otf.{f.name} default"
    for f in fields(ActiveOptions):
        if f.default is not MISSING and f.default is not None:
            assert _default(doc["active"][f.name][1]) == f.default, f"active.{f.name} default"
    for name, value in DEFAULT_HYPERPARAMETERS.items():
        assert _default(doc["model.hyperparameters"][name][1]) == value, f"hyperparameter {name} default"
    for name, p in inspect.signature(espresso_calculator).parameters.items():
        if isinstance(p.default, (bool, int, float, str)):
            assert _default(doc["labeller.espresso"][name][1]) == p.default, f"labeller.{name} default"
    meaning = doc["md"]["integrator"][3]
    for integrator in INTEGRATORS:
        assert f'`"{integrator}"`' in meaning
