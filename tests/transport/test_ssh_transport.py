"""The SSH transport against a real OpenSSH sshd on loopback (no mocks)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fruix_core.errors import (
    AuthenticationError,
    ConnectionLostError,
    HostKeyError,
    TransportError,
)
from fruix_core.model import CancelToken
from fruix_core.testkit import wait_gone
from fruix_core.testkit.sshd import SshServer, free_port
from fruix_core.transport import CommandRunner
from fruix_core.transport.ssh import SSHSession, connect, remote_command, shell_script

PATH_ENV = {"PATH": "/bin:/usr/bin"}






@pytest.fixture
def session(fruix_sshd_shared: SshServer):
    with connect(fruix_sshd_shared.guest()) as sess:
        yield sess


# -- command lines -----------------------------------------------------------------------


def test_session_satisfies_the_command_runner_contract(session: SSHSession) -> None:
    runner: CommandRunner = session
    lines: list[str] = []
    outcome = runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"], env=PATH_ENV,
                         on_line=lines.append)
    assert outcome.returncode == 3
    assert lines == ["out", "err"]
    assert outcome.last_lines == ("out", "err")
    assert not outcome.timed_out and not outcome.cancelled


def test_environment_is_exactly_the_given_one(session: SSHSession, monkeypatch) -> None:
    monkeypatch.setenv("MAKEFLAGS", "-j99")  # a developer's shell must never leak through
    lines: list[str] = []
    session.run(["env"], env={"PATH": "/bin:/usr/bin", "LC_ALL": "C"}, on_line=lines.append)
    names = sorted(line.split("=", 1)[0] for line in lines)
    assert names == ["LC_ALL", "PATH"]


@pytest.mark.parametrize("word", ["a b", "it's", 'say "hi"', "$HOME", "`id`", "; rm -rf /",
                                  "back\\slash", "*", "~", "!event", "", "tab\there"])
def test_arguments_arrive_verbatim(session: SSHSession, word: str) -> None:
    lines: list[str] = []
    session.run(["printf", "[%s]\\n", word], env=PATH_ENV, on_line=lines.append)
    assert lines == [f"[{word}]"]


def test_cwd_and_environment_values_are_quoted(session: SSHSession, tmp_path: Path) -> None:
    odd = tmp_path / "dir with 'quote'"
    odd.mkdir()
    lines: list[str] = []
    session.run(["sh", "-c", 'pwd; printf "%s\\n" "$X"'], env={**PATH_ENV, "X": "v a'l$ue"},
                cwd=str(odd), on_line=lines.append)
    assert lines == [str(odd), "v a'l$ue"]


def test_newlines_in_commands_are_refused() -> None:
    with pytest.raises(TransportError):
        shell_script(["echo", "a\nb"])
    with pytest.raises(TransportError):
        shell_script(["true"], env={"X": "a\nb"})
    with pytest.raises(TransportError):
        shell_script(["true"], env={"BAD NAME": "x"})


def test_remote_command_is_one_sh_invocation() -> None:
    command = remote_command(shell_script(["make", "buildworld"], env={"PATH": "/bin"}))
    assert command.startswith("exec /bin/sh -c '")
    assert "\n" not in command
    assert "env -i PATH=/bin make buildworld" in command


# Words a guest path or command may hold that a login shell could mangle: csh expands
# `!` (history) even inside single quotes, and `$`, quotes and backslashes must pass.
AWKWARD = ["a!b", "$HOME", "it's", 'say "hi"', "back\\slash", "*", "~root", "x;y"]


@pytest.mark.parametrize("shell", ["sh", "tcsh"])
def test_remote_command_survives_any_login_shell(shell: str) -> None:
    # sshd runs a command as `$SHELL -c COMMAND` with the user's login shell (OpenSSH
    # session.c, do_child: argv = {shell0, "-c", command}); FreeBSD's root had csh
    # as its login shell before 14.0, so the command line must mean the same to both.
    from fruix_core.testkit import require_tool

    path = require_tool(shell, {"sh": "dash", "tcsh": "tcsh"}[shell])
    script = shell_script(["printf", "%s\\n", *AWKWARD], env={"PATH": "/bin:/usr/bin"})
    for merge in (True, False):
        command = remote_command(script, report_pgid=False, merge_stderr=merge)
        done = subprocess.run([path, "-c", command], capture_output=True, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().splitlines() == AWKWARD


def test_data_commands_keep_stderr_apart() -> None:
    script = "echo data; echo warning >&2"
    merged = subprocess.run(["sh", "-c", remote_command(script, report_pgid=False)],
                            capture_output=True, check=True)
    apart = subprocess.run(["sh", "-c", remote_command(script, report_pgid=False,
                                                       merge_stderr=False)],
                           capture_output=True, check=True)
    assert merged.stdout == b"data\nwarning\n"
    assert (apart.stdout, apart.stderr) == (b"data\n", b"warning\n")
    assert "2>&1" not in remote_command(script, merge_stderr=False)


def test_large_output_does_not_deadlock(session: SSHSession) -> None:
    # Far more than the channel window (2 MiB), stdout and stderr interleaved.
    script = ["sh", "-c", "i=0; while [ $i -lt 40 ]; do head -c 262144 /dev/zero | tr '\\0' x;"
              " echo; head -c 1000 /dev/zero | tr '\\0' y >&2; echo >&2; i=$((i+1)); done"]
    lines: list[str] = []
    outcome = session.run(script, env=PATH_ENV, on_line=lines.append, timeout=60)
    assert outcome.returncode == 0
    assert len(lines) == 80


def test_exit_status_of_a_signalled_command(session: SSHSession) -> None:
    outcome = session.run(["sh", "-c", "kill -9 $$"], env=PATH_ENV)
    assert outcome.returncode == 128 + 9


def test_silent_command_is_not_timed_out(fruix_sshd_shared: SshServer) -> None:
    # Keepalive probes every 0.3 s while the command prints nothing for 1.5 s.
    with connect(fruix_sshd_shared.guest(), keepalive=0.3) as sess:
        outcome = sess.run(["sh", "-c", "sleep 1.5; echo done"], env=PATH_ENV)
    assert outcome.returncode == 0 and outcome.last_lines == ("done",)


def test_timeout_kills_the_remote_process_group(session: SSHSession) -> None:
    started = time.monotonic()
    outcome = session.run(["sh", "-c", "sleep 300 & sleep 301"], env=PATH_ENV, timeout=1.0)
    assert outcome.timed_out and outcome.returncode < 0
    assert time.monotonic() - started < 10
    assert wait_gone("sleep 300") == [] and wait_gone("sleep 301") == []


def test_cancel_kills_the_remote_process_group(session: SSHSession) -> None:
    cancel = CancelToken()
    threading.Timer(1.0, cancel.cancel).start()
    outcome = session.run(["sh", "-c", "sleep 302 & (sleep 303; echo never) & wait"],
                          env=PATH_ENV, cancel=cancel)
    assert outcome.cancelled and outcome.returncode < 0
    assert wait_gone("sleep 302") == [] and wait_gone("sleep 303") == []


def test_interrupt_in_the_sink_stops_the_remote_command(session: SSHSession) -> None:
    def sink(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        session.run(["sh", "-c", "echo go; sleep 304"], env=PATH_ENV, on_line=sink)
    assert wait_gone("sleep 304") == []


def test_files_round_trip(session: SSHSession, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file"
    target.parent.mkdir()
    session.write_file(str(target), b"one\ntwo\0three")
    assert target.read_bytes() == b"one\ntwo\0three"
    assert session.read_file(str(target)) == b"one\ntwo\0three"
    with pytest.raises(TransportError, match="reading"):
        session.read_file(str(tmp_path / "missing"))


def test_host_name(session: SSHSession) -> None:
    assert session.host_name() == os.uname().nodename


# -- host keys -----------------------------------------------------------------------------


def test_unknown_host_key_is_refused(fruix_sshd_shared: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    guest = dataclasses.replace(fruix_sshd_shared.guest(), known_hosts=str(empty))
    with pytest.raises(HostKeyError, match="unknown"):
        connect(guest)


def test_changed_host_key_is_refused(fruix_sshd_shared: SshServer, tmp_path: Path) -> None:
    other = SshServer(tmp_path / "other")
    other._write_files()  # only its keys: another machine's host key
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{fruix_sshd_shared.known_hosts_name()} {other.host_key_line}\n")
    guest = dataclasses.replace(fruix_sshd_shared.guest(), known_hosts=str(wrong))
    with pytest.raises(HostKeyError, match="does not match"):
        connect(guest)
    pinned = dataclasses.replace(fruix_sshd_shared.guest(), host_key=other.host_key_line)
    with pytest.raises(HostKeyError, match="does not match"):
        connect(pinned)


def test_pinned_host_key_needs_no_known_hosts(fruix_sshd_shared: SshServer) -> None:
    guest = fruix_sshd_shared.guest(pin_host_key=True)
    assert guest.known_hosts is None
    with connect(guest) as sess:
        assert sess.run(["true"], env=PATH_ENV).returncode == 0


def test_hashed_known_hosts_entries_work(fruix_sshd_shared: SshServer, tmp_path: Path) -> None:
    hashed = tmp_path / "known_hosts"
    hashed.write_text(fruix_sshd_shared.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert "|1|" in hashed.read_text()
    with connect(dataclasses.replace(fruix_sshd_shared.guest(), known_hosts=str(hashed))) as s:
        assert s.active


def test_trust_on_first_use_only_when_asked(fruix_sshd_shared: SshServer, tmp_path: Path) -> None:
    remembered = tmp_path / "known_hosts"
    guest = dataclasses.replace(fruix_sshd_shared.guest(), known_hosts=str(remembered),
                                trust_on_first_use=True)
    with capture_logs() as logs, connect(guest) as sess:
        assert sess.active
    assert any(e["log_level"] == "warning" and "trust_on_first_use" in e["event"] for e in logs)
    assert fruix_sshd_shared.host_key_line in remembered.read_text()
    # Remembered: the next connection verifies against it without TOFU.
    with connect(dataclasses.replace(guest, trust_on_first_use=False)) as sess:
        assert sess.active


def test_malformed_pinned_key(fruix_sshd_shared: SshServer) -> None:
    guest = dataclasses.replace(fruix_sshd_shared.guest(), host_key="ssh-ed25519 @@@")
    with pytest.raises(HostKeyError):
        connect(guest)


# -- authentication and reachability ---------------------------------------------------------


def test_wrong_user_key_is_refused(fruix_sshd_shared: SshServer, tmp_path: Path) -> None:
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    guest = dataclasses.replace(fruix_sshd_shared.guest(), identity_file=str(stranger))
    with pytest.raises(AuthenticationError, match="authentication refused"):
        connect(guest)


def test_missing_identity_file(fruix_sshd_shared: SshServer, tmp_path: Path) -> None:
    guest = dataclasses.replace(fruix_sshd_shared.guest(), identity_file=str(tmp_path / "nope"))
    with pytest.raises(AuthenticationError, match="not found"):
        connect(guest)


def test_unreachable_host(fruix_sshd_shared: SshServer) -> None:
    guest = dataclasses.replace(fruix_sshd_shared.guest(), port=free_port())
    with pytest.raises(TransportError, match="unreachable"):
        connect(guest)


def test_silent_server_times_out(tmp_path: Path) -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts, never says a word
    try:
        port = listener.getsockname()[1]
        server = SshServer(tmp_path / "keys")
        server._write_files()
        guest = dataclasses.replace(server.guest(), port=port, connect_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(TransportError):
            connect(guest)
        assert time.monotonic() - started < 10
    finally:
        listener.close()


# -- faults --------------------------------------------------------------------------------


def test_sshd_killed_mid_command_is_a_lost_connection(fruix_sshd: SshServer) -> None:
    def kill_when_started(line: str) -> None:
        if line == "started":
            threading.Timer(0.3, fruix_sshd.kill).start()

    with connect(fruix_sshd.guest()) as sess:
        started = time.monotonic()
        with pytest.raises(ConnectionLostError):
            sess.run(["sh", "-c", "echo started; sleep 305"], env=PATH_ENV,
                     on_line=kill_when_started)
        assert time.monotonic() - started < 20
    fruix_sshd.stop()
    assert wait_gone("sleep 305") == []


def test_commands_after_a_drop_fail_cleanly(fruix_sshd: SshServer) -> None:
    sess = connect(fruix_sshd.guest())
    fruix_sshd.kill()
    time.sleep(0.3)
    with pytest.raises(ConnectionLostError):
        sess.run(["true"], env=PATH_ENV)
    with pytest.raises(ConnectionLostError):
        sess.check_output("true")
    sess.close()


def test_importing_the_transport_does_not_import_paramiko() -> None:
    code = ("import sys, fruix_core.transport.ssh, fruix_core.transport.tarstream, "
            "fruix_core.guests.ssh; print('paramiko' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_frozen_peer_is_declared_lost(fruix_sshd: SshServer) -> None:
    import signal

    # A frozen VM: its sshd stops answering, the TCP connection stays open.
    with connect(fruix_sshd.guest(), keepalive=0.3) as sess:
        def freeze() -> None:
            for pid in fruix_sshd.session_pids():
                os.kill(pid, signal.SIGSTOP)

        threading.Timer(0.5, freeze).start()
        started = time.monotonic()
        try:
            with pytest.raises(ConnectionLostError, match="keepalive"):
                sess.run(["sh", "-c", "sleep 312"], env=PATH_ENV)
            assert time.monotonic() - started < 15
        finally:
            for pid in fruix_sshd.session_pids():
                os.kill(pid, signal.SIGCONT)
    fruix_sshd.stop()
    assert wait_gone("sleep 312") == []


def test_output_held_open_after_exit_is_swept(session: SSHSession, monkeypatch) -> None:
    from fruix_core.transport import ssh

    monkeypatch.setattr(ssh, "LINGER_SECONDS", 0.5)
    started = time.monotonic()
    outcome = session.run(["sh", "-c", "sleep 314 & echo bye; exit 4"], env=PATH_ENV)
    assert outcome.returncode == 4 and outcome.last_lines == ("bye",)
    assert not outcome.timed_out and not outcome.cancelled
    assert time.monotonic() - started < 10
    assert wait_gone("sleep 314") == []


def test_cancel_while_output_is_closed(session: SSHSession) -> None:
    cancel = CancelToken()
    threading.Timer(1.0, cancel.cancel).start()
    outcome = session.run(["sh", "-c", "exec >/dev/null 2>&1; sleep 315"], env=PATH_ENV,
                          cancel=cancel)
    assert outcome.cancelled
    assert wait_gone("sleep 315") == []
