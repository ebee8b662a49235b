"""The [guests.xcpng] table: validation names file and key; credentials stay secret."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fruix_xcpng.settings import Secret, load_credentials, parse_settings

from fruix_core.errors import ConfigError

FILE = "/etc/fruix/fruix.toml"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEH6R1q1l0O9o1oWw4Y0G3B3lO0x3ZC2Fq2Yj3u7bL4e"


def base(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"url": "https://pool.example", "vm_name": "builder",
                              "snapshot": "clean", "host_key": KEY}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def error_of(**overrides: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_settings(base(**overrides), file=FILE)
    return info.value


def test_minimal_config_has_documented_defaults() -> None:
    settings = parse_settings(base(), file=FILE)
    assert settings.timeout == 30 and settings.keep == "never"
    assert settings.running == "refuse" and settings.ssh_port == 22
    assert settings.username_env == "FRUIX_XCPNG_USERNAME"
    assert settings.host_key == KEY and settings.system_root == "/"
    assert not settings.insecure


@pytest.mark.parametrize(("overrides", "key", "words"), [
    ({"url": ""}, "guests.xcpng.url", "pool master"),
    ({"url": "ftp://pool"}, "guests.xcpng.url", "http"),
    ({"vm_name": None}, "guests.xcpng.vm_name", "exactly one"),
    ({"vm_uuid": "abc"}, "guests.xcpng.vm_uuid", "exactly one"),
    ({"snapshot": None}, "guests.xcpng.snapshot", "snapshot"),
    ({"keep": "sometimes"}, "guests.xcpng.keep", "'on-failure'"),
    ({"running": "maybe"}, "guests.xcpng.running", "'use'"),
    ({"timeout": 0}, "guests.xcpng.timeout", "positive"),
    ({"timeout": "30"}, "guests.xcpng.timeout", "number"),
    ({"insecure": "yes"}, "guests.xcpng.insecure", "boolean"),
    ({"pinned_cert_sha256": "abc"}, "guests.xcpng.pinned_cert_sha256", "64 hex"),
    ({"insecure": True, "pinned_cert_sha256": "a" * 64}, "guests.xcpng.insecure", "combined"),
    ({"ca_file": "/nonexistent/ca.pem"}, "guests.xcpng.ca_file", "not found"),
    ({"host_key": None}, "guests.xcpng.host_key", "pinned"),
    ({"host_key": "not a key"}, "guests.xcpng.host_key", "public key"),
    ({"host_key": "ssh-rsa " + KEY.split()[1]}, "guests.xcpng.host_key", "not a ssh-rsa"),
    ({"ssh_port": 70000}, "guests.xcpng.ssh_port", "port"),
    ({"device": "wlan0"}, "guests.xcpng.device", "device number"),
    ({"password": "x"}, "guests.xcpng.password", "unknown key"),
    ({"pinned_cert_sha256": ["a" * 64, "xyz"]}, "guests.xcpng.pinned_cert_sha256", "64 hex"),
    ({"pinned_cert_sha256": [5]}, "guests.xcpng.pinned_cert_sha256", "list of strings"),
    ({"tls_server_names": "pool.example"}, "guests.xcpng.tls_server_names", "with ca_file"),
    ({"address": "not an address!"}, "guests.xcpng.address", "IP address or a host name"),
])
def test_errors_name_file_and_key(overrides: dict[str, Any], key: str, words: str) -> None:
    error = error_of(**overrides)
    assert error.file == FILE and error.key == key
    assert words in str(error) and str(error).startswith(FILE)


def test_url_with_credentials_is_refused_without_echoing_them() -> None:
    error = error_of(url="https://root:hunter2@pool.example/")
    assert "hunter2" not in str(error) and "root" not in str(error)
    assert error.key == "guests.xcpng.url"


def test_host_key_accepts_pub_and_known_hosts_lines(tmp_path: Path) -> None:
    assert parse_settings(base(host_key=KEY + " root@guest"), file=FILE).host_key == KEY
    assert parse_settings(base(host_key="[10.0.0.5]:22 " + KEY), file=FILE).host_key == KEY
    pub = tmp_path / "guest.pub"
    pub.write_text(KEY + " comment\n")
    settings = parse_settings(base(host_key=None, host_key_file="guest.pub"),
                              file=str(tmp_path / "fruix.toml"))
    assert settings.host_key == KEY


def test_device_accepts_eth_names_and_numbers() -> None:
    assert parse_settings(base(device="eth1"), file=FILE).device == "1"
    assert parse_settings(base(device=2), file=FILE).device == "2"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    settings = parse_settings(base(identity_file="keys/id", credentials_file="pool.cred"),
                              file=str(tmp_path / "fruix.toml"))
    assert settings.identity_file == str(tmp_path / "keys/id")
    assert settings.credentials_file == str(tmp_path / "pool.cred")


def test_credentials_from_environment() -> None:
    settings = parse_settings(base(username_env="U", password_env="P"), file=FILE)
    creds = load_credentials(settings, {"U": "alice", "P": "s3cret"})
    assert creds.username.reveal() == "alice" and creds.password.reveal() == "s3cret"
    assert "s3cret" not in repr(creds) and "alice" not in repr(creds)
    assert creds.scrub("alice said s3cret") == "*** said ***"


def test_missing_environment_names_the_variable_only() -> None:
    settings = parse_settings(base(), file=FILE)
    with pytest.raises(ConfigError) as info:
        load_credentials(settings, {"FRUIX_XCPNG_USERNAME": "alice"})
    assert "FRUIX_XCPNG_PASSWORD" in str(info.value)
    assert info.value.key == "guests.xcpng.password_env"


def test_credentials_file_must_be_private(tmp_path: Path) -> None:
    cred = tmp_path / "pool.cred"
    cred.write_text('username = "alice"\npassword = "s3cret"\n')
    os.chmod(cred, 0o644)
    settings = parse_settings(base(credentials_file=str(cred)), file=FILE)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_credentials(settings, {})
    os.chmod(cred, 0o600)
    creds = load_credentials(settings, {})
    assert creds.password.reveal() == "s3cret"


def test_broken_credentials_file_is_not_quoted(tmp_path: Path) -> None:
    cred = tmp_path / "pool.cred"
    cred.write_text('username = "alice"\npassword = s3cret-unquoted\n')
    os.chmod(cred, 0o600)
    settings = parse_settings(base(credentials_file=str(cred)), file=FILE)
    with pytest.raises(ConfigError) as info:
        load_credentials(settings, {})
    assert "s3cret" not in str(info.value) and "not valid TOML" in str(info.value)


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert f"{secret}" == "Secret('***')"


def test_several_pins_one_per_pool_host() -> None:
    pins = parse_settings(base(pinned_cert_sha256=["AB:" * 31 + "AB", "sha256:" + "c" * 64,
                                                   "ab" * 32]), file=FILE).pinned_cert_sha256
    assert pins == ("ab" * 32, "c" * 64)
    assert parse_settings(base(pinned_cert_sha256="d" * 64), file=FILE).pinned_cert_sha256 == \
        ("d" * 64,)
    assert parse_settings(base(), file=FILE).pinned_cert_sha256 == ()


def test_server_names_and_static_address(tmp_path: Path) -> None:
    ca = tmp_path / "pool-ca.pem"
    ca.write_text("")
    settings = parse_settings(base(ca_file=str(ca), tls_server_names=["XCP-1.example", "*.lab"],
                                   address="10.0.0.5"), file=FILE)
    assert settings.tls_server_names == ("xcp-1.example", "*.lab")
    assert settings.address == "10.0.0.5"
    assert parse_settings(base(address="builder.example"), file=FILE).address == "builder.example"
