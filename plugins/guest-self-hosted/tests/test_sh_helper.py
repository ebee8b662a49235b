"""The POSIX sh helper, run in a FreeBSD-shaped guest: dash as sh, bsdtar, bmake, no Python.

The guest base comes from :func:`fruix_core.testkit.guest.make_base_system`; the
helper is installed in it as ``/usr/local/bin/fruix-self-hosted-native-build``,
where the Fruix development overlay puts it (the seed's helper is a shell
script at that path).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
from fruix_guest_self_hosted.__about__ import __version__

from fruix_core.promotion import promote, verify
from fruix_core.promotion.layout import MANIFEST_FILE
from fruix_core.resultroot import ResultRoot
from fruix_core.testkit import make_tree_writable, require_tool
from fruix_core.testkit.guest import GuestRoot, base_system_command, make_base_system

from .conftest import make_toy_guest, signatures

SCRIPT = Path(str(resources.files("fruix_guest_self_hosted") / "fruix-self-hosted-native-build"))
INSTALLED = "/usr/local/bin/fruix-self-hosted-native-build"
PHASES = ("buildworld", "buildkernel", "installworld", "distribution", "installkernel")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_system(tmp_path_factory.mktemp("base-system"),
                            extra={"fruix-self-hosted-native-build": SCRIPT})


def _env() -> dict[str, str]:
    # What a login gives: no PYTHON*, no developer PATH (the base command resets PATH).
    return {"HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
            "USER": "builder", "LOGNAME": "builder", "PATH": "/usr/bin:/bin"}


def helper(base: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(base_system_command(base, ["fruix-self-hosted-native-build", *args]),
                          env=_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def _summary(proc: subprocess.CompletedProcess[str]) -> dict:
    try:
        return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    except (ValueError, IndexError):
        raise AssertionError(f"no JSON summary:\n{proc.stdout}\n{proc.stderr}") from None


# ---- the script itself

def test_print_gives_the_script_and_shellcheck_passes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fruix_core.cli.main", "native-build",
                           "helper", "--print"],
                          capture_output=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == SCRIPT.read_bytes()
    assert proc.stdout.splitlines()[0] == b"#!/bin/sh"
    require_tool("shellcheck", "shellcheck")
    check = subprocess.run(["shellcheck", "-s", "sh", "-"], input=proc.stdout,
                           capture_output=True, check=False)
    assert check.returncode == 0, check.stdout.decode()


def test_helper_version_is_the_plugins() -> None:
    match = re.search(r"^HELPER_VERSION=(\S+)$", SCRIPT.read_text(), re.MULTILINE)
    assert match and match.group(1) == __version__


def test_no_python_in_the_guest(base: Path) -> None:
    proc = subprocess.run(base_system_command(base, ["sh", "-c", "command -v python3"]),
                          env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    proc = subprocess.run(base_system_command(base, ["sh", "-c", f"command -v {INSTALLED}"]),
                          env=_env(), capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == INSTALLED


# ---- building

def test_whole_build_matches_the_local_executor(base: Path, sample_guest: GuestRoot,
                                                local_reference: dict[str, str],
                                                tmp_path: Path) -> None:
    proc = helper(base, "--system-root", str(sample_guest.path), "--jobs", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = _summary(proc)
    assert (doc["status"], doc["exit_code"], doc["executor"]) == ("ok", 0, "guest-self-hosted")
    root = Path(doc["result_root"])
    assert root.parent == sample_guest.results_dir
    assert (sample_guest.results_dir / "latest").resolve() == root.resolve()
    assert ResultRoot(root).status().state == "ok"
    assert signatures(root) == local_reference
    assert not Path(doc["build_root"]).exists()      # work area removed after success
    for name in PHASES:
        log = (root / "logs" / f"{name}.log").read_text()
        assert log.startswith("# bmake ")
    assert "-DNO_ROOT installworld" in (root / "logs/installworld.log").read_text()
    metadata = ResultRoot(root).read_metadata()
    assert metadata["helper_version"] == __version__ and metadata["status_value"] == "ok"
    assert metadata["latest_target"] == doc["run_id"]
    # The result promotes; the world keeps passwd's owner, set-user-ID mode and flag.
    outcome = promote(root, tmp_path / "store")
    world = (outcome.artifacts["world"] / MANIFEST_FILE).read_text()
    assert re.search(r"^\./usr/bin/passwd type=file uname=root gname=wheel mode=4555 .*"
                     r"flags=schg$", world, re.MULTILINE)
    assert verify(tmp_path / "store").ok
    make_tree_writable(tmp_path / "store")


def test_phase_by_phase(base: Path, sample_guest: GuestRoot,
                        local_reference: dict[str, str]) -> None:
    # The step interface the host's executor drives (the Python helper's too):
    # --prepare, --phase NAME, --finish, each with --run-id.
    root = str(sample_guest.path)
    run_id = "steps-1"
    proc = helper(base, "--system-root", root, "--prepare", "--run-id", run_id, "--jobs", "2",
                  "--json")
    assert proc.returncode == 0, proc.stderr
    doc = _summary(proc)
    assert (doc["status"], doc["run_id"], doc["jobs"]) == ("prepared", run_id, 2)
    for key in ("source_dir", "source_store", "source_signature", "results_dir", "work_dir"):
        assert doc[key], key
    result_root = sample_guest.results_dir / run_id
    assert ResultRoot(result_root).status().state == "running"
    for phase in PHASES:
        proc = helper(base, "--system-root", root, "--run-id", run_id, "--phase", phase)
        assert proc.returncode == 0, (phase, proc.stderr)
        assert f"==> {phase}: ok" in proc.stdout
    proc = helper(base, "--system-root", root, "--run-id", run_id, "--phase", "installkernel",
                  "--json")
    assert _summary(proc)["status"] == "phase-ok"
    assert not (result_root / "promotion.scm").exists()
    proc = helper(base, "--system-root", root, "--run-id", run_id, "--finish", "--json")
    assert proc.returncode == 0, proc.stderr
    assert _summary(proc)["status"] == "ok"
    assert ResultRoot(result_root).status().state == "ok"
    assert signatures(result_root) == local_reference
    assert ResultRoot(result_root).read_metadata()["build_jobs"] == "2"


def test_a_failed_step_is_resumed(base: Path, tmp_path: Path) -> None:
    guest = make_toy_guest(tmp_path, fail_installworld="")
    common = ["--system-root", str(guest.path), "--run-id", "r1", "--json"]
    run = ResultRoot(guest.results_dir / "r1")
    assert _summary(helper(base, "--prepare", *common))["status"] == "prepared"
    for phase in PHASES[:2]:
        assert helper(base, "--phase", phase, *common).returncode == 0
    failed = helper(base, "--phase", "installworld", *common)
    assert failed.returncode == 1
    assert _summary(failed)["failed_phase"] == "installworld"
    assert str(run.status()) == "failed (installworld)"
    refused = helper(base, "--finish", *common)
    assert refused.returncode == 2 and "resume it first" in refused.stderr

    (guest.source_dir / "fail-installworld").unlink()
    again = helper(base, "--prepare", "--resume", *common)
    assert again.returncode == 0, again.stderr
    assert _summary(again)["status"] == "prepared"
    assert (guest.work_dir / "fruix-self-hosted-native-builds" / "r1").is_dir()   # kept
    for phase in PHASES[2:]:
        assert helper(base, "--phase", phase, *common).returncode == 0
    finished = helper(base, "--finish", *common)
    assert finished.returncode == 0, finished.stderr
    assert sorted(_summary(finished)["artifacts"]) == sorted(
        ["world", "kernel", "headers", "bootloader"])
    assert str(run.status()) == "ok" and (run.path / "promotion.scm").is_file()
    again = helper(base, "--prepare", "--resume", *common)
    assert again.returncode == 2 and "only a failed run can be resumed" in again.stderr


# ---- failures

def test_a_failing_phase(base: Path, tmp_path: Path) -> None:
    guest = make_toy_guest(tmp_path, fail_buildkernel="")
    proc = helper(base, "--system-root", str(guest.path), "--json")
    assert proc.returncode == 1
    doc = _summary(proc)
    assert (doc["status"], doc["failed_phase"]) == ("failed", "buildkernel")
    assert "phase buildkernel failed" in proc.stderr
    root = Path(doc["result_root"])
    assert (root / "status").read_text() == "failed buildkernel\n"
    assert "failing on purpose" in (root / "logs/buildkernel.log").read_text()
    assert not (guest.results_dir / "latest").exists()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--bogus"], 2, "unknown option --bogus"),
    (["--phase", "compile"], 2, "unknown phase 'compile'"),
    (["--phase", "buildworld"], 2, "--phase buildworld needs --run-id"),
    (["--run-id", "../etc", "--phase", "buildworld"], 2, "invalid run id"),
    (["--jobs", "many"], 2, "--jobs: expected a number"),
    (["--base-version", "15.0 STABLE"], 2, "--base-version: must be a word"),
    (["--make", "bmake;reboot"], 2, "--make: invalid make command"),
    (["--phase", "buildworld", "--run-id", "nosuchrun"], 2, "no run nosuchrun"),
    (["--prepare"], 2, "--prepare needs --run-id"),
    (["--finish"], 2, "--finish needs --run-id"),
    (["--resume", "--run-id", "r9"], 2, "--resume goes with --prepare"),
    (["--prepare", "--resume", "--run-id", "r9"], 2, "no run r9"),
    (["--prepare", "--finish", "--run-id", "r9"], 2, "exclude each other"),
    (["--phase", "prepare", "--run-id", "r9"], 2, "unknown phase 'prepare'"),
])
def test_bad_usage(base: Path, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    guest = make_toy_guest(tmp_path)
    proc = helper(base, "--system-root", str(guest.path), *args)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr


def test_guest_problems(base: Path, tmp_path: Path) -> None:
    no_overlay = make_toy_guest(tmp_path / "a", with_overlay=False)
    proc = helper(base, "--system-root", str(no_overlay.path), "--json")
    assert proc.returncode == 3 and "development overlay is missing" in proc.stderr
    assert _summary(proc)["status"] == "failed"
    no_layout = make_toy_guest(tmp_path / "b")
    no_layout.layout_file.unlink()
    proc = helper(base, "--system-root", str(no_layout.path))
    assert proc.returncode == 2 and "store layout" in proc.stderr
    other_version = make_toy_guest(tmp_path / "c")
    text = other_version.layout_file.read_text()
    other_version.layout_file.write_text(text.rstrip().rstrip(")") +
                                         ' (freebsd-version "14.3-RELEASE"))\n')
    proc = helper(base, "--system-root", str(other_version.path))
    assert proc.returncode == 2 and "14.3-RELEASE" in proc.stderr
    assert not list(other_version.results_dir.iterdir())


def test_work_area_on_another_file_system_is_refused(base: Path, tmp_path: Path) -> None:
    # bsdinstall's ZFS layout gives /var/tmp its own dataset: a "move" there would be a
    # copy, and the copy's delete cannot remove schg files. The helper refuses it.
    guest = make_toy_guest(tmp_path)
    work = guest.path / "var/tmp"
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    mount = shutil.which("mount") or "/bin/mount"
    inner = base_system_command(base, ["fruix-self-hosted-native-build", "--system-root",
                                       str(guest.path)])
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    proc = subprocess.run([unshare, *flags, "--", "/bin/sh", "-c",
                           f'{mount} -t tmpfs fruix-test {work} && exec "$@"', "x", *inner],
                          env=_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "different file systems" in proc.stderr
    assert f"(on {work})" in proc.stderr


def test_a_hangup_does_not_stop_the_build(base: Path, tmp_path: Path) -> None:
    guest = make_toy_guest(tmp_path, sleep_buildworld="1")
    proc = subprocess.Popen(base_system_command(base, ["fruix-self-hosted-native-build",
                                                       "--system-root", str(guest.path)]),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or line.startswith("==> buildworld"):
                break
        assert line.startswith("==> buildworld"), line
        proc.send_signal(signal.SIGHUP)   # the login session that started it ended
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "run " in out and ": build ok" in out
    assert (guest.results_dir / "latest" / "status").read_text() == "ok\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching the guest's build user needs root")
def test_whole_build_as_an_unprivileged_user(base: Path, local_reference: dict[str, str],
                                             tmp_path: Path) -> None:
    import tempfile

    from fruix_core.sample import sample_base_path
    from fruix_core.testkit.guest import make_guest_root

    nobody = 65534
    top = Path(tempfile.mkdtemp(prefix="fruix-guest-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        guest = make_guest_root(top / "root", sample_base_path())
        for writable in (guest.results_dir, guest.work_dir):
            os.chown(writable, nobody, nobody)
        argv = base_system_command(base, ["fruix-self-hosted-native-build", "--system-root",
                                          str(guest.path), "--jobs", "2", "--json"],
                                   user=nobody)
        proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, proc.stderr
        root = Path(_summary(proc)["result_root"])
        assert root.stat().st_uid == nobody
        assert signatures(root) == local_reference
        assert " uname=root gname=wheel mode=04555 " in \
            (root / "metalog/world.METALOG").read_text()
    finally:
        make_tree_writable(top)
        shutil.rmtree(top, ignore_errors=True)
