"""``guest-self-hosted`` with the POSIX sh helper in a FreeBSD-shaped guest.

The guest has no Python, ``dash`` as ``sh``, ``bsdtar``, ``bmake`` and a
``tcsh`` login shell; the helper is the sh script at
``/usr/local/bin/fruix-self-hosted-native-build``, found on the login PATH as
on a Fruix guest whose development overlay installs it.
"""

from __future__ import annotations

import json
import os
import re
import signal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from fruix_core.errors import ExitCode
from fruix_core.promotion.layout import MANIFEST_FILE
from fruix_core.resultroot import ResultRoot
from fruix_core.schemas import validate_document
from fruix_core.testkit import (
    Workspace,
    cli_process,
    live_processes,
    run_cli,
    run_host_killed_in_phase,
    wait_for,
    wait_gone,
)
from fruix_core.testkit.guest import make_base_system, make_guest_root
from fruix_core.testkit.sshd import SshServer

from .conftest import make_toy_guest

SCRIPT = Path(str(resources.files("fruix_guest_self_hosted") / "fruix-self-hosted-native-build"))
KINDS = ("world", "kernel", "headers", "bootloader")


@pytest.fixture(scope="module")
def freebsd_sshd(tmp_path_factory: pytest.TempPathFactory):
    base = make_base_system(tmp_path_factory.mktemp("base"),
                            extra={"fruix-self-hosted-native-build": SCRIPT})
    server = SshServer(tmp_path_factory.mktemp("sshd"), base_system=base)
    server.start()
    yield server
    server.stop()


def _config(ws: Workspace, sshd: SshServer, guest_root: Path, **build) -> Path:
    text = "\n".join([
        "[guests.ssh]", f'host = "{sshd.host}"', f"port = {sshd.port}",
        f'user = "{sshd.user}"', f'identity_file = "{sshd.client_key}"',
        f'known_hosts = "{sshd.known_hosts}"', f'system_root = "{guest_root}"', "",
        "[executors.guest-self-hosted]", "",   # the default helper: found on the guest's PATH
    ])
    build.setdefault("jobs", 2)
    return ws.write_config(text, executor="guest-self-hosted", guest="ssh", **build)


def test_full_chain_with_the_sh_helper_matches_local(freebsd_sshd, sample_guest,
                                                     tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    proc = run_cli("native-build", "run", "--config",
                   str(_config(ws, freebsd_sshd, sample_guest.path, promote=True)), "--json",
                   cwd=ws.root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "ok" and doc["executor"] == "guest-self-hosted"
    root = Path(doc["result_root"])
    log = (root / "logs/installworld.log").read_text()
    assert "-DNO_ROOT installworld" in log        # the helper's phase log, imported
    local_ws = Workspace(tmp_path / "local")
    local_ws.root.mkdir()
    local = run_cli("native-build", "run", "--config",
                    str(local_ws.write_config(source=sample_guest.source_dir, jobs=2)),
                    "--json", cwd=local_ws.root, timeout=300)
    assert local.returncode == 0, local.stderr
    local_doc = json.loads(local.stdout)
    for kind in KINDS:
        ours = Path(doc["artifacts"][kind])
        theirs = Path(local_doc["artifacts"][kind])
        assert (ours / MANIFEST_FILE).read_bytes() == (theirs / MANIFEST_FILE).read_bytes()
        assert ours.name.split("-", 1)[1].startswith(f"fruix-native-{kind}-")
    world = (Path(doc["artifacts"]["world"]) / MANIFEST_FILE).read_text()
    assert re.search(r"^\./usr/bin/passwd type=file uname=root gname=wheel mode=4555 .*"
                     r" flags=schg$", world, re.MULTILINE)


def test_a_failing_phase_is_a_build_failure(freebsd_sshd, tmp_path: Path) -> None:
    guest = make_toy_guest(tmp_path, fail_buildkernel="")
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    proc = run_cli("native-build", "run", "--config",
                   str(_config(ws, freebsd_sshd, guest.path, promote=False)), "--json",
                   cwd=ws.root, timeout=300)
    assert proc.returncode == ExitCode.BUILD_FAILED, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["phase"] == "buildkernel"
    host_log = Path(doc["result_root"]) / "logs/buildkernel.log"
    assert "failing on purpose" in host_log.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching the guest's build user needs root")
def test_full_chain_as_an_unprivileged_guest_user(tmp_path: Path,
                                                  tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    import shutil
    import tempfile

    from fruix_core.sample import sample_base_path
    from fruix_core.testkit import make_tree_writable
    from fruix_core.testkit.guest import make_guest_root

    nobody = 65534
    base = make_base_system(tmp_path_factory.mktemp("base-nobody"),
                            extra={"fruix-self-hosted-native-build": SCRIPT})
    top = Path(tempfile.mkdtemp(prefix="fruix-guest-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        guest = make_guest_root(top / "root", sample_base_path())
        for writable in (guest.results_dir, guest.work_dir):
            os.chown(writable, nobody, nobody)
        server = SshServer(tmp_path / "sshd", base_system=base, build_user=nobody)
        server.start()
        try:
            ws = Workspace(tmp_path / "ws")
            ws.root.mkdir()
            proc = run_cli("native-build", "run", "--config",
                           str(_config(ws, server, guest.path, promote=True)), "--json",
                           cwd=ws.root, timeout=300)
        finally:
            server.stop()
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        run_root = guest.results_dir / doc["run_id"]
        assert run_root.stat().st_uid == nobody
        world = (Path(doc["artifacts"]["world"]) / MANIFEST_FILE).read_text()
        assert " uname=root gname=wheel mode=4555 " in world
    finally:
        make_tree_writable(top)
        shutil.rmtree(top, ignore_errors=True)


def test_conformance_with_the_sh_helper(freebsd_sshd: SshServer,
                                        fruix_executor_conformance) -> None:
    # The whole contract (core-owned logs and status, teardown, cancel during and between
    # phases, the phase timeout, resume) with the sh helper, driven step by step
    # (--prepare, --phase, --finish) in the FreeBSD-shaped guest: no Python there.
    from fruix_core.testkit.conformance import all_passed

    assert freebsd_sshd.base_system is not None
    results = fruix_executor_conformance("guest-self-hosted",
                                         base_system=freebsd_sshd.base_system)
    assert all_passed(results), "\n".join(r.line() for r in results)


def test_jobs_come_from_the_guest(tmp_path: Path) -> None:
    # build.jobs = 0: -j is the guest's (FreeBSD: sysctl -n hw.ncpu), as the helper
    # reports it when it prepares the run; the host's CPU count never enters.
    base = make_base_system(tmp_path / "base-3cpu", ncpu=3,
                            extra={"fruix-self-hosted-native-build": SCRIPT})
    server = SshServer(tmp_path / "sshd", base_system=base)
    server.start()
    try:
        guest = make_toy_guest(tmp_path)
        ws = Workspace(tmp_path / "ws")
        ws.root.mkdir()
        proc = run_cli("native-build", "run", "--config",
                       str(_config(ws, server, guest.path, promote=False, jobs=0)), "--json",
                       cwd=ws.root, timeout=300)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    root = Path(json.loads(proc.stdout)["result_root"])
    assert (root / "metadata").read_text().count("build_jobs=3\n") == 1
    assert (root / "logs/buildworld.log").read_text().splitlines()[1].startswith(
        "# bmake -j3 buildworld")


# -- the host went away; the helper went on; fruix native-build attach takes it up -----------


def _killed_in(tmp_path: Path, sshd: SshServer, guest_root: Path, phase: str, *,
               promote: bool) -> tuple[Workspace, Path, str]:
    """A workspace, its config and a run whose host was SIGKILLed in ``phase``."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    conf = _config(ws, sshd, guest_root, promote=promote)
    return ws, conf, run_host_killed_in_phase(conf, phase, cwd=ws.root, results=ws.results)


def _attached(ws: Workspace, conf: Path, run_id: str) -> dict[str, Any]:
    """``attach RUN_ID --json``, which must succeed: its document."""
    proc = run_cli("native-build", "attach", run_id, "--config", str(conf), "--json",
                   cwd=ws.root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_attach_imports_a_run_whose_host_was_killed(freebsd_sshd, kit, local_reference,
                                                    tmp_path: Path) -> None:
    from fruix_core.sample import sample_base_path

    guest = make_guest_root(tmp_path / "guest", sample_base_path())
    ws, conf, run_id = _killed_in(tmp_path, freebsd_sshd, guest.path, "buildkernel",
                                  promote=True)
    doc = _attached(ws, conf, run_id)
    assert doc["run_id"] == run_id and doc["status"] == "ok" and doc["attached"] is True
    root = Path(doc["result_root"])
    assert kit.signatures(root) == local_reference
    assert sorted(doc["artifacts"]) == sorted(KINDS)
    assert (guest.results_dir / run_id / "status").read_text() == "ok\n"
    log = (root / "logs/buildkernel.log").read_text()
    assert "taken up by attach" in log and "buildkernel" in log


def test_attach_follows_a_phase_still_running(freebsd_sshd, tmp_path: Path) -> None:
    guest = make_toy_guest(tmp_path, wait_buildworld="")
    ws, conf, run_id = _killed_in(tmp_path, freebsd_sshd, guest.path, "buildworld",
                                  promote=False)
    host_log = ws.results / run_id / "logs/buildworld.log"
    with cli_process("native-build", "attach", run_id, "--config", str(conf), cwd=ws.root) as proc:
        def following() -> bool:
            text = host_log.read_text() if host_log.exists() else ""
            return "taken up by attach" in text and "waiting for go-buildworld" in text

        assert wait_for(following, seconds=60)
        again = run_cli("native-build", "attach", run_id, "--config", str(conf), cwd=ws.root)
        assert again.returncode == ExitCode.USAGE and "is live" in again.stderr
        (guest.source_dir / "go-buildworld").write_text("")
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"run {run_id}: ok (attached at buildworld" in out
    text = host_log.read_text()
    assert text.count("waiting for go-buildworld") == 1 and "built world" in text
    done = run_cli("native-build", "attach", run_id, "--config", str(conf), cwd=ws.root)
    assert done.returncode == 0 and "nothing to attach" in done.stdout
    as_json = run_cli("native-build", "attach", run_id, "--config", str(conf), "--json",
                      cwd=ws.root)
    doc = json.loads(as_json.stdout)
    validate_document(doc)
    assert as_json.returncode == 0 and doc["attached"] is False
    assert [r["run_id"] for r in doc["runs"]] == [run_id] and doc["runs"][0]["status"] == "ok"


def test_interrupting_attach_stops_the_followed_phase(freebsd_sshd, tmp_path: Path) -> None:
    guest = make_toy_guest(tmp_path, sleep_buildworld="3518")
    ws, conf, run_id = _killed_in(tmp_path, freebsd_sshd, guest.path, "buildworld",
                                  promote=False)
    assert wait_for(lambda: live_processes("sleep 3518"))   # the helper went on, hostless
    host_log = ws.results / run_id / "logs/buildworld.log"
    with cli_process("native-build", "attach", run_id, "--config", str(conf), cwd=ws.root) as proc:
        assert wait_for(lambda: host_log.exists() and "taken up by attach"
                        in host_log.read_text() and "sleeping" in host_log.read_text(),
                        seconds=60)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert wait_gone("sleep 3518") == []
    assert str(ResultRoot(ws.results / run_id).status()) == "failed (buildworld)"
    assert (guest.results_dir / run_id / "status").read_text() == "failed buildworld\n"


def test_attach_imports_a_run_whose_host_died_before_the_import(freebsd_sshd,
                                                               tmp_path: Path) -> None:
    guest = make_toy_guest(tmp_path)
    ws, conf, run_id = _killed_in(tmp_path, freebsd_sshd, guest.path, "import",
                                  promote=True)
    doc = _attached(ws, conf, run_id)
    assert doc["status"] == "ok" and sorted(doc["artifacts"]) == sorted(KINDS)
    metadata = ResultRoot(Path(doc["result_root"])).read_metadata()
    assert metadata["attached_at"] == "import" and metadata["helper_version"]
