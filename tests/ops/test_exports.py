"""The operating modules export what they declare, and only names that exist."""

from __future__ import annotations

import importlib

import pytest

MODULES = ["fruix_core.promotion.diff", "fruix_core.runrecord", "fruix_core.runlogs",
           "fruix_core.report", "fruix_core.schemas", "fruix_core.cli.ops_cmd",
           "fruix_core.cli.jsonout"]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str):
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported and len(exported) == len(set(exported))
    for member in exported:
        assert hasattr(module, member), f"{name}.{member}"
