"""The guest-side sh scripts, run with the local /bin/sh: same results as the core's helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from fruix_host_initiated import scripts

from fruix_core.profile import BuildPaths
from fruix_core.promotion.nar import tree_signature
from fruix_core.resultroot import stage_trees, staged_artifacts
from fruix_core.testkit import wait_for


def _sh(script: str) -> bytes:
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True)
    return out.stdout


def _stages(build_root: Path) -> BuildPaths:
    paths = BuildPaths(str(build_root))
    world, kernel = Path(paths.stage_world), Path(paths.stage_kernel)
    for rel in ("bin", "usr/include/sys", "usr/bin", "boot/defaults", "etc"):
        (world / rel).mkdir(parents=True)
    (world / "bin/sh").write_bytes(b"\x7fELF shell")
    (world / "bin/sh").chmod(0o555)
    os.link(world / "bin/sh", world / "bin/-sh")
    os.symlink("../../bin/sh", world / "usr/bin/sh")
    (world / "usr/include/sys/param.h").write_text("#define X 1\n")
    (world / "boot/loader").write_bytes(b"loader" * 100)
    (world / "boot/defaults/loader.conf").write_text("a=1\n")
    (world / "etc/rc.conf").write_text("x\n")
    (kernel / "boot/kernel").mkdir(parents=True)
    (kernel / "boot/kernel/kernel").write_bytes(b"kernel" * 1000)
    return paths


def test_staging_script_matches_stage_trees(tmp_path: Path) -> None:
    local_paths = _stages(tmp_path / "local")
    remote_paths = _stages(tmp_path / "remote")
    local_root = tmp_path / "local-root"
    remote_root = tmp_path / "remote-root"
    stage_trees(local_paths, local_root / "artifacts")
    expected = staged_artifacts(local_root)
    output = _sh(scripts.staging_script(remote_paths, str(remote_root)))
    key_files, sizes = scripts.parse_staging(output)
    for kind in expected.kinds:
        assert tree_signature(remote_root / "artifacts" / kind) == \
            tree_signature(local_root / "artifacts" / kind), kind
    assert key_files == dict(expected.key_files)
    assert sizes == dict(expected.sizes)


def test_staging_with_missing_stages(tmp_path: Path) -> None:
    paths = BuildPaths(str(tmp_path / "empty-build"))
    output = _sh(scripts.staging_script(paths, str(tmp_path / "root")))
    key_files, sizes = scripts.parse_staging(output)
    assert sorted((tmp_path / "root/artifacts").iterdir()) == sorted(
        tmp_path / "root/artifacts" / k for k in ("bootloader", "headers", "kernel", "world"))
    assert all(v == () for v in key_files.values()) and set(sizes.values()) == {0}


def test_paths_with_spaces_and_quotes(tmp_path: Path) -> None:
    odd = tmp_path / "it's a build"
    paths = _stages(odd)
    _sh(scripts.staging_script(paths, str(odd / "result root")))
    assert (odd / "result root/artifacts/world/bin/sh").is_file()


def test_probe_reports_overlay_tools_and_layout(tmp_path: Path) -> None:
    (tmp_path / "usr/include").mkdir(parents=True)
    (tmp_path / "usr/include/a.h").write_text("")
    layout = tmp_path / "run/current-system/metadata/store-layout.scm"
    layout.parent.mkdir(parents=True)
    layout.write_text("(fruix-store-layout)\n")
    facts, text = scripts.parse_probe(_sh(scripts.probe_script(str(tmp_path), "make -s",
                                                               "/bin:/usr/bin")))
    assert facts["overlay"] == ["usr/include"]  # usr/share/mk/sys.mk is missing
    assert set(facts["tool"]) == {"make", "cc"}
    assert text == b"(fruix-store-layout)\n"
    layout.unlink()
    assert scripts.parse_probe(_sh(scripts.probe_script(str(tmp_path), "make", "/bin")))[1] is None


def test_guest_path() -> None:
    assert scripts.guest_path("/", "/var/tmp") == "/var/tmp"
    assert scripts.guest_path("/srv/g", "/var/tmp") == "/srv/g/var/tmp"


def test_swap_latest(tmp_path: Path) -> None:
    for run in ("r1", "r2"):
        (tmp_path / run).mkdir()
        _sh(scripts.swap_latest_script(str(tmp_path), run))
        assert os.readlink(tmp_path / "latest") == run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "r1", "r2"]
    shutil.rmtree(tmp_path / "r1")


def _all_scripts(tmp_path: Path) -> dict[str, str]:
    paths = BuildPaths(str(tmp_path / "build"))
    return {
        "probe": scripts.probe_script(str(tmp_path), "bmake", "/sbin:/bin:/usr/sbin:/usr/bin"),
        "prepare": scripts.prepare_script(str(tmp_path / "src"), str(tmp_path / "result"),
                                          str(tmp_path / "build"), "running", fresh=True),
        "staging": scripts.staging_script(paths, str(tmp_path / "result")),
        "latest": scripts.swap_latest_script(str(tmp_path / "results"), "run-1"),
        "detached-start": scripts.detached_start_script("echo x; exit 3", str(tmp_path), "p"),
        "follow": scripts.follow_script(str(tmp_path), "p", 10),
        "detached-stop": scripts.detached_stop_script(str(tmp_path), "p"),
    }


def test_scripts_survive_any_login_shell(tmp_path: Path) -> None:
    # The guest's login shell reads every command first. csh and tcsh expand history
    # on '!' unless a blank, '=' or '(' follows (tcsh(1), "History substitution") and
    # refuse newlines inside quotes; the staging script's awk '!seen[$1]++' once failed
    # with "Event not found". FreeBSD's root shell is csh (etc/master.passwd).
    import re

    for name, script in _all_scripts(tmp_path).items():
        assert "\n" not in script, name
        assert not re.search(r"![^\s=(]", script), (name, script)


def test_scripts_run_under_tcsh(tmp_path: Path) -> None:
    from fruix_core.testkit import require_tool
    from fruix_core.transport.ssh import remote_command

    require_tool("tcsh", "tcsh")
    paths = _stages(tmp_path / "build")
    script = remote_command(scripts.staging_script(paths, str(tmp_path / "result")),
                            report_pgid=False)
    result = subprocess.run(["tcsh", "-f", "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "size world" in result.stdout and "digest kernel boot/kernel/kernel" in result.stdout


def test_prepare_refuses_a_build_root_on_another_file_system(tmp_path: Path) -> None:
    # bsdinstall's ZFS layout makes /var/tmp its own dataset; staging must stay a rename.
    import shlex

    build, result = tmp_path / "var/tmp/build", tmp_path / "var/lib/result"
    (tmp_path / "var/tmp").mkdir(parents=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "src/Makefile").write_text("all:\n")
    script = scripts.prepare_script(str(tmp_path / "src"), str(result), str(build), "running",
                                    fresh=True)
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    mount = shutil.which("mount") or "/bin/mount"
    proc = subprocess.run(
        ["unshare", *flags, "--", "/bin/sh", "-c",
         f"{mount} -t tmpfs fruix-test {shlex.quote(str(tmp_path / 'var/tmp'))} && "
         f"exec /bin/sh -c {shlex.quote(script)}"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert f"(on {tmp_path / 'var/tmp'})" in proc.stdout
    assert "different file systems" in proc.stdout
    assert not (result / "status").exists()
    assert _sh(script) == b""     # on one file system it passes and writes the status
    assert (result / "status").read_text() == "running\n"


# -- detached phases, in the FreeBSD-shaped guest (tcsh login, dash, no Python) ---------

def _guest(server, script: str, **kw) -> subprocess.CompletedProcess[str]:
    from fruix_core.transport.ssh import remote_command

    return subprocess.run([*server.ssh_command(), remote_command(script, report_pgid=False)],
                          capture_output=True, text=True, timeout=60, check=False, **kw)


def test_a_detached_phase_outlives_a_dropped_connection(fruix_freebsd_sshd, tmp_path: Path):
    import signal

    run_dir = str(tmp_path / "run")
    gate = tmp_path / "gate"
    command = (f"echo first; while [ ! -f {gate} ]; do sleep 0.1; done; echo second; exit 5")
    started = _guest(fruix_freebsd_sshd, scripts.detached_start_script(command, run_dir, "p"))
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("pid ")
    from fruix_core.transport.ssh import remote_command

    follower = subprocess.Popen(
        [*fruix_freebsd_sshd.ssh_command(),
         remote_command(scripts.follow_script(run_dir, "p", 0), report_pgid=False)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    assert follower.stdout.readline() == "first\n"
    # The connection drops (the sshd serving it dies) in the middle of the phase.
    for pid in fruix_freebsd_sshd.session_pids():
        os.kill(pid, signal.SIGKILL)
    follower.wait(timeout=30)
    assert not (tmp_path / "run/p.rc").exists()      # the phase goes on regardless
    gate.write_text("")
    assert wait_for(lambda: (tmp_path / "run/p.rc").exists(), 30), "the phase never ended"
    # Reconnect and go on from the 6 bytes already received.
    rest = _guest(fruix_freebsd_sshd, scripts.follow_script(run_dir, "p", len("first\n")))
    assert rest.stdout == "second\n\n@@fruix-rc@@ 5\n"


def test_a_detached_phase_can_be_stopped(fruix_freebsd_sshd, tmp_path: Path):
    from fruix_core.testkit import live_processes, wait_gone

    run_dir = str(tmp_path / "run")
    marker = f"fruix-detached-{os.getpid()}"
    command = f"sleep 317 & sleep 318; echo {marker}"   # durations no other test uses
    assert _guest(fruix_freebsd_sshd,
                  scripts.detached_start_script(command, run_dir, "q")).returncode == 0
    assert wait_for(lambda: bool(live_processes("sleep 318")), 30), "the phase never started"
    stopped = _guest(fruix_freebsd_sshd, scripts.detached_stop_script(run_dir, "q"))
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone("sleep 317") == [] and wait_gone("sleep 318") == []
    assert (tmp_path / "run/q.rc").read_text().strip() == "143"
