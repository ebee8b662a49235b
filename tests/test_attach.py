"""``fruix native-build attach``: what the core records, what it refuses, the hook's contract.

The end-to-end attach tests (a real sshd, a FreeBSD-shaped guest, the host
SIGKILLed in a phase) live with the executors that implement
``fruix_attach_phase``: plugins/host-initiated and plugins/guest-self-hosted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fruix_core.attach import (
    IMPORT,
    attach_build,
    attach_point,
    guest_from_record,
    guest_record,
)
from fruix_core.config import Config
from fruix_core.errors import PluginContractError, RunNotFoundError, UsageError
from fruix_core.hookspecs import hookimpl
from fruix_core.model import Guest, PhaseResult
from fruix_core.plugins import make_plugin_manager
from fruix_core.profile import phases_from
from fruix_core.resultroot import ResultRoot

GUEST = Guest(name="b", provider="ssh", host="192.0.2.7", port=2222, user="builder",
              identity_file="/home/op/.ssh/id_fruix", known_hosts="/home/op/.ssh/known_hosts",
              host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinned", trust_on_first_use=True,
              system_root="/", details={"password": "never recorded"})


def _config(tmp_path: Path) -> Config:
    return Config(store=tmp_path / "store", results=tmp_path / "results",
                  build_root=tmp_path / "build", promote=False)


def _run(config: Config, run_id: str, status: str, **metadata: object) -> ResultRoot:
    root = ResultRoot(config.results / run_id)
    root.create()
    root.write_metadata({"run_id": run_id, "executor": "host-initiated",
                         **guest_record(GUEST), **metadata})
    (root.path / "status").write_text(status + "\n")
    return root


def test_the_guest_record_round_trips_without_secrets_or_trust_on_first_use() -> None:
    record = guest_record(GUEST)
    assert "never recorded" not in repr(record)
    assert record["guest_identity_file"] == "/home/op/.ssh/id_fruix"   # a path only
    back = guest_from_record({k: str(v) for k, v in record.items()})
    assert back is not None
    assert (back.host, back.port, back.user, back.host_key, back.known_hosts) == \
        (GUEST.host, GUEST.port, GUEST.user, GUEST.host_key, GUEST.known_hosts)
    assert back.trust_on_first_use is False and dict(back.details) == {}
    assert guest_from_record({"executor": "local"}) is None
    with pytest.raises(UsageError, match="recorded guest"):
        guest_from_record({"guest_host": "h", "guest_port": "ssh"})


def test_attach_point_takes_up_the_failed_or_last_started_phase(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _run(config, "r1", "failed installworld")
    assert attach_point(config, "r1").phase == "installworld"
    # Killed host: running with a dead pid; the last phase it had started.
    _run(config, "r2", f"running pid={_dead_pid()} host={os.uname().nodename}",
         phase_buildworld_started="t", phase_buildworld_finished="t",
         phase_buildkernel_started="t")
    point = attach_point(config, "r2")
    assert point.phase == "buildkernel" and point.guest.host == GUEST.host
    assert point.executor == "host-initiated"
    # After the phases (staging, import): only the import is left.
    _run(config, "r3", "failed emit")
    assert attach_point(config, "r3").phase == IMPORT
    done = {f"phase_{p.name}_{w}": "t" for p in phases_from(None) for w in ("started", "finished")}
    _run(config, "r4", f"running pid={_dead_pid()} host={os.uname().nodename}", **done)
    assert attach_point(config, "r4").phase == IMPORT


def test_attach_point_refusals(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _run(config, "ok", "ok")
    assert attach_point(config, "ok") is None          # nothing to do (exit 0)
    _run(config, "live", f"running pid={os.getpid()} host={os.uname().nodename}")
    with pytest.raises(UsageError, match="is live"):
        attach_point(config, "live")
    _run(config, "early", "failed prepare")
    with pytest.raises(UsageError, match="not in a phase.*--resume early"):
        attach_point(config, "early")
    root = _run(config, "local", "failed buildworld")
    root.write_metadata({"executor": "local"})
    with pytest.raises(UsageError, match="did not run in a guest"):
        attach_point(config, "local")
    with pytest.raises(RunNotFoundError):
        attach_point(config, "nope")


def test_an_executor_without_fruix_attach_phase_cannot_be_attached(tmp_path: Path) -> None:
    from fruix_local import LocalExecutor  # builds on this machine: nothing to take up

    config = _config(tmp_path)
    _run(config, "r", "failed buildworld")
    point = attach_point(config, "r")
    with pytest.raises(UsageError, match="no fruix_attach_phase.*--resume r"):
        attach_build(config, point, executor_plugin=LocalExecutor())
    assert ResultRoot(config.results / "r").status().phase == "buildworld"  # untouched


class _BadAttach:
    name = "bad-attach"
    fruix_plugin_api = 1

    def __init__(self, answer: object) -> None:
        self.answer = answer

    @hookimpl
    def fruix_attach_phase(self, request, env, phase):
        return self.answer


def test_fruix_attach_phase_answers_are_checked() -> None:
    phase = phases_from(None)[0]
    assert make_plugin_manager(_BadAttach(None)).attach_phase(None, None, phase) is None
    good = PhaseResult(phase=phase.name, returncode=0, duration=1.0)
    assert make_plugin_manager(_BadAttach(good)).attach_phase(None, None, phase) is good
    pm = make_plugin_manager(_BadAttach("done"))
    with pytest.raises(PluginContractError, match="fruix_attach_phase.*PhaseResult"):
        pm.attach_phase(None, None, phase)
    other = PhaseResult(phase="installkernel", returncode=0, duration=1.0)
    with pytest.raises(PluginContractError, match="expected phase"):
        make_plugin_manager(_BadAttach(other)).attach_phase(None, None, phase)


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
