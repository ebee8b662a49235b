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
# Hints stay in signatures: as :type: fields they would be cross-referenced fuzzily,
# and builtins such as ``bytes`` would clash with attributes of the same name.
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False}
nitpicky = False
html_theme = "alabaster"
myst_heading_anchors = 3
# "more than one target found" for builtins named like attributes (bytes, type, object).
suppress_warnings = ["myst.header", "ref.python"]
