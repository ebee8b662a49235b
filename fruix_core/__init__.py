"""Fruix native-build: pluggable executors and one promotion engine.

The public facade. Plugins import :data:`hookimpl` from here.
"""

from __future__ import annotations

from fruix_core.__about__ import __version__
from fruix_core.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
