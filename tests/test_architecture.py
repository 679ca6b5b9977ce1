"""Dependencies point one way: no import cycle among the Python modules and no include cycle
among the C++ components (a component is a .h/.cpp pair), read from the sources."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "otfgp"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_imports() -> dict[str, set[str]]:
    """Every otfgp module and the otfgp modules it imports anywhere in its text (module
    level, inside functions, under TYPE_CHECKING: a cycle through any of them is a cycle a
    reader has to untangle)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if node.module is None:  # `from . import x`: the submodule x (or the extension _core)
                    found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules)
                elif target in modules:
                    found.add(target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
        graph[name] = found - {name}
    return graph


def cpp_includes(*folders: str) -> dict[str, set[str]]:
    """Components (file stems) of the given cpp/ folders and the components they include."""
    files = [p for f in folders for p in (ROOT / "cpp" / f).glob("*.[hc]*")]
    stems = {p.stem for p in files}
    graph: dict[str, set[str]] = {s: set() for s in stems}
    for p in files:
        for inc in re.findall(r'^#include "([^"]+)"', p.read_text(), flags=re.M):
            if Path(inc).stem in stems and Path(inc).stem != p.stem:
                graph[p.stem].add(Path(inc).stem)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_python_modules_import_one_way():
    graph = python_imports()
    assert {"otfgp.gp", "otfgp.mapping", "otfgp.learning", "otfgp.otf", "otfgp.lammps.learn"} <= set(graph)
    assert "otfgp.gp" in graph["otfgp.learning"]  # the reader sees real edges
    assert find_cycle(graph) is None, find_cycle(graph)
    # the one entry point the GP has into mapping, and mapping never imports the GP
    assert graph["otfgp.gp"] & {"otfgp.mapping"} == {"otfgp.mapping"}
    assert "otfgp.gp" not in graph["otfgp.mapping"]


@pytest.mark.parametrize("folders", [("core",), ("core", "lammps")])
def test_cpp_components_include_one_way(folders):
    graph = cpp_includes(*folders)
    assert find_cycle(graph) is None, find_cycle(graph)


def test_pair_style_knows_no_consumer():
    graph = cpp_includes("core", "lammps")
    assert "model" in graph["pair_otfgp"]
    assert not graph["pair_otfgp"] & {"compute_otfgp_std_atom", "fix_otfgp_learn"}
