"""Public facades export what they declare, and only names that exist."""

from __future__ import annotations

import importlib

import pytest

import fruix_core

MODULES = ["fruix_core", "fruix_core.api", "fruix_core.observers", "fruix_core.errors",
           "fruix_core.model", "fruix_core.hookspecs",
           "fruix_core.plugins", "fruix_core.config", "fruix_core.profile",
           "fruix_core.environment", "fruix_core.resultroot", "fruix_core.runner",
           "fruix_core.transport", "fruix_core.transport.local", "fruix_core.testkit",
           "fruix_core.testkit.fixtures"]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} declares no __all__"
    assert len(exported) == len(set(exported))
    for member in exported:
        assert hasattr(module, member), f"{name}.{member}"


def test_core_facade():
    assert fruix_core.__all__ == ["__version__", "hookimpl"]
    assert fruix_core.__version__.count(".") == 2
