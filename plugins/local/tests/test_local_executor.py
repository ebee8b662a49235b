"""The local executor through the real CLI, on the toy base (fast, breakable)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fruix_core.errors import ExitCode
from fruix_core.resultroot import ResultRoot, new_run_id
from fruix_core.testkit import processes_in, run_cli, wait_for, without_progress

PHASES = ["buildworld", "buildkernel", "installworld", "distribution", "installkernel"]


def _config(ws, source, extra=""):
    return ws.write_config(extra, source=source, promote=False)


def test_result_root_layout(fruix_workspace, fruix_toy_source):
    conf = _config(fruix_workspace, fruix_toy_source)
    proc = run_cli("native-build", "run", "--config", str(conf), "--json", cwd=fruix_workspace.root)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "ok" and doc["executor"] == "local"
    root = Path(doc["result_root"])
    assert root.parent == fruix_workspace.results and root.name == doc["run_id"]
    assert (root / "status").read_text() == "ok\n"
    assert sorted(p.name for p in (root / "logs").iterdir()) == sorted(f"{p}.log" for p in PHASES)
    assert "built world" in (root / "logs" / "buildworld.log").read_text()
    art = root / "artifacts"
    assert (art / "world" / "bin" / "sh").is_file()
    assert not (art / "world" / "usr" / "include").exists()
    assert not (art / "world" / "boot").exists()
    assert (art / "world" / "etc" / "rc.conf").is_file()
    assert (art / "headers" / "usr" / "include" / "sys" / "param.h").is_file()
    assert (art / "bootloader" / "boot" / "loader").is_file()
    assert (art / "bootloader" / "boot" / "defaults" / "loader.conf").is_file()
    assert (art / "kernel" / "boot" / "kernel" / "kernel").read_text() == "kernel GENERIC\n"
    meta = ResultRoot(root).read_metadata()
    for key in ("run_id", "executor", "executor_version", "build_jobs", "source_store",
                "build_root", "result_root", "size_world", "sha256_world_bin_sh",
                "sha256_kernel_boot_kernel_kernel", "sha256_bootloader_boot_loader",
                "environment_policy"):
        assert meta.get(key), key
    assert meta["source_signature"].startswith("sha256:")
    assert os.readlink(fruix_workspace.results / "latest") == doc["run_id"]
    from fruix_core.promotion.schema import read_promotion

    promotion = read_promotion(root / "promotion.scm")
    assert promotion.run_id == doc["run_id"] and promotion.executor == "local"
    assert promotion.policy.phases == tuple(PHASES)
    assert dict(promotion.artifact("world").files)["bin/sh"] == meta["sha256_world_bin_sh"]


def test_run_ids_are_unique(tmp_path):
    now = dt.datetime(2026, 4, 5, 15, 3, 59, tzinfo=dt.UTC)
    assert new_run_id(tmp_path, now) == "20260405T150359Z"
    assert new_run_id(tmp_path, now) == "20260405T150359Z-1"
    assert new_run_id(tmp_path, now) == "20260405T150359Z-2"


def test_failed_phase_then_resume(fruix_workspace, fruix_toy_source):
    conf = _config(fruix_workspace, fruix_toy_source)
    (fruix_toy_source / "fail-buildkernel").touch()
    proc = run_cli("native-build", "run", "--config", str(conf), cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.BUILD_FAILED
    assert "phase buildkernel failed" in proc.stderr
    assert "failing on purpose" in proc.stderr  # the log's last lines
    assert "Traceback" not in proc.stderr
    runs = [p for p in fruix_workspace.results.iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1
    root = runs[0]
    assert (root / "status").read_text() == "failed buildkernel\n"
    assert not (fruix_workspace.results / "latest").exists()
    world_log = (root / "logs" / "buildworld.log").read_text()

    listing = run_cli("native-build", "list", "--config", str(conf), "--json",
                      cwd=fruix_workspace.root)
    assert json.loads(listing.stdout)["runs"][0]["failed_phase"] == "buildkernel"

    (fruix_toy_source / "fail-buildkernel").unlink()
    resumed = run_cli("native-build", "run", "--config", str(conf), "--resume", root.name,
                      "--json", cwd=fruix_workspace.root)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["run_id"] == root.name
    assert (root / "status").read_text() == "ok\n"
    assert (root / "logs" / "buildworld.log").read_text() == world_log  # not run again
    again = run_cli("native-build", "run", "--config", str(conf), "--resume", root.name,
                    cwd=fruix_workspace.root)
    assert again.returncode == ExitCode.USAGE and "already finished" in again.stderr
    shown = run_cli("native-build", "show", root.name, "--config", str(conf), "--json",
                    cwd=fruix_workspace.root)
    assert json.loads(shown.stdout)["status"] == "ok"


def _start(conf: Path, cwd: Path, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fruix_core.cli.main", "native-build", "run",
                             "--config", str(conf)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _wait_for(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cancel_stops_the_process_group(fruix_workspace, fruix_toy_source, signum):
    conf = _config(fruix_workspace, fruix_toy_source)
    (fruix_toy_source / "sleep-buildworld").touch()
    proc = _start(conf, fruix_workspace.root)
    log = next(iter(_poll_logs(fruix_workspace.results)))
    _wait_for(log, "sleeping")
    assert processes_in(fruix_toy_source), "the phase should be running"
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err
    assert wait_for(lambda: processes_in(fruix_toy_source) == [])
    assert (log.parent.parent / "status").read_text() == "failed buildworld\n"


def _poll_logs(results: Path, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = list(results.glob("*/logs/buildworld.log"))
        if logs:
            return logs
        time.sleep(0.05)
    raise AssertionError("no run started")


def test_phase_timeout(fruix_workspace, fruix_toy_source):
    conf = fruix_workspace.write_config(source=fruix_toy_source, promote=False, phase_timeout=1)
    (fruix_toy_source / "sleep-buildkernel").touch()
    proc = run_cli("native-build", "run", "--config", str(conf), cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    assert "buildkernel exceeded its timeout of 1 s" in proc.stderr
    assert processes_in(fruix_toy_source) == []


@pytest.mark.parametrize(
    ("extra", "code", "fragment"),
    [
        ({"executor": "no-such"}, ExitCode.USAGE, "unknown executor 'no-such'"),
        ({"make": "no-such-make"}, ExitCode.INFRASTRUCTURE,
         "make command 'no-such-make' not found"),
    ],
)
def test_bad_setup_is_one_clear_message(fruix_workspace, fruix_toy_source, extra, code, fragment):
    conf = fruix_workspace.write_config(source=fruix_toy_source, promote=False, **extra)
    proc = run_cli("native-build", "run", "--config", str(conf), cwd=fruix_workspace.root)
    assert proc.returncode == code, proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
    assert len(without_progress(proc.stderr)) <= 3


def test_missing_source_tree(fruix_workspace, tmp_path):
    conf = _config(fruix_workspace, tmp_path / "does-not-exist")
    proc = run_cli("native-build", "run", "--config", str(conf), cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.USAGE
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_compiler(tmp_path):
    from fruix_local import check_tools

    from fruix_core.errors import ToolMissingError

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").symlink_to("/usr/bin/make")
    with pytest.raises(ToolMissingError, match="C compiler 'cc' not found"):
        check_tools("make", str(bin_dir))  # a build PATH with make but no cc


def test_conformance(fruix_executor_conformance):
    from fruix_core.testkit.conformance import all_passed

    results = fruix_executor_conformance("local")
    assert all_passed(results), "\n".join(r.line() for r in results)
