"""The authoring guide's example plugin is a real distribution: installed, it passes the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fruix_core.testkit import run_cli
from fruix_core.testkit.conformance import CHECKS

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "plugins" / "example"


def test_the_guide_shows_the_whole_example():
    guide = (REPO / "docs" / "plugins" / "authoring.rst").read_text()
    assert ".. literalinclude:: example/fruix_nice/__init__.py" in guide
    assert ".. literalinclude:: example/pyproject.toml" in guide


def test_the_example_installs_and_passes_fruix_executors_check(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "--target", str(site), str(EXAMPLE)],
                   check=True, capture_output=True, timeout=300)
    conf = tmp_path / "fruix.toml"
    conf.write_text("[executors.nice]\nniceness = 5\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p))
    listed = run_cli("executors", "list", cwd=tmp_path, env=env)
    assert "fruix-executor-nice 0.1.0" in listed.stdout
    proc = run_cli("executors", "check", "nice", "--config", str(conf), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == f"nice: {len(CHECKS)}/{len(CHECKS)} checks passed"
