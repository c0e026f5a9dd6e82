"""The architecture's rules, checked on the source: the core imports no plugin, layers point one way, no import circles.

Every import counts, including the ones inside functions (they are how an
import circle usually hides). The rules are written in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "latentdub"
#: Core subpackages in data-flow order: each may import itself and those before it, never those after.
CORE_LAYERS = ("core", "media", "faces", "dubbing", "learning", "evaluation", "batch")
#: What ``latentdub.nets`` (plain models and their file formats) may import from the rest of latentdub.
NETS_MAY_IMPORT = ("latentdub.nets", "latentdub.toolkit.core.errors")


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


MODULES = {name: (path, is_pkg) for path in PACKAGE.rglob("*.py") for name, is_pkg in [_module_name(path)]}


def imports_of(name: str) -> set[str]:
    """Modules of latentdub that module ``name`` imports anywhere in its file (a package import resolves to its modules)."""
    path, is_package = MODULES[name]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                found.add(candidate if candidate in MODULES else module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.split(".")[0] == "latentdub" and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["latentdub", "toolkit"] and len(parts) > 2 and parts[2] in CORE_LAYERS else None


def test_the_walk_sees_the_package():
    # the checks below are only as good as the graph: it must hold the known edges
    assert "latentdub.toolkit.core.plugins" in GRAPH["latentdub.cli"]
    assert "latentdub.toolkit.faces.align" in GRAPH["latentdub.toolkit.dubbing.pipeline"]
    assert len(GRAPH) > 80


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("latentdub.toolkit")))
def test_the_core_imports_no_plugin_and_no_command(module):
    bad = sorted(m for m in GRAPH[module] if m.startswith(("latentdub.plugins", "latentdub.commands", "latentdub.cli")))
    assert not bad, f"{module} imports {bad}: the core reaches plugins only through hooks and protocols"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m)))
def test_core_layers_point_one_way(module):
    rank = CORE_LAYERS.index(_layer(module))
    later = sorted(m for m in GRAPH[module] if _layer(m) and CORE_LAYERS.index(_layer(m)) > rank)
    assert not later, f"{module} imports {later}, which sit above it in {' < '.join(CORE_LAYERS)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "core"))
def test_the_framework_imports_only_itself(module):
    outside = sorted(m for m in GRAPH[module] if not m.startswith("latentdub.toolkit.core") and m != "latentdub")
    assert not outside, f"{module} imports {outside}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("latentdub.nets")))
def test_nets_are_plain_models(module):
    bad = sorted(m for m in GRAPH[module] if not m.startswith(NETS_MAY_IMPORT))
    assert not bad, f"{module} imports {bad}; nets may import only {NETS_MAY_IMPORT}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_anywhere():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_planted_circle():
    planted = {**GRAPH, "latentdub.nets.safe_load": GRAPH["latentdub.nets.safe_load"] | {"latentdub.nets.generator_files"}}
    assert any({"latentdub.nets.generator_files", "latentdub.nets.safe_load"} <= set(c) for c in _cycles(planted))
