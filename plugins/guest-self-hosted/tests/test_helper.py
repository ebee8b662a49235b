"""The in-guest helper run directly against temporary system roots."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

import pytest
from fruix_guest_self_hosted import __version__
from fruix_guest_self_hosted.guestbuild import WORK_DIR

from fruix_core.errors import ExitCode
from fruix_core.guestlayout import LAYOUT_RELATIVE_PATH
from fruix_core.resultroot import ResultRoot
from fruix_core.testkit import require_tool

PHASES = ["buildworld", "buildkernel", "installworld", "distribution", "installkernel"]


def test_version_is_the_distribution_version(kit):
    proc = kit.run_helper("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"fruix-self-hosted-native-build {__version__}"
    assert importlib.metadata.version("fruix-executor-guest-self-hosted") == __version__


def _polluted_environment(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A developer shell gone wrong: every variable that once broke the LLVM bootstrap."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    marker = tmp_path / "fake-tool-ran"
    for tool in ("cc", "c++", "make", "ar", "install", "ld"):
        script = fake / tool
        script.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {marker}\nexit 97\n")
        script.chmod(0o755)
    env = dict(os.environ)
    env.update({
        "PATH": f"{fake}:{env.get('PATH', '/usr/bin:/bin')}",
        "MAKEFLAGS": "-e POLLUTED_MAKEFLAGS=1",
        "MFLAGS": "-e",
        "CC": str(fake / "cc"), "CXX": str(fake / "c++"), "AR": str(fake / "ar"),
        "CFLAGS": "-DPOLLUTED_CFLAGS=1 -include /nonexistent/polluted.h",
        "CPPFLAGS": "-DPOLLUTED_CPPFLAGS=1", "LDFLAGS": "-Wl,--polluted",
        "FRUIX_DEVELOPMENT_PROFILE": "/nonexistent/development-profile",
        "FRUIX_DEVELOPMENT_SHELL": "1",
        "MAKEOBJDIRPREFIX": str(tmp_path / "polluted-obj"),
    })
    return env, marker


@pytest.fixture(scope="module")
def polluted_run(kit, tmp_path_factory, sample_guest):
    """One real helper build of the sample base from a polluted developer environment."""
    tmp = tmp_path_factory.mktemp("polluted")
    env, marker = _polluted_environment(tmp)
    proc = kit.run_helper("--system-root", str(sample_guest.path), "--jobs", "2", "--json", env=env)
    return proc, marker, tmp


def test_helper_builds_the_sample_base(kit, polluted_run, sample_guest):
    proc, _marker, _tmp = polluted_run
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    doc = kit.summary_of(proc)
    assert doc["status"] == "ok" and doc["exit_code"] == 0 and doc["latest"] is True
    assert doc["helper_version"] == __version__ and doc["executor"] == "guest-self-hosted"
    assert [p["phase"] for p in doc["phases"]] == PHASES
    assert all(p["returncode"] == 0 for p in doc["phases"])
    assert doc["source_store"] == sample_guest.source_store
    root = Path(doc["result_root"])
    assert root == sample_guest.results_dir / doc["run_id"]
    assert (root / "status").read_text() == "ok\n"
    assert sorted(p.name for p in (root / "logs").iterdir()) == sorted(f"{p}.log" for p in PHASES)
    assert os.readlink(sample_guest.results_dir / "latest") == doc["run_id"]
    # Heavy work lived under /var/tmp/fruix-self-hosted-native-builds/<run-id>, removed after.
    assert Path(doc["build_root"]) == sample_guest.path / WORK_DIR.lstrip("/") / doc["run_id"]
    assert not Path(doc["build_root"]).exists()
    # The summary's digests are the result root's.
    meta = ResultRoot(root).read_metadata()
    assert doc["artifacts"]["world"]["files"]["bin/sh"] == meta["sha256_world_bin_sh"]
    assert meta["executor"] == "guest-self-hosted" and meta["executor_version"] == __version__
    assert meta["source_store"] == sample_guest.source_store
    assert meta["build_jobs"] == "2"


def test_promotion_records_the_helper_and_the_guest(kit, polluted_run, sample_guest, tmp_path):
    from fruix_core.promotion import promote, read_promotion

    doc = kit.summary_of(polluted_run[0])
    root = Path(doc["result_root"])
    promotion = read_promotion(root / "promotion.scm")
    assert promotion.executor == "guest-self-hosted"
    assert promotion.executor_version == __version__
    assert promotion.run_id == doc["run_id"]
    assert promotion.source.path == sample_guest.source_store
    layout_signature = sample_guest.layout_file.read_text().split(
        "freebsd-source-signature")[1].split('"')[1]
    assert promotion.source.signature == layout_signature
    assert promotion.closure_path == sample_guest.closure_path
    assert promotion.development_profile_path == sample_guest.development_profile_path
    assert promotion.policy.environment_policy.startswith("sanitised")
    # The core's engine accepts it as is; the helper version is in every object's name.
    outcome = promote(root, tmp_path / "store")
    assert set(outcome.artifacts) == {"world", "kernel", "headers", "bootloader"}
    for path in outcome.artifacts.values():
        assert Path(path).name.endswith("-guest-self-hosted")


def test_polluted_environment_does_not_reach_make(kit, polluted_run):
    proc, marker, tmp = polluted_run
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    assert not marker.exists(), f"a fake tool from the polluted PATH ran: {marker.read_text()}"
    assert not (tmp / "polluted-obj").exists()
    root = Path(kit.summary_of(proc)["result_root"])
    logs = "".join(p.read_text() for p in (root / "logs").iterdir())
    assert "POLLUTED" not in logs and "polluted" not in logs
    assert "/nonexistent" not in logs


def test_tree_signatures_equal_the_local_executor(kit, polluted_run, local_reference):
    root = Path(kit.summary_of(polluted_run[0])["result_root"])
    assert kit.signatures(root) == local_reference


# -- unfit guests -------------------------------------------------------------------------


def _no_result_roots(guest) -> bool:
    return not guest.results_dir.exists() or not any(guest.results_dir.iterdir())


@pytest.mark.parametrize("damage, named", [
    ("no-include", "/usr/include is missing"),
    ("no-mk", "/usr/share/mk is missing"),
    ("no-sys-mk", "/usr/share/mk has no sys.mk"),
    ("dangling", "/usr/include is a dangling link"),
    ("none", "/usr/include is missing; /usr/share/mk is missing"),
])
def test_missing_overlay_is_named(kit, tmp_path, damage, named):
    guest = kit.make_toy_guest(tmp_path, with_overlay=damage != "none")
    include, mk = guest.path / "usr/include", guest.path / "usr/share/mk"
    if damage == "no-include":
        shutil.rmtree(include)
    elif damage == "no-mk":
        shutil.rmtree(mk)
    elif damage == "no-sys-mk":
        (mk / "sys.mk").unlink()
    elif damage == "dangling":
        shutil.rmtree(include)
        include.symlink_to("/frx/store/missing-development-profile/include")
    proc = kit.run_helper("--system-root", str(guest.path), "--json")
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    doc = kit.summary_of(proc)
    assert doc["status"] == "failed" and doc["error_type"] == "GuestError"
    assert named in doc["error"] and "development overlay" in doc["error"]
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert doc["run_id"] is None and _no_result_roots(guest)


def test_missing_store_layout_is_named(kit, toy_guest):
    toy_guest.layout_file.unlink()
    proc = kit.run_helper("--system-root", str(toy_guest.path), "--json")
    assert proc.returncode == ExitCode.USAGE
    doc = kit.summary_of(proc)
    assert doc["error_type"] == "MetadataError"
    assert LAYOUT_RELATIVE_PATH in doc["error"] and "missing" in doc["error"]
    assert "Traceback" not in proc.stderr and _no_result_roots(toy_guest)


def test_malformed_store_layout_is_named(kit, toy_guest):
    toy_guest.layout_file.write_text('(fruix-store-layout (version 1) (freebsd-sourc "/x"))\n')
    proc = kit.run_helper("--system-root", str(toy_guest.path))
    assert proc.returncode == ExitCode.USAGE
    assert "store-layout.scm:1" in proc.stderr and "freebsd-sourc" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_source_store_missing(kit, toy_guest):
    shutil.rmtree(toy_guest.source_dir)
    proc = kit.run_helper("--system-root", str(toy_guest.path), "--json")
    assert proc.returncode == ExitCode.USAGE
    assert kit.summary_of(proc)["error_type"] == "SourceTreeError"
    assert toy_guest.source_store in proc.stderr


def test_missing_make_is_named(kit, toy_guest):
    proc = kit.run_helper("--system-root", str(toy_guest.path), "--make", "no-such-make")
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    assert "no-such-make" in proc.stderr and "Traceback" not in proc.stderr


def test_check_reports_the_guest(kit, toy_guest):
    proc = kit.run_helper("--system-root", str(toy_guest.path), "--check", "--json")
    assert proc.returncode == ExitCode.OK, proc.stderr
    doc = kit.summary_of(proc)
    assert doc["status"] == "ready" and doc["run_id"] is None
    assert doc["source_store"] == toy_guest.source_store
    assert doc["source_dir"] == str(toy_guest.source_dir)
    assert _no_result_roots(toy_guest)


@pytest.mark.parametrize("args, fragment", [
    (["--jobs", "-1"], "--jobs"),
    (["--kernconf", "GEN ERIC"], "--kernconf"),
    (["--run-id", "../escape"], "invalid run id"),
    (["--run-id", "latest"], "invalid run id"),
])
def test_bad_usage(kit, toy_guest, args, fragment):
    proc = kit.run_helper("--system-root", str(toy_guest.path), *args)
    assert proc.returncode == ExitCode.USAGE
    assert fragment in proc.stderr and "Traceback" not in proc.stderr


# -- runs ----------------------------------------------------------------------------------


def test_run_id_is_used_once(kit, toy_guest):
    first = kit.run_helper("--system-root", str(toy_guest.path), "--run-id", "host-run-1", "--json")
    assert first.returncode == ExitCode.OK, first.stderr
    assert kit.summary_of(first)["result_root"] == str(toy_guest.results_dir / "host-run-1")
    again = kit.run_helper("--system-root", str(toy_guest.path), "--run-id", "host-run-1", "--json")
    assert again.returncode == ExitCode.USAGE
    assert "already taken" in kit.summary_of(again)["error"]
    assert (toy_guest.results_dir / "host-run-1" / "status").read_text() == "ok\n"


def test_failing_phase(kit, tmp_path):
    guest = kit.make_toy_guest(tmp_path, fail_installworld="")
    proc = kit.run_helper("--system-root", str(guest.path), "--json", "--run-id", "r1")
    assert proc.returncode == ExitCode.BUILD_FAILED
    doc = kit.summary_of(proc)
    assert doc["status"] == "failed" and doc["failed_phase"] == "installworld"
    assert [p["returncode"] == 0 for p in doc["phases"]] == [True, True, False]
    root = guest.results_dir / "r1"
    assert (root / "status").read_text() == "failed installworld\n"
    assert "failing on purpose" in (root / "logs" / "installworld.log").read_text()
    assert not (guest.results_dir / "latest").exists()
    # A failed run keeps its work area for inspection.
    assert Path(doc["build_root"]).is_dir()


def test_plain_output_for_an_operator(kit, toy_guest):
    proc = kit.run_helper("--system-root", str(toy_guest.path), "--jobs", "1")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "==> buildworld" in proc.stdout and "built world" in proc.stdout
    assert "==> installkernel: ok" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("result root: ")


def test_markers_for_the_host(kit, toy_guest):
    from fruix_guest_self_hosted import protocol

    proc = kit.run_helper("--system-root", str(toy_guest.path), "--markers", "--run-id", "m1")
    assert proc.returncode == ExitCode.OK, proc.stderr
    markers = [m for m in map(protocol.parse_marker, proc.stdout.splitlines()) if m]
    assert [(m.kind, m.phase) for m in markers if m.kind == "phase-start"] == \
        [("phase-start", p) for p in PHASES]
    assert markers[-1].kind == "summary" and markers[-1].document["run_id"] == "m1"


def test_module_entry_point():
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "fruix_guest_self_hosted.helper", "--version"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_helper_version_is_part_of_artifact_identity(kit, polluted_run, tmp_path):
    """A different helper never reuses the objects an older one made."""
    import dataclasses

    from fruix_core.promotion import promote, read_promotion, write_promotion

    root = Path(kit.summary_of(polluted_run[0])["result_root"])
    older = tmp_path / "older-result-root"
    shutil.copytree(root, older, symlinks=True)
    promotion = read_promotion(older / "promotion.scm")
    write_promotion(dataclasses.replace(promotion, executor_version="0.0.9"),
                    older / "promotion.scm")
    store = tmp_path / "store"
    current = promote(root, store).artifacts
    again = promote(root, store).artifacts
    previous = promote(older, store).artifacts
    assert current == again
    assert all(current[kind] != previous[kind] for kind in current)


def test_make_command_is_configurable(kit, toy_guest):
    from fruix_core.promotion import read_promotion

    require_tool("bmake", "bmake")
    proc = kit.run_helper("--system-root", str(toy_guest.path), "--make", "bmake", "--json")
    assert proc.returncode == ExitCode.OK, proc.stderr
    root = Path(kit.summary_of(proc)["result_root"])
    assert ResultRoot(root).read_metadata()["make"] == "bmake"
    assert read_promotion(root / "promotion.scm").policy.make == "bmake"
    assert (root / "logs" / "buildworld.log").read_text().startswith("# bmake ")


# -- step by step (how the host drives the helper) ------------------------------------------


def test_step_by_step_with_a_failed_phase_and_a_resume(kit, tmp_path):
    guest = kit.make_toy_guest(tmp_path, fail_installworld="")
    root = ["--system-root", str(guest.path), "--run-id", "r1", "--json"]
    run = ResultRoot(guest.results_dir / "r1")

    prepared = kit.run_helper("--prepare", *root)
    assert prepared.returncode == 0, prepared.stderr
    assert kit.summary_of(prepared)["status"] == "prepared"
    assert run.status().state == "running"
    for phase in PHASES[:2]:
        done = kit.run_helper("--phase", phase, *root)
        assert done.returncode == 0, done.stderr
        assert kit.summary_of(done)["status"] == "phase-ok"
        assert run.log_path(phase).read_text().strip()
    failed = kit.run_helper("--phase", "installworld", *root)
    assert failed.returncode == ExitCode.BUILD_FAILED
    assert kit.summary_of(failed)["failed_phase"] == "installworld"
    assert str(run.status()) == "failed (installworld)"
    refused = kit.run_helper("--finish", *root)
    assert refused.returncode == ExitCode.USAGE and "resume it first" in refused.stderr

    (guest.source_dir / "fail-installworld").unlink()
    again = kit.run_helper("--prepare", "--resume", *root)
    assert again.returncode == 0, again.stderr
    assert (guest.work_dir / "fruix-self-hosted-native-builds" / "r1").is_dir()  # kept
    for phase in PHASES[2:]:
        assert kit.run_helper("--phase", phase, *root).returncode == 0
    finished = kit.run_helper("--finish", *root)
    assert finished.returncode == 0, finished.stderr
    doc = kit.summary_of(finished)
    assert doc["status"] == "ok" and sorted(doc["artifacts"]) == sorted(
        ["world", "kernel", "headers", "bootloader"])
    assert str(run.status()) == "ok" and (run.path / "promotion.scm").is_file()
    assert (guest.results_dir / "latest").resolve() == run.path.resolve()
    assert not (guest.work_dir / "fruix-self-hosted-native-builds" / "r1").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--phase", "buildworld"], "need --run-id"),
    (["--phase", "lunch", "--run-id", "r9"], "no run 'r9'"),
    (["--resume", "--run-id", "r9"], "--resume goes with --prepare"),
    (["--prepare", "--resume", "--run-id", "r9"], "no run 'r9'"),
])
def test_bad_step_usage(kit, toy_guest, args, fragment):
    proc = kit.run_helper("--system-root", str(toy_guest.path), *args)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr


def test_a_hangup_does_not_stop_the_build(kit, tmp_path):
    # Started from a login that then ends (SIGHUP), the build goes on, as under nohup.
    import signal
    import subprocess
    import time

    guest = kit.make_toy_guest(tmp_path, sleep_buildworld="1")
    proc = subprocess.Popen([*kit.helper_command(), "--system-root", str(guest.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line or "sleeping" in line:
                break
        assert "sleeping" in line, line
        proc.send_signal(signal.SIGHUP)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert (guest.results_dir / "latest" / "status").read_text() == "ok\n"
