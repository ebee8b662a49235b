"""The CLI side: promote_command / verify_command output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fruix_core.cli.store import ProgressLine, promote_command, verify_command
from fruix_core.errors import ExitCode, PromotionInputError
from fruix_core.promotion import Progress
from fruix_core.schemas import validate_document


@pytest.fixture(autouse=True)
def _quiet_logs():
    # Unconfigured structlog prints to stdout; the real CLI sends logs to stderr.
    with capture_logs():
        yield


def test_promote_json(result_root: Path, store: Path, capsys: pytest.CaptureFixture) -> None:
    assert promote_command(str(result_root), str(store), dry_run=False, as_json=True) == 0
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert set(document) == {"schema", "ok", "bundle", "artifacts", "published", "reused",
                             "dry_run"}
    validate_document(document)
    assert set(document["artifacts"]) == {"world", "kernel", "headers", "bootloader"}
    assert len(document["published"]) == 5 and document["dry_run"] is False
    assert "\r" not in err  # stderr is not a terminal: no progress


def test_promote_human(result_root: Path, store: Path, capsys: pytest.CaptureFixture) -> None:
    promote_command(str(result_root), str(store), dry_run=True, as_json=False)
    out = capsys.readouterr().out
    assert "would publish" in out and not store.exists()
    promote_command(str(result_root), str(store), dry_run=False, as_json=False)
    promote_command(str(result_root), str(store), dry_run=False, as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("bundle ") and lines[-1].endswith("(reused)")
    assert any(line.startswith("world ") and str(store) in line for line in lines)


def test_promote_errors_are_raised_for_main(tmp_path: Path, store: Path) -> None:
    with pytest.raises(PromotionInputError):
        promote_command(str(tmp_path), str(store), dry_run=False, as_json=True)


def test_verify_exit_codes(result_root: Path, store: Path,
                           capsys: pytest.CaptureFixture) -> None:
    promote_command(str(result_root), str(store), dry_run=False, as_json=True)
    bundle = json.loads(capsys.readouterr().out)["bundle"]
    assert verify_command([], str(store), as_json=False) == ExitCode.OK
    assert "all clean" in capsys.readouterr().out
    world = json.loads(subprocess.run(
        [sys.executable, "-c", "import json,sys,os;print(json.dumps(os.readlink(sys.argv[1])))",
         os.path.join(bundle, "artifacts/world")], capture_output=True, text=True).stdout)
    os.chmod(os.path.join(world, "bin/sh"), 0o500)
    assert verify_command([world], str(store), as_json=True) == ExitCode.VERIFICATION
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False and document["checked"] == [world]
    assert {"object", "path", "problem"} == set(document["problems"][0])
    assert document["problems"][0]["path"] == "bin/sh"
    validate_document(document)


def test_progress_line_writes_to_terminal_stream() -> None:
    import io
    stream = io.StringIO()
    line = ProgressLine(stream, interval=0)
    line(Progress(kind="world", files_done=1, files_total=2, bytes_done=2048,
                  bytes_total=4096, bytes_written=1024))
    line.close()
    text = stream.getvalue()
    assert "world: 1/2 files, 2.0 KiB/4.0 KiB, 1.0 KiB written" in text


def test_fruix_command_line(result_root: Path, store: Path) -> None:
    fruix = Path(sys.executable).with_name("fruix")
    assert fruix.exists(), "the fruix console script is installed with fruix-core"
    done = subprocess.run([str(fruix), "native-build", "promote", str(result_root),
                           "--store", str(store), "--json"], capture_output=True, text=True,
                          env={**os.environ, "FRUIX_STORE_FSYNC": "none"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bundle"].startswith(str(store))
    done = subprocess.run([str(fruix), "store", "verify", "--store", str(store), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] is True
    bad = subprocess.run([str(fruix), "native-build", "promote", str(store), "--store",
                          str(store)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == ExitCode.USAGE and "Traceback" not in bad.stderr
