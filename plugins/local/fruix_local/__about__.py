"""The version of the ``local`` executor: the one source of it (pyproject reads it)."""

from __future__ import annotations

__version__ = "0.1.0"
