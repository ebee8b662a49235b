"""Every script that runs in a guest is POSIX sh that shellcheck accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fruix_core.testkit import require_tool


def test_guest_scripts_pass_shellcheck() -> None:
    # The lint tox env runs the same check; the suite runs it too, so CI sees it either way.
    require_tool("shellcheck", "shellcheck")
    script = Path(__file__).resolve().parents[1] / "scripts/check_guest_scripts.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
