"""Every hook is documented where it is declared, rendered in docs/, and tested."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from fruix_core import hookspecs

REPO = Path(__file__).resolve().parents[1]
SPECS = [hookspecs.ExecutorSpec, hookspecs.GuestProviderSpec]
HOOKS = [(spec, name) for spec in SPECS for name in dir(spec) if name.startswith("fruix_")]


def test_the_executor_spec_has_exactly_the_four_stages():
    names = [n for n in dir(hookspecs.ExecutorSpec) if n.startswith("fruix_")]
    assert sorted(names) == sorted(["fruix_prepare_env", "fruix_run_phase",
                                    "fruix_stage_artifacts", "fruix_emit_promotion"])


@pytest.mark.parametrize(("spec", "name"), HOOKS)
def test_hook_docstring_is_a_reference(spec, name):
    func = getattr(spec, name)
    doc = inspect.getdoc(func) or ""
    assert doc.splitlines()[0].endswith("."), f"{name}: summary line"
    for param in inspect.signature(func).parameters:
        if param != "self":
            assert f":param {param}:" in doc, f"{name}: :param {param}: missing"
    assert ":returns:" in doc, f"{name}: :returns: missing"


@pytest.mark.parametrize(("spec", "name"), HOOKS)
def test_hook_is_rendered_in_docs(spec, name):
    reference = (REPO / "docs" / "reference" / "hooks.rst").read_text()
    assert f"{spec.__name__}" in reference or name in reference


@pytest.mark.parametrize(("spec", "name"), HOOKS)
def test_hook_has_tests(spec, name):
    # A hook counts as tested when some test module other than this one names it.
    roots = [REPO / "tests", *sorted((REPO / "plugins").glob("*/tests"))]
    found = []
    for root in roots:
        for path in root.rglob("test_*.py"):
            skip = path.name in ("test_hookspecs.py", "test_docs.py")
            if not skip and name in path.read_text():
                found.append(path)
    assert found, f"no test mentions {name}"
