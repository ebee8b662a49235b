"""Sphinx configuration of the Fruix native-build documentation."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for plugin in sorted((ROOT / "plugins").iterdir()):
    sys.path.insert(0, str(plugin))

project = "Fruix native-build"
author = "The Fruix developers"
copyright = "2026, The Fruix developers"
release = (ROOT / "fruix_core" / "__about__.py").read_text().split('"')[1]

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
nitpicky = False
html_theme = "alabaster"
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]
