"""Every hook in the spec has a test of its own and is documented (as datasette does)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from latentdub.toolkit.core import hookspecs

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name, obj in vars(hookspecs).items() if name.startswith("register_") and inspect.isfunction(obj))


def test_hooks_exist():
    from latentdub.toolkit.core.plugins import KINDS

    # every component kind has its register hook, plus the weights and commands hooks
    assert set(KINDS.values()) | {"register_weights", "register_commands"} == set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    docs = (REPO / "docs" / "plugins.md").read_text()
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"`{hook}({params})`" in docs, f"docs/plugins.md lacks `{hook}({params})`"


def _implemented_hooks(path: Path) -> set[str]:
    """Hook names a test file implements: functions decorated with ``hookimpl``, or rows of test_hooks.COMPONENT_HOOKS."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any("hookimpl" in ast.unparse(d) for d in node.decorator_list):
            found.add(node.name)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "COMPONENT_HOOKS" for t in node.targets):
            found |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and str(c.value).startswith("register_")}
    return found


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    users = [p.name for p in (REPO / "tests").rglob("test_*.py") if p.name != Path(__file__).name and hook in _implemented_hooks(p)]
    assert users, f"no test implements {hook} in a plugin of its own"
