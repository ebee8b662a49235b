"""The ``ssh`` guest provider: config validation and the guest it describes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fruix_core.errors import ConfigError
from fruix_core.guests.ssh import SSHGuestProvider, guest_from_settings
from fruix_core.model import Guest, GuestRequest
from fruix_core.plugins import load_plugin, make_plugin_manager
from fruix_core.testkit.sshd import SshServer


def _request(settings, config_file=None, provider="ssh") -> GuestRequest:
    return GuestRequest(provider=provider, run_id="r1", settings=settings,
                        config_file=config_file)


def test_acquire_describes_the_static_host(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("k")
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = tmp_path / "fruix.toml"
    guest = SSHGuestProvider().fruix_acquire_guest(_request(
        {"host": "builder", "port": 2222, "user": "build", "identity_file": "id",
         "known_hosts": "known_hosts", "system_root": "/srv/guest/"}, str(config)))
    assert guest == Guest(name="builder", provider="ssh", host="builder", port=2222,
                          user="build", identity_file=str(key), known_hosts=str(known),
                          system_root="/srv/guest", connect_timeout=15.0)


def test_defaults() -> None:
    guest = guest_from_settings({"host": "10.0.0.5"})
    assert (guest.port, guest.user, guest.system_root) == (22, "root", "/")
    assert guest.known_hosts is None and guest.host_key is None
    assert not guest.trust_on_first_use


@pytest.mark.parametrize(("settings", "key"), [
    ({}, "guests.ssh.host"),
    ({"host": ""}, "guests.ssh.host"),
    ({"host": "a b"}, "guests.ssh.host"),
    ({"host": "h", "port": 0}, "guests.ssh.port"),
    ({"host": "h", "port": "22"}, "guests.ssh.port"),
    ({"host": "h", "user": ""}, "guests.ssh.user"),
    ({"host": "h", "system_root": "relative"}, "guests.ssh.system_root"),
    ({"host": "h", "system_root": "/a/../b"}, "guests.ssh.system_root"),
    ({"host": "h", "host_key": "not a key"}, "guests.ssh.host_key"),
    ({"host": "h", "identity_file": "/nonexistent/id"}, "guests.ssh.identity_file"),
    ({"host": "h", "known_hosts": "/nonexistent/kh"}, "guests.ssh.known_hosts"),
    ({"host": "h", "connect_timeout": 0}, "guests.ssh.connect_timeout"),
    ({"host": "h", "trust_on_first_use": "yes"}, "guests.ssh.trust_on_first_use"),
    ({"host": "h", "colour": "blue"}, "guests.ssh.colour"),
])
def test_bad_settings_name_the_key(settings, key) -> None:
    with pytest.raises(ConfigError) as info:
        guest_from_settings(settings, config_file="/etc/fruix.toml")
    assert key in str(info.value) and "/etc/fruix.toml" in str(info.value)


def test_pinned_key_is_normalised() -> None:
    guest = guest_from_settings({"host": "h", "host_key": "ssh-ed25519 AAAAC3Nz  comment"})
    assert guest.host_key == "ssh-ed25519 AAAAC3Nz"


def test_other_providers_are_ignored_and_release_is_harmless() -> None:
    provider = SSHGuestProvider()
    assert provider.fruix_acquire_guest(_request({"host": "h"}, provider="xcpng")) is None
    guest = guest_from_settings({"host": "h"})
    assert provider.fruix_release_guest(guest, "failed") is None


def test_provider_is_installed_under_its_name() -> None:
    provider = load_plugin("guest-provider", "ssh")
    assert isinstance(provider, SSHGuestProvider)
    pm = make_plugin_manager(provider)
    guest = pm.acquire_guest(_request({"host": "h"}))
    assert guest.host == "h"
    pm.release_guest(guest, "ok")


def test_described_guest_connects(fruix_sshd_shared: SshServer) -> None:
    from fruix_core.transport.ssh import connect

    server = fruix_sshd_shared
    guest = SSHGuestProvider().fruix_acquire_guest(_request({
        "host": server.host, "port": server.port, "user": server.user,
        "identity_file": str(server.client_key), "host_key": server.host_key_line}))
    with connect(guest) as session:
        assert session.check_output("echo ok") == b"ok\n"


def test_compression_setting_reaches_the_import() -> None:
    assert guest_from_settings({"host": "b"}).details == {}
    assert guest_from_settings({"host": "b", "compression": "zstd"}).details == \
        {"compression": "zstd"}
    with pytest.raises(ConfigError, match="guests.ssh.compression"):
        guest_from_settings({"host": "b", "compression": "gzip"}, config_file="f.toml")


def test_release_configured_guest_says_a_static_host_has_nothing_to_release() -> None:
    provider = SSHGuestProvider()
    assert provider.fruix_release_configured_guest(_request({"host": "h"}, provider="x")) is None
    line = provider.fruix_release_configured_guest(_request({"host": "b.example", "name": "b"}))
    assert line == ("guest 'b' is a static host (b.example): nothing to release, fruix never "
                    "starts, stops or reverts it")
    with pytest.raises(ConfigError, match="guests.ssh.host"):
        provider.fruix_release_configured_guest(_request({"port": 22}))
