"""Fixtures of the lab's own tests: the lab's pytest fixtures."""

from __future__ import annotations

from fruix_xapi_lab.fixtures import lab, lab_credentials, xapi_lab  # noqa: F401
