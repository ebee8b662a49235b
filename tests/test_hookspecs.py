"""Every hook is documented where it is declared, in prose in docs/, and tested.

The hooks are read from a real plugin manager, so a new hook fails these
tests until it has its docstring, its section in docs/reference/hooks.rst
and a test (datasette's test_plugin_hooks_are_documented does the same).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from fruix_core.plugins import _new_pluggy

REPO = Path(__file__).resolve().parents[1]
HOOKS_RST = REPO / "docs" / "reference" / "hooks.rst"


def _hooks() -> dict[str, object]:
    pm = _new_pluggy()
    return {name: caller.spec.function for name, caller in vars(pm.hook).items()
            if not name.startswith("_") and caller.spec is not None}


HOOKS = sorted(_hooks())


def test_the_hooks_are_the_declared_lifecycle():
    assert HOOKS == sorted([
        "fruix_prepare_env", "fruix_run_phase", "fruix_attach_phase", "fruix_stage_artifacts",
        "fruix_emit_promotion",
        "fruix_teardown_env", "fruix_acquire_guest", "fruix_release_guest",
        "fruix_release_configured_guest", "fruix_observe"])


@pytest.mark.parametrize("name", HOOKS)
def test_hook_docstring_is_a_reference(name):
    func = _hooks()[name]
    doc = inspect.getdoc(func) or ""
    assert doc.splitlines()[0].endswith("."), f"{name}: summary line"
    for param in inspect.signature(func).parameters:  # type: ignore[arg-type]
        if param != "self":
            assert f":param {param}:" in doc, f"{name}: :param {param}: missing"
    assert ":returns:" in doc, f"{name}: :returns: missing"


def _section(name: str) -> str:
    text = HOOKS_RST.read_text(encoding="utf-8")
    # A section is a heading line that is exactly the hook's name, up to the next heading.
    match = re.search(rf"^{name}\n[-~^]+\n(.*?)(?=^\S[^\n]*\n[-=~^]+\n|\Z)", text,
                      re.MULTILINE | re.DOTALL)
    assert match, f"docs/reference/hooks.rst has no section for {name}"
    return match.group(1)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_in_prose(name):
    section = _section(name)
    for part in ("When it is called", "What it must do", "What it returns", "Errors",
                 "Example"):
        assert f"**{part}**" in section, f"{name}: '{part}' missing in hooks.rst"
    assert ".. code-block:: python" in section and f"def {name}(" in section


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_tests(name):
    # A hook counts as tested when some test module other than this one names it.
    roots = [REPO / "tests", *sorted((REPO / "plugins").glob("*/tests"))]
    found = []
    for root in roots:
        for path in root.rglob("test_*.py"):
            skip = path.name in ("test_hookspecs.py", "test_docs.py")
            if not skip and name in path.read_text():
                found.append(path)
    assert found, f"no test mentions {name}"
