"""Fixtures of the xcpng tests: the XAPI lab's (test dependency fruix-xapi-lab)."""

from __future__ import annotations

from fruix_xapi_lab.fixtures import lab, lab_credentials, xapi_lab  # noqa: F401
