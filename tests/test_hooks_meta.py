"""Every hook in the spec has a test of its own and is documented (as datasette does)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from latentdub.toolkit.core import hookspecs

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name, obj in vars(hookspecs).items() if name.startswith("register_") and inspect.isfunction(obj))


def test_hooks_exist():
    assert len(HOOKS) >= 11


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    docs = (REPO / "docs" / "plugins.md").read_text()
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"`{hook}({params})`" in docs, f"docs/plugins.md lacks `{hook}({params})`"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    users = [
        p.name
        for p in (REPO / "tests").rglob("test_*.py")
        if p.name != Path(__file__).name and re.search(rf"\b{hook}\b", p.read_text())
    ]
    assert users, f"no test implements or exercises {hook}"
