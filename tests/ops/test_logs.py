"""``fruix native-build logs RUN [PHASE] [-f]``: print or follow phase logs."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fruix_core.errors import ExitCode
from fruix_core.testkit import Workspace

from .conftest import SampleRuns

PHASES = "buildworld,buildkernel,installworld,distribution,installkernel"


def test_logs_prints_phases_in_build_order(sample_runs: SampleRuns):
    run_id = str(sample_runs.first["run_id"])
    whole = sample_runs.cli("native-build", "logs", run_id)
    assert whole.returncode == 0, whole.stderr
    headers = [line for line in whole.stdout.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> {p} <==" for p in PHASES.split(",")]
    root = Path(str(sample_runs.first["result_root"]))
    one = sample_runs.cli("native-build", "logs", run_id, "buildkernel")
    assert one.returncode == 0
    assert one.stdout == (root / "logs" / "buildkernel.log").read_text()
    latest = sample_runs.cli("native-build", "logs", "latest", "installkernel")
    assert latest.returncode == 0 and "installkernel" in latest.stdout


def test_logs_bad_input_is_exit_2(sample_runs: SampleRuns, tmp_path: Path):
    run_id = str(sample_runs.first["run_id"])
    unknown = sample_runs.cli("native-build", "logs", run_id, "../../etc/passwd")
    assert unknown.returncode == ExitCode.USAGE
    assert "has no phase" in unknown.stderr and "buildworld" in unknown.stderr
    missing = sample_runs.cli("native-build", "logs", "19990101T000000Z")
    assert missing.returncode == ExitCode.USAGE and "no run" in missing.stderr


def _result_root(ws: Workspace, run_id: str, status: str) -> Path:
    root = ws.results / run_id
    (root / "logs").mkdir(parents=True)
    (root / "status").write_text(status + "\n")
    (root / "metadata").write_text(f"run_id={run_id}\nphases={PHASES}\n")
    return root


def test_a_planted_symlink_log_is_refused(fruix_workspace: Workspace, tmp_path: Path):
    config = fruix_workspace.write_config()
    root = _result_root(fruix_workspace, "20260101T000000Z", "ok")
    secret = tmp_path / "secret"
    secret.write_text("do not print me\n")
    os.symlink(secret, root / "logs" / "buildworld.log")
    proc = _cli(config, "native-build", "logs", "20260101T000000Z", "buildworld")
    assert proc.returncode == ExitCode.USAGE
    assert "do not print me" not in proc.stdout and "symlink" in proc.stderr


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fruix_core.cli.main", *args, "--config",
                           str(config)], capture_output=True, text=True, timeout=60)


class _Lines:
    """The follower's stdout, line by line, waited for with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=lambda: [self.queue.put(line) for line in stream],
                         daemon=True).start()

    def wait_for(self, text: str, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while text + "\n" not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{text!r} never came; got {self.seen}")
            try:
                self.seen.append(self.queue.get(timeout=left))
            except queue.Empty:
                continue


def _append(path: Path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)


def test_follow_prints_new_lines_and_stops_when_the_run_ends(fruix_workspace: Workspace):
    config = fruix_workspace.write_config()
    run_id = "20260102T000000Z"
    # This test process stands for the builder: the run is "running" while it lives.
    root = _result_root(fruix_workspace, run_id,
                        f"running pid={os.getpid()} host={socket.gethostname()}")
    world = root / "logs" / "buildworld.log"
    world.write_text("world 1\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fruix_core.cli.main", "native-build", "logs", run_id, "-f",
         "--interval", "0.02", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _Lines(proc)
        lines.wait_for("==> buildworld <==")
        lines.wait_for("world 1")
        _append(world, "world 2\n")
        lines.wait_for("world 2")
        kernel = root / "logs" / "buildkernel.log"
        kernel.write_text("kernel 1\n")
        lines.wait_for("==> buildkernel <==")
        lines.wait_for("kernel 1")
        assert proc.poll() is None  # still following a running run
        # The last line and the end of the run land together: the line is not lost.
        _append(kernel, "kernel 2 (last)\n")
        (root / "status").write_text("failed buildkernel\n")
        proc.wait(timeout=30)  # stdout belongs to the reader thread
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines.wait_for("kernel 2 (last)")
    assert proc.returncode == 0, err
    assert "is failed (buildkernel)" in err
    assert lines.seen.count("world 1\n") == 1 and lines.seen.count("world 2\n") == 1


def _dead_run(workspace: Workspace, run_id: str) -> Path:
    """A result root that says ``running`` for a process that is gone (``stale``)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    root = _result_root(workspace, run_id, f"running pid={gone.pid} host={socket.gethostname()}")
    (root / "logs" / "buildworld.log").write_text("world only\n")
    return root


def test_follow_of_one_phase_of_a_dead_run_ends_at_once(fruix_workspace: Workspace):
    config = fruix_workspace.write_config()
    run_id = "20260103T000000Z"
    root = _dead_run(fruix_workspace, run_id)
    (root / "logs" / "buildkernel.log").write_text("kernel only\n")
    proc = _cli(config, "native-build", "logs", run_id, "buildkernel", "-f")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "kernel only\n"
    assert "stale" in proc.stderr


def test_follow_under_json_logging_ends_with_a_json_record(fruix_workspace: Workspace):
    config = fruix_workspace.write_config()
    run_id = "20260104T000000Z"
    _dead_run(fruix_workspace, run_id)
    proc = _cli(config, "--log-format", "json", "native-build", "logs", run_id, "-f")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("world only\n")
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is JSON
    last = records[-1]
    assert last["logger"] == "fruix.logs" and last["run_id"] == run_id
    assert last["event"] == f"run {run_id} is {last['status']}" and "stale" in last["status"]
