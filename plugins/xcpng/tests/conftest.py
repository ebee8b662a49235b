"""Fixtures of the xcpng plugin's tests: the plugin's own lab fixtures."""

from __future__ import annotations

from fruix_xcpng.lab.fixtures import lab, lab_credentials, xapi_lab  # noqa: F401
