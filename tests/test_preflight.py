"""Preflight, dry run, the failure line, resume checks and full disks, through the real CLI.

Unwritable and full file systems are real: a read-only or tiny tmpfs mounted in a
private mount namespace (:func:`fruix_core.testkit.mounts.with_tmpfs`), so they
fail for root too.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fruix_core.config import Config, load_config
from fruix_core.errors import BuildFailed, ExitCode, UsageError, WorkAreaError
from fruix_core.resultroot import ResultRoot, list_runs
from fruix_core.runner import plan_build, run_build
from fruix_core.schemas import validate_document
from fruix_core.testkit import run_cli, wait_for
from fruix_core.testkit.mounts import with_tmpfs


def _tree(path: Path) -> list[str]:
    """Every path under ``path`` (what a command must leave untouched)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fruix_core.cli.main", *args]


# -- preflight -------------------------------------------------------------------------------


def test_an_unwritable_store_fails_at_once_before_anything(fruix_workspace, toy_source):
    """Done when: under 2 s, before any phase or guest, one line, exit 3."""
    ws = fruix_workspace
    ws.store.mkdir()
    conf = ws.write_config(source=toy_source)
    timing = ws.root / "seconds"
    code = ("import sys, time; began = time.monotonic(); "
            "from fruix_core.cli.main import main; code = main(sys.argv[1:]); "
            f"open({str(timing)!r}, 'w').write(str(time.monotonic() - began)); sys.exit(code)")
    argv = [sys.executable, "-c", code, "native-build", "run", "--config", str(conf)]
    proc = subprocess.run(with_tmpfs(argv, [(ws.store, "ro")]), capture_output=True, text=True,
                          timeout=120, cwd=ws.root)
    assert proc.returncode == ExitCode.INFRASTRUCTURE, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"store {ws.store} is not writable: Read-only file system" in proc.stderr
    assert float(timing.read_text()) < 2.0
    assert not ws.results.exists() or list_runs(ws.results) == []  # no result root, no guest
    assert not ws.build_root.exists()


def test_a_store_of_another_user_is_refused_to_an_unprivileged_operator(tmp_path):
    """As ``nobody`` (``setpriv``), with root's store: the permission check answers."""
    import pwd
    import shutil
    import tempfile

    from fruix_core.testkit import make_toy_source, require_tool

    require_tool("setpriv", "util-linux")
    if os.geteuid() != 0:
        pytest.fail("this case needs root to act as 'nobody' (the CI runs as root)")
    nobody = pwd.getpwnam("nobody")
    place = Path(tempfile.mkdtemp(prefix="fruix-preflight-", dir="/tmp"))
    try:
        os.chmod(place, 0o755)
        source = make_toy_source(place / "src")
        (place / "store").mkdir(mode=0o755)  # root's
        work = place / "work"
        work.mkdir()
        os.chown(work, nobody.pw_uid, nobody.pw_gid)
        conf = place / "fruix.toml"
        conf.write_text(f"[build]\nsource = {json.dumps(str(source))}\n[paths]\n"
                        f"store = {json.dumps(str(place / 'store'))}\n"
                        f"results = {json.dumps(str(work / 'results'))}\n"
                        f"build_root = {json.dumps(str(work / 'build'))}\n")
        proc = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}",
                               f"--regid={nobody.pw_gid}", "--clear-groups", "--",
                               *_cli("native-build", "run", "--config", str(conf))],
                              capture_output=True, text=True, timeout=120, cwd=work,
                              env={**os.environ, "HOME": "/nonexistent"})
        assert proc.returncode == ExitCode.INFRASTRUCTURE, proc.stderr
        assert proc.stderr == (f"fruix: error: store {place / 'store'} is not writable by "
                               f"this user (uid {nobody.pw_uid}): Permission denied\n")
        assert list(work.iterdir()) == []
    finally:
        shutil.rmtree(place, ignore_errors=True)


def test_the_same_store_is_not_needed_without_promotion(fruix_workspace, toy_source):
    ws = fruix_workspace
    ws.store.mkdir()
    conf = ws.write_config(source=toy_source)
    argv = _cli("native-build", "run", "--config", str(conf), "--no-promote", "--json")
    proc = subprocess.run(with_tmpfs(argv, [(ws.store, "ro")]), capture_output=True, text=True,
                          timeout=300, cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "ok"


def test_an_unwritable_results_directory_is_exit_3(fruix_workspace, toy_source):
    ws = fruix_workspace
    ws.results.mkdir()
    conf = ws.write_config(source=toy_source)
    argv = _cli("native-build", "run", "--config", str(conf))
    proc = subprocess.run(with_tmpfs(argv, [(ws.results, "ro")]), capture_output=True,
                          text=True, timeout=120, cwd=ws.root)
    assert proc.returncode == ExitCode.INFRASTRUCTURE, proc.stderr
    assert f"results directory {ws.results} is not writable" in proc.stderr
    assert "internal error" not in proc.stderr and proc.stderr.count("\n") == 1


def test_not_enough_free_space_names_the_setting(fruix_workspace, toy_source):
    conf = fruix_workspace.write_config(source=toy_source)
    text = conf.read_text().replace("[paths]\n", '[paths]\nmin_free = "1000T"\n')
    conf.write_text(text)
    proc = run_cli("native-build", "run", "--config", str(conf), cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.INFRASTRUCTURE, proc.stderr
    assert "not enough free space" in proc.stderr and "paths.min_free" in proc.stderr
    assert list_runs(fruix_workspace.results) == []


def test_auto_min_free_comes_from_the_last_successful_run(fruix_workspace, toy_source):
    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    done = run_build(config)
    root = ResultRoot(done.result_root)
    meta = root.read_metadata()
    assert int(meta["result_root_size"]) > 0 and "build_root_size" in meta
    root.write_metadata({**meta, "result_root_size": 1 << 60})  # an exabyte last time
    with pytest.raises(WorkAreaError, match=f"the sizes of run {done.run_id}"):
        run_build(config)
    assert len(list_runs(fruix_workspace.results)) == 1  # refused before a result root


def test_a_local_executor_with_a_guest_is_refused_before_any_boot(fruix_workspace,
                                                                   toy_source):
    conf = fruix_workspace.write_config(source=toy_source, guest="ssh")
    proc = run_cli("native-build", "run", "--config", str(conf), cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "executor 'local' builds on this machine and uses no guest" in proc.stderr
    assert f"build.guest in {conf}" in proc.stderr
    assert not fruix_workspace.results.exists()
    dry = run_cli("native-build", "run", "--config", str(conf), "--dry-run",
                  cwd=fruix_workspace.root)
    assert dry.returncode == ExitCode.USAGE and "uses no guest" in dry.stderr


@pytest.mark.parametrize(("name", "in_guest"), [
    ("local", False), ("host-initiated", True), ("guest-self-hosted", True)])
def test_shipped_executors_declare_where_they_build(name, in_guest):
    from fruix_core.plugins import load
    from fruix_core.preflight import runs_in_guest

    assert runs_in_guest(load("executor", name).plugin) is in_guest


def test_an_in_guest_executor_without_a_guest_is_refused(fruix_workspace, toy_source):
    conf = fruix_workspace.write_config(source=toy_source)
    proc = run_cli("native-build", "run", "--config", str(conf), "--executor",
                   "host-initiated", cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "builds in a guest: name a guest provider" in proc.stderr
    assert not fruix_workspace.results.exists()


def test_a_missing_source_tree_is_refused_before_a_result_root(fruix_workspace, tmp_path):
    conf = fruix_workspace.write_config(source=tmp_path / "nowhere")
    proc = run_cli("native-build", "run", "--config", str(conf), cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.USAGE and "nowhere" in proc.stderr
    assert list_runs(fruix_workspace.results) == []


# -- dry run ---------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_creates_nothing(fruix_workspace, toy_source, tmp_path):
    ws = fruix_workspace
    srcconf = tmp_path / "src.conf"
    srcconf.write_text("WITHOUT_TESTS=yes\n")
    conf = ws.write_config(source=toy_source, srcconf=str(srcconf), jobs=3)
    before = _tree(tmp_path)
    proc = run_cli("native-build", "run", "--config", str(conf), "--dry-run", "--json",
                   cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    assert _tree(tmp_path) == before  # no result root, store, build area or probe left
    plan = json.loads(proc.stdout)
    validate_document(plan)
    assert plan["executor"]["name"] == "local" and plan["executor"]["runs_in_guest"] is False
    assert plan["guest"] is None and plan["promote"] is True and plan["resume"] is None
    assert plan["paths"]["store"] == str(ws.store)
    assert [p["name"] for p in plan["phases"]] == [
        "buildworld", "buildkernel", "installworld", "distribution", "installkernel"]
    world = plan["phases"][0]
    assert world["command"] == ["bmake", "-j3", "buildworld"]
    assert world["environment"]["MAKEOBJDIRPREFIX"] == str(ws.build_root / "<run-id>" / "obj")
    assert world["environment"]["SRCCONF"] == str(ws.build_root / "<run-id>/conf/src.conf")
    assert plan["environment"]["PATH"] == "/sbin:/bin:/usr/sbin:/usr/bin"
    assert plan["make_configuration"]["SRCCONF"].startswith("sha256:")
    assert plan["environment_policy"] == "sanitised-v2"
    text = run_cli("native-build", "run", "--config", str(conf), "--dry-run", cwd=ws.root)
    assert text.returncode == 0 and _tree(tmp_path) == before
    assert "phase 2/5 buildkernel:" in text.stdout and "bmake -j3 buildkernel" in text.stdout
    assert "dry run: nothing was created" in text.stdout


def test_dry_run_of_an_in_guest_executor_contacts_no_guest(fruix_workspace, toy_source):
    ws = fruix_workspace
    # A documentation address (RFC 5737): nothing answers there.
    conf = ws.write_config('[guests.ssh]\nhost = "192.0.2.1"\n', source=toy_source,
                           executor="host-initiated", guest="ssh")
    proc = run_cli("native-build", "run", "--config", str(conf), "--dry-run", "--json",
                   cwd=ws.root, timeout=60)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    validate_document(plan)
    assert plan["executor"]["runs_in_guest"] is True and plan["guest"]["name"] == "ssh"
    assert plan["source"] == "<guest source store>" and plan["jobs"] == 0
    assert plan["paths"]["run_build_root"] == "<guest build root>"
    assert plan["phases"][0]["command"] == ["bmake", "buildworld"]
    dirs = [d for fs in plan["space"]["file_systems"] for d in fs["directories"]]
    assert str(ws.build_root) not in dirs  # the build area is the guest's
    assert list(ws.root.iterdir()) == [conf]


def test_dry_run_reports_preflight_failures_the_same_way(fruix_workspace, toy_source):
    ws = fruix_workspace
    ws.store.mkdir()
    conf = ws.write_config(source=toy_source)
    argv = _cli("native-build", "run", "--config", str(conf), "--dry-run")
    proc = subprocess.run(with_tmpfs(argv, [(ws.store, "ro")]), capture_output=True, text=True,
                          timeout=120, cwd=ws.root)
    assert proc.returncode == ExitCode.INFRASTRUCTURE and proc.stdout == ""
    assert f"store {ws.store} is not writable" in proc.stderr


def test_dry_run_of_a_resume_names_the_run_and_its_phase(fruix_workspace, toy_source):
    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    run_id = _failed_in(config, toy_source, "installworld")
    plan = plan_build(config, resume=run_id)
    assert plan["resume"] == {"run_id": run_id, "phase": "installworld"}
    assert [p["name"] for p in plan["phases"]] == ["installworld", "distribution",
                                                    "installkernel"]
    assert plan["paths"]["run_build_root"] == str(fruix_workspace.build_root / run_id)
    validate_document(plan)


# -- the failure line ------------------------------------------------------------------------


def _failed_in(config: Config, toy_source: Path, phase: str) -> str:
    """The run id of a run of ``config`` that failed in ``phase`` (the toy's fail- file)."""
    (toy_source / f"fail-{phase}").touch()
    with pytest.raises(BuildFailed) as info:
        run_build(config)
    (toy_source / f"fail-{phase}").unlink()
    return info.value.run_id


def _failure_line(stderr: str) -> str:
    (line,) = [x for x in stderr.splitlines() if x.startswith("fruix: run ")]
    return line


def test_a_failed_phase_says_how_to_resume_and_the_command_works(fruix_workspace,
                                                                  toy_source):
    ws = fruix_workspace
    conf = ws.write_config(source=toy_source, promote=False)
    (toy_source / "fail-buildkernel").touch()
    proc = run_cli("native-build", "run", "--config", str(conf), "--no-promote", cwd=ws.root)
    assert proc.returncode == ExitCode.BUILD_FAILED
    (root,) = list_runs(ws.results)
    line = _failure_line(proc.stderr)
    log = root.log_path("buildkernel")
    assert line.startswith(f"fruix: run {root.run_id} failed in buildkernel; log: {log}; ")
    command = line.split("resume with: ", 1)[1]
    assert command == (f"fruix native-build run --resume {root.run_id} --config {conf} "
                       "--no-promote")
    (toy_source / "fail-buildkernel").unlink()
    argv = shlex.split(command)
    assert argv[:2] == ["fruix", "native-build"]
    again = run_cli(*argv[1:], "--json", cwd=ws.root)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["run_id"] == root.run_id


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_says_how_to_resume(fruix_workspace, toy_source, signum):
    ws = fruix_workspace
    conf = ws.write_config(source=toy_source)
    (toy_source / "sleep-buildkernel").write_text("60")
    proc = subprocess.Popen(_cli("native-build", "run", "--config", str(conf), "--executor",
                                 "local"), cwd=ws.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def sleeping() -> bool:
            roots = list_runs(ws.results)
            log = roots[0].log_path("buildkernel") if roots else None
            return log is not None and log.is_file() and "sleeping" in log.read_text()

        assert wait_for(sleeping, 60), "buildkernel never started"
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    (root,) = list_runs(ws.results)
    line = _failure_line(err)
    assert line == (f"fruix: run {root.run_id} interrupted in buildkernel; log: "
                    f"{root.log_path('buildkernel')}; resume with: fruix native-build run "
                    f"--resume {root.run_id} --config {conf} --executor local")


def test_a_failure_before_the_result_root_has_no_resume_line(fruix_workspace, toy_source):
    conf = fruix_workspace.write_config(source=toy_source, guest="ssh")
    proc = run_cli("native-build", "run", "--config", str(conf), cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.USAGE and "fruix: run " not in proc.stderr


# -- resume checks ---------------------------------------------------------------------------


def test_resume_with_another_source_tree_is_refused(fruix_workspace, toy_source, tmp_path):
    from fruix_core.testkit import make_toy_source

    ws = fruix_workspace
    other = make_toy_source(tmp_path / "other-src")
    (other / "Makefile").write_text((other / "Makefile").read_text() + "\n# another tree\n")
    conf = ws.write_config(source=toy_source, promote=False)
    (toy_source / "fail-installworld").touch()
    first = run_cli("native-build", "run", "--config", str(conf), cwd=ws.root)
    assert first.returncode == ExitCode.BUILD_FAILED
    (root,) = list_runs(ws.results)
    meta = root.read_metadata()
    assert meta["config_source"] == str(toy_source) and meta["config_digest"].startswith("sha")
    (toy_source / "fail-installworld").unlink()
    moved = ws.write_config(source=other, promote=False, name="other.toml")
    refused = run_cli("native-build", "run", "--config", str(moved), "--resume", root.run_id,
                      cwd=ws.root)
    assert refused.returncode == ExitCode.USAGE, refused.stderr
    assert f"source changed: {toy_source} → {other}" in refused.stderr
    assert "source identity files changed" in refused.stderr
    assert root.status().phase == "installworld"  # untouched
    made = run_cli("native-build", "run", "--config", str(conf), "--resume", root.run_id,
                   "--dry-run", cwd=ws.root)
    assert made.returncode == 0, made.stderr
    done = run_cli("native-build", "run", "--config", str(conf), "--resume", root.run_id,
                   cwd=ws.root)
    assert done.returncode == 0, done.stderr
    assert str(root.status()) == "ok"


def test_resume_names_each_changed_component(fruix_workspace, toy_source):
    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    run_id = _failed_in(config, toy_source, "distribution")
    import dataclasses

    from fruix_core.model import BaseMetadata

    changed = dataclasses.replace(config, make="bmake -DFOO",
                                  base=BaseMetadata(version="14.3-RELEASE"))
    with pytest.raises(UsageError) as refused:
        run_build(changed, resume=run_id)
    message = str(refused.value)
    assert "make changed: bmake → bmake -DFOO" in message
    assert "base changed: freebsd 15.0-STABLE amd64 GENERIC → freebsd 14.3-RELEASE" in message
    assert "source changed" not in message


def test_resume_after_the_build_area_was_pruned_is_refused(fruix_workspace, toy_source):
    import shutil

    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    run_id = _failed_in(config, toy_source, "installkernel")
    shutil.rmtree(fruix_workspace.build_root / run_id)
    with pytest.raises(UsageError, match="build area .* is gone"):
        run_build(config, resume=run_id)


# -- a full results disk ---------------------------------------------------------------------


def test_a_results_disk_that_fills_up_is_one_line_and_the_run_is_recorded_failed(
        fruix_workspace, toy_source):
    ws = fruix_workspace
    makefile = toy_source / "Makefile"
    makefile.write_text(makefile.read_text().replace(
        "echo built world", "echo built world && yes fruix-line-filling-the-disk | head -n 300000"))
    ws.results.mkdir()
    conf = ws.write_config(source=toy_source, promote=False)
    conf.write_text(conf.read_text().replace("[paths]\n", "[paths]\nmin_free = 0\n"))
    argv = _cli("native-build", "run", "--config", str(conf))
    # The listing runs in the namespace too: the tmpfs is gone once the command ends.
    script = with_tmpfs(["/bin/sh", "-c", '"$@"; code=$?; cat "$0"/*/status; exit $code',
                         str(ws.results), *argv], [(ws.results, "size=512k")])
    proc = subprocess.run(script, capture_output=True, text=True, timeout=300, cwd=ws.root)
    assert proc.returncode == ExitCode.INFRASTRUCTURE, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("fruix: error:")]
    assert len(errors) == 1 and "its file system is full" in errors[0], proc.stderr
    assert "No space left on device" in errors[0] and "internal error" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == "failed buildworld"


def test_a_results_disk_full_from_the_start_is_one_line(fruix_workspace, toy_source):
    ws = fruix_workspace
    ws.results.mkdir()
    conf = ws.write_config(source=toy_source, promote=False)
    conf.write_text(conf.read_text().replace("[paths]\n", "[paths]\nmin_free = 0\n"))
    fill = (f"dd if=/dev/zero of={shlex.quote(str(ws.results))}/filler bs=4k 2>/dev/null; "
            'exec "$@"')
    argv = with_tmpfs(["/bin/sh", "-c", fill, "fill",
                       *_cli("native-build", "run", "--config", str(conf))],
                      [(ws.results, "size=256k")])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ws.root)
    assert proc.returncode == ExitCode.INFRASTRUCTURE, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "not writable: No space left on device" in proc.stderr  # the preflight's probe


def test_a_full_disk_in_an_executor_hook_is_not_blamed_on_the_plugin(fruix_workspace,
                                                                     toy_source):
    import errno

    from fruix_local import LocalExecutor

    from fruix_core import hookimpl

    class FillsTheDisk(LocalExecutor):
        @hookimpl
        def fruix_stage_artifacts(self, request, env):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(request.result_root))

    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    with pytest.raises(WorkAreaError, match="fruix_stage_artifacts: a file system is full "
                                            r"\(No space left on device: ") as info:
        run_build(config, executor_plugin=FillsTheDisk())
    assert str(ResultRoot(info.value.result_root).status()) == "failed (stage)"


# -- paths from one place --------------------------------------------------------------------


def test_a_user_config_run_from_elsewhere_writes_nothing_there(tmp_path, toy_source):
    xdg = tmp_path / "config"
    (xdg / "fruix").mkdir(parents=True)
    (xdg / "fruix" / "config.toml").write_text(
        f"[build]\nsource = {json.dumps(str(toy_source))}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg)}
    proc = run_cli("native-build", "run", "--json", cwd=elsewhere, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(elsewhere.iterdir()) == []
    doc = json.loads(proc.stdout)
    base = xdg / "fruix" / ".fruix"
    assert Path(doc["result_root"]).parent == base / "results"
    assert doc["store"] == str(base / "store") and Path(doc["bundle"]).parent == base / "store"


def test_paths_base_xdg_puts_everything_in_the_data_directory(tmp_path, toy_source):
    conf = tmp_path / "etc" / "fruix.toml"
    conf.parent.mkdir()
    conf.write_text(f'[build]\nsource = {json.dumps(str(toy_source))}\npromote = false\n'
                    '[paths]\nbase = "xdg"\n')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    proc = run_cli("native-build", "run", "--config", str(conf), "--json", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    assert Path(json.loads(proc.stdout)["result_root"]).parent == \
        tmp_path / "data" / "fruix" / "results"
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in conf.parent.iterdir()) == [
        "fruix.toml"]
