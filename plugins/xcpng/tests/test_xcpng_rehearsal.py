"""Rehearsing a ``[guests.xcpng]`` config against ``fruix-xapi-lab``, through the provider.

The lab's own command-line tests live with the lab (plugins/xapi-lab/tests); these
need the provider too, so they live here, with the lab as a test dependency.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fruix_xapi_lab.fixtures import LAB_PASSWORD, LAB_USER
from fruix_xcpng import XcpngGuestProvider

from fruix_core.api import GuestRequest

LAB_TOML = """\
[lab]
workdir = "work"
session_ttl = 0

[[vms]]
name = "rehearsal"
ip_delay = 0.1
snapshots = ["clean", "golden"]
"""


def lab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fruix_xapi_lab", *args]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(FRUIX_XCPNG_USERNAME=LAB_USER, FRUIX_XCPNG_PASSWORD=LAB_PASSWORD)
    return env


def test_rehearse_a_config_against_the_lab_command(tmp_path: Path,
                                                   lab_credentials: dict[str, str]) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(LAB_TOML)
    process = subprocess.Popen(lab_command("--config", str(config), "--json"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=environment(), text=True)
    try:
        assert process.stdout is not None
        description = json.loads(process.stdout.readline())
        assert description["url"].startswith("http://127.0.0.1:")
        names = [vm["name"] for vm in description["vms"]]
        assert names == ["rehearsal"]
        first = description["vms"][0]
        assert first["snapshots"] == ["clean", "golden"]
        assert first["host_key"].startswith("ssh-ed25519 ")
        assert first["system_root"].startswith(str(tmp_path / "work"))
        settings = dict(description["guests_xcpng"], ip_timeout=5, ssh_timeout=5,
                        poll_interval=0.1)
        provider = XcpngGuestProvider()
        guest = provider.fruix_acquire_guest(GuestRequest("xcpng", "rehearsal", settings))
        assert guest.host == first["address"]
        provider.fruix_release_guest(guest, "ok")
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=20)
    assert process.returncode == 0
    for secret in (LAB_USER, LAB_PASSWORD):
        assert secret not in err and secret not in json.dumps(description)


DOCS = Path(__file__).resolve().parents[3] / "docs" / "operator" / "xcpng.rst"
#: The walkthrough of docs/operator/xcpng.rst, command by command.
WALKTHROUGH = ("fruix-xapi-lab --workdir /tmp/xapi-lab",
               "fruix-xapi-lab --workdir /tmp/xapi-lab --print-config > rehearsal.toml",
               "fruix native-build run --config rehearsal.toml --json")


@pytest.mark.slow
def test_the_documented_walkthrough_builds_as_printed(tmp_path: Path) -> None:
    text = DOCS.read_text(encoding="utf-8")
    for command in WALKTHROUGH:
        assert command in text, f"docs/operator/xcpng.rst lost: {command}"
    workdir = str(tmp_path / "xapi-lab")
    lab = subprocess.Popen(lab_command("--workdir", workdir), stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, env=environment(), text=True)
    try:
        assert lab.stdout is not None
        for line in lab.stdout:
            if line.startswith("Serving;"):
                break
        printed = subprocess.run(lab_command("--workdir", workdir, "--print-config"),
                                 capture_output=True, text=True, env=environment(), timeout=60)
        assert printed.returncode == 0, printed.stderr
        config = tmp_path / "rehearsal.toml"
        config.write_text(printed.stdout)
        assert 'snapshot = "clean"' in printed.stdout and 'executor = "host-initiated"' in \
            printed.stdout
        run = subprocess.run([sys.executable, "-m", "fruix_core.cli.main", "native-build", "run",
                              "--config", str(config), "--json"], capture_output=True,
                             text=True, env=environment(), timeout=300, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout)
        assert result["status"] == "ok" and result["executor"] == "host-initiated"
        assert result["guest"] == "xcpng"
    finally:
        lab.send_signal(signal.SIGINT)
        lab.communicate(timeout=30)
    assert lab.returncode == 0
    assert not (Path(workdir) / "fruix.toml").exists()  # a stopped lab serves no config
    gone = subprocess.run(lab_command("--workdir", workdir, "--print-config"),
                          capture_output=True, text=True, env=environment(), timeout=60)
    assert gone.returncode == 3 and "no lab serves from" in gone.stderr
