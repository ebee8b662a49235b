"""Shared fixtures of the core's tests; most come from the plugin authors' kit
(:mod:`fruix_core.testkit`, loaded as a pytest plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fruix_core.testkit import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_source(fruix_toy_source: Path) -> Path:
    return fruix_toy_source


@pytest.fixture
def run_fruix():
    return run_cli
