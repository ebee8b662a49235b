"""``fruix guests release``: the configured provider's fruix_release_configured_guest, as a command.

The xcpng provider's end-to-end test (a kept VM, halted and reverted through
the XAPI lab) is in plugins/xcpng/tests/test_xcpng_end_to_end.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fruix_core.errors import ExitCode, GuestError, PluginContractError, UsageError
from fruix_core.hookspecs import PLUGIN_API_VERSION, hookimpl
from fruix_core.model import Guest, GuestRequest
from fruix_core.plugins import make_plugin_manager
from fruix_core.schemas import validate_document
from fruix_core.testkit import run_cli

SSH_TABLE = '[build]\nexecutor = "host-initiated"\nguest = "ssh"\n' \
            '[guests.ssh]\nhost = "builder.example.org"\nhost_key = "ssh-ed25519 AAAAC3Nz"\n'


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "no-user-config"))


def _release(tmp_path: Path, text: str | None, *args: str):
    conf = tmp_path / "fruix.toml"
    if text is not None:
        conf.write_text(text)
    return run_cli("guests", "release", "--config", str(conf), *args, cwd=tmp_path,
                   env=_env(tmp_path), timeout=120), conf


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_static_host_has_nothing_to_release(tmp_path: Path) -> None:
    done, _ = _release(tmp_path, SSH_TABLE)
    assert done.returncode == ExitCode.OK, done.stderr
    assert done.stdout == ("guest 'builder.example.org' is a static host (builder.example.org):"
                           " nothing to release, fruix never starts, stops or reverts it\n")


def test_json_names_the_provider_and_its_distribution(tmp_path: Path) -> None:
    done, _ = _release(tmp_path, SSH_TABLE, "--json")
    assert done.returncode == ExitCode.OK, done.stderr
    answer = json.loads(done.stdout)
    validate_document(answer)
    assert answer["guest"] == "ssh" and answer["distribution"] == "fruix-core"
    assert "nothing to release" in answer["released"] and answer["version"]


def test_guest_on_the_command_line_overrides_the_config(tmp_path: Path) -> None:
    text = SSH_TABLE.replace('guest = "ssh"\n', "")
    done, conf = _release(tmp_path, text)
    assert done.returncode == ExitCode.USAGE
    line = _one_line(done.stderr)
    assert str(conf) in line and "no guest provider to release" in line and "--guest" in line
    done, _ = _release(tmp_path, text, "--guest", "ssh")
    assert done.returncode == ExitCode.OK and "nothing to release" in done.stdout


@pytest.mark.parametrize(("text", "args", "words"), [
    ('[build]\nguest = "ssh"\n[guests.ssh]\nport = 22\n', (), "guests.ssh.host"),
    ('[build]\nguest = "ssh"\n[guests.ssh]\nhost = "h"\nbogus = 1\n', (), "guests.ssh.bogus"),
    ('[build]\nguest = "nosuch"\n', (), "build.guest': unknown guest-provider 'nosuch"),
    (SSH_TABLE, ("--guest", "nosuch"), "nosuch"),
    ('[build\nguest = "ssh"\n', (), "fruix.toml"),
    (None, (), "fruix.toml"),  # --config names a file that is not there
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, text: str | None,
                                         args: tuple[str, ...], words: str) -> None:
    done, _ = _release(tmp_path, text, *args)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert words in _one_line(done.stderr) and done.stdout == ""


class _Releaser:
    """A provider whose configured guest is released by name."""

    fruix_plugin_api = PLUGIN_API_VERSION

    def __init__(self, answer: object = None, error: Exception | None = None) -> None:
        self.answer, self.error, self.requests = answer, error, []  # type: ignore[var-annotated]

    @hookimpl
    def fruix_acquire_guest(self, request: GuestRequest) -> Guest | None:
        return None

    @hookimpl
    def fruix_release_configured_guest(self, request: GuestRequest) -> object:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return self.answer


def _request() -> GuestRequest:
    return GuestRequest(provider="releaser", run_id="", settings={"vm": "b"})


def test_the_manager_returns_the_providers_line_in_one_line() -> None:
    provider = _Releaser("VM b:\n halted and\treverted")
    assert make_plugin_manager(provider).release_configured_guest(_request()) == \
        "VM b: halted and reverted"
    assert provider.requests == [_request()]


@pytest.mark.parametrize(("answer", "error", "expected", "words"), [
    (None, None, PluginContractError, "returned nothing (None); it must return a str"),
    (7, None, PluginContractError, "returned a int"),
    (None, KeyError("vm"), PluginContractError, "raised KeyError"),
    (None, GuestError("pool unreachable; by hand: xe ..."), GuestError, "pool unreachable"),
])
def test_wrong_answers_and_errors_name_the_hook(answer: object, error: Exception | None,
                                                expected: type[Exception], words: str) -> None:
    with pytest.raises(expected, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        make_plugin_manager(_Releaser(answer, error)).release_configured_guest(_request())
    if expected is PluginContractError:
        assert "fruix_release_configured_guest" in str(info.value)


def test_a_provider_without_the_hook_cannot_release_outside_a_run() -> None:
    class AcquireOnly:
        fruix_plugin_api = PLUGIN_API_VERSION

        @hookimpl
        def fruix_acquire_guest(self, request: GuestRequest) -> Guest | None:
            return None

    with pytest.raises(UsageError, match="cannot release a guest outside a run") as info:
        make_plugin_manager(AcquireOnly()).release_configured_guest(_request())
    assert info.value.exit_code == ExitCode.USAGE
