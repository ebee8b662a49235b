"""``fruix-xapi-lab``: an operator rehearses a config against it, then stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fruix_xapi_lab.fixtures import LAB_PASSWORD, LAB_USER

LAB_TOML = """\
[lab]
workdir = "work"
session_ttl = 0

[[vms]]
name = "rehearsal"
ip_delay = 0.1
snapshots = ["clean", "golden"]

[[vms]]
name = "broken"
start_fails = "NO_HOSTS_AVAILABLE"
"""


def lab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fruix_xapi_lab", *args]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(FRUIX_XCPNG_USERNAME=LAB_USER, FRUIX_XCPNG_PASSWORD=LAB_PASSWORD)
    return env


def test_human_output_prints_a_config_table(tmp_path: Path) -> None:
    process = subprocess.Popen(lab_command("--workdir", str(tmp_path / "w"), "--tls"),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env=environment(), text=True)
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Serving;"):
                break
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
    text = "".join(lines)
    assert text.startswith("XAPI lab listening on https://127.0.0.1:")
    assert "VM fruix-build" in text and "[guests.xcpng]" in text
    assert "host xcp-host1" in text and "(master)" in text
    assert "pinned_cert_sha256 = " in text and "host_key = \"ssh-ed25519 " in text
    assert process.returncode == 0


@pytest.mark.parametrize(("toml", "words"), [
    ("[lab]\nport = \"x\"\n", "key 'lab.port': expected an integer"),
    ("[[vms]]\nname = \"a\"\npower_state = \"Dancing\"\n", "vms[0].power_state"),
    ("[[vms]]\nname = \"a\"\n[[vms]]\nname = \"a\"\n", "vms[1].name"),
    ("[nope]\n", "unknown table"),
    ("[lab]\nprofile = \"glacial\"\n", "lab.profile"),
    ("[lab]\ncert_style = \"9.0\"\n", "lab.cert_style"),
    ("[[vms]]\nname = \"a\"\nagent = \"psychic\"\n", "vms[0].agent"),
])
def test_bad_lab_config_exits_2_naming_file_and_key(tmp_path: Path, toml: str, words: str
                                                    ) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(toml)
    done = subprocess.run(lab_command("--config", str(config)), capture_output=True, text=True,
                          env=environment(), timeout=60)
    assert done.returncode == 2
    assert str(config) in done.stderr and words in done.stderr


def test_missing_login_environment_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in environment().items() if not k.startswith("FRUIX_XCPNG_")}
    done = subprocess.run(lab_command("--workdir", str(tmp_path)), capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 2 and "FRUIX_XCPNG_USERNAME" in done.stderr


def test_slow_profile_gives_freebsd_agent_timing(tmp_path: Path) -> None:
    from fruix_xapi_lab.labconfig import load_lab_config

    config = tmp_path / "lab.toml"
    config.write_text('[lab]\nprofile = "slow"\n[[vms]]\nname = "a"\n'
                      '[[vms]]\nname = "b"\nip_delay = 2\n')
    vms = load_lab_config(config).vms
    # FreeBSD's xe-guest-utilities reports once a minute
    assert [vm["ip_delay"] for vm in vms] == [60.0, 2]
    assert load_lab_config(None).vms[0]["ip_delay"] == 1.0
