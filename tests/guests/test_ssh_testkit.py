"""The SSH test kit itself: a real sshd, generated keys, guest system roots."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fruix_core.guestlayout import read_store_layout
from fruix_core.model import Guest
from fruix_core.promotion.nar import tree_signature
from fruix_core.testkit.guest import GuestRoot, make_guest_root
from fruix_core.testkit.sshd import SshdMissingError, SshServer


def test_server_accepts_its_client_key_with_openssh(fruix_sshd: SshServer) -> None:
    assert fruix_sshd.running and fruix_sshd.port > 1024
    assert fruix_sshd.host_key_line.startswith("ssh-ed25519 AAAA")
    assert fruix_sshd.known_hosts.read_text().startswith(f"[127.0.0.1]:{fruix_sshd.port} ")
    out = subprocess.run([*fruix_sshd.ssh_command(), "echo", "hello"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "hello\n"


def test_guest_description(fruix_sshd: SshServer, tmp_path: Path) -> None:
    guest = fruix_sshd.guest(name="g", system_root=tmp_path)
    assert isinstance(guest, Guest)
    assert (guest.host, guest.port, guest.user) == ("127.0.0.1", fruix_sshd.port,
                                                    fruix_sshd.user)
    assert guest.system_root == str(tmp_path) and guest.known_hosts
    pinned = fruix_sshd.guest(pin_host_key=True)
    assert pinned.host_key == fruix_sshd.host_key_line and pinned.known_hosts is None


def test_stop_is_final_and_idempotent(tmp_path: Path) -> None:
    server = SshServer(tmp_path / "s")
    with server:
        port = server.port
    assert not server.running
    server.stop()
    import socket

    with socket.socket() as sock, pytest.raises(OSError):
        sock.connect(("127.0.0.1", port))


def test_fixed_port_and_ipv6(tmp_path: Path) -> None:
    from fruix_core.testkit.sshd import free_port

    port = free_port()
    with SshServer(tmp_path / "s", port=port) as server:
        assert server.port == port
    if Path("/proc/net/if_inet6").exists():
        try:
            free_port("::1")
        except OSError:
            return
        with SshServer(tmp_path / "s6", listen="::1") as server:
            assert server.known_hosts_name().startswith("[::1]:")


def test_missing_sshd_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    from fruix_core.testkit import sshd

    monkeypatch.setattr(sshd, "SSHD", str(tmp_path / "no-sshd"))
    with pytest.raises(SshdMissingError, match="openssh-server.*\\.ci/run"):
        SshServer(tmp_path / "s").start()


def test_guest_root_layout(fruix_guest_root: GuestRoot) -> None:
    root = fruix_guest_root.path
    layout = read_store_layout(root)
    assert layout.source_path == fruix_guest_root.source_store
    assert fruix_guest_root.on_host(layout.source_path) == fruix_guest_root.source_dir
    assert (fruix_guest_root.source_dir / "Makefile").is_file()
    assert layout.source_signature == "sha256:" + tree_signature(fruix_guest_root.source_dir)
    for rel in ("usr/include", "usr/share/mk", "var/lib/fruix/native-builds", "var/tmp"):
        assert (root / rel).is_dir()
    assert fruix_guest_root.on_host(layout.closure_path or "").is_dir()


def test_guest_root_without_overlay(tmp_path: Path, fruix_toy_source: Path) -> None:
    root = make_guest_root(tmp_path / "g", fruix_toy_source, with_overlay=False)
    assert not (root.path / "usr/include").exists()
    assert read_store_layout(root.path).source_path == root.source_store
    again = make_guest_root(tmp_path / "g", fruix_toy_source, with_overlay=False)
    assert again.source_store == root.source_store


def test_guest_fixture_reaches_the_root(fruix_guest: Guest, fruix_guest_root: GuestRoot) -> None:
    from fruix_core.transport.ssh import connect

    assert fruix_guest.system_root == str(fruix_guest_root.path)
    with connect(fruix_guest) as session:
        layout = session.read_file(str(fruix_guest_root.layout_file))
    assert b"fruix-store-layout" in layout


# -- the FreeBSD-shaped guest ------------------------------------------------------------


def _in_guest(server, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*server.ssh_command(), command], capture_output=True, text=True,
                          timeout=60, check=False)


def test_freebsd_shaped_guest_has_no_python_and_a_tcsh_login(fruix_freebsd_sshd) -> None:
    # A FreeBSD base system has no Python (it is a package) and root's shell is csh/tcsh.
    for python in ("python3", "python", "/usr/bin/python3", "/usr/local/bin/python3"):
        result = _in_guest(fruix_freebsd_sshd, f"{python} -c 'print(1)'")
        assert result.returncode != 0 and "1" not in result.stdout, python
        assert "not found" in result.stderr, result.stderr
    assert _in_guest(fruix_freebsd_sshd, "echo $shell").stdout.strip() == "/bin/tcsh"
    # csh history expansion is live, as on FreeBSD: '!x' in a command fails.
    assert "Event not found" in _in_guest(fruix_freebsd_sshd, "echo 'a!seen'").stderr


def test_freebsd_shaped_guest_tools(fruix_freebsd_sshd) -> None:
    script = ("exec /bin/sh -c 'readlink /proc/$$/exe; tar --version; "
              "make -V .MAKE.OS -f /dev/null; command -v bash || echo no-bash'")
    result = _in_guest(fruix_freebsd_sshd, script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    exe = Path(lines[0])
    assert exe.name == "sh"
    assert lines[1].startswith("bsdtar ")
    assert lines[2] == "Linux"     # bmake answers .MAKE.OS; GNU make does not know -V
    assert lines[-1] == "no-bash"
