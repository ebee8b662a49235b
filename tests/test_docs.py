"""The documentation builds without a warning and renders every hook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sphinx_builds_without_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html",
                           str(REPO / "docs"), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    hooks = (tmp_path / "html" / "reference" / "hooks.html").read_text()
    for hook in ("fruix_prepare_env", "fruix_run_phase", "fruix_stage_artifacts",
                 "fruix_emit_promotion", "fruix_acquire_guest", "fruix_release_guest",
                 "fruix_release_configured_guest"):
        assert hook in hooks
