"""A run in a directory whose name is not UTF-8 (a file system name is bytes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fruix_core.testkit import make_tree_writable, run_cli


def test_run_and_verify_in_a_non_utf8_directory(tmp_path: Path) -> None:
    work = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff"))
    work.mkdir()
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "no-user-config"))
    try:
        proc = run_cli("native-build", "run", "--json", cwd=work, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        doc = json.loads(proc.stdout)
        assert doc["status"] == "ok" and set(doc["artifacts"]) == {
            "world", "kernel", "headers", "bootloader"}
        root = Path(doc["result_root"])
        assert os.fsencode(str(root)).startswith(os.fsencode(str(work)))
        assert b"caf\xe9-\xff" in (root / "metadata").read_bytes()  # byte for byte
        verify = run_cli("store", "verify", cwd=work, env=env)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        make_tree_writable(work)
