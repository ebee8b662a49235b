"""``fruix config check`` and the plugin-table validation every run does first."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fruix_core.config import load_config
from fruix_core.errors import ConfigError, ExitCode
from fruix_core.resultroot import list_runs
from fruix_core.runner import run_build
from fruix_core.schemas import validate_document
from fruix_core.testkit import run_cli


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "no-user-config"))


def _check(tmp_path: Path, text: str, *args: str):
    conf = tmp_path / "fruix.toml"
    conf.write_text(text)
    return run_cli("config", "check", "--config", str(conf), *args, cwd=tmp_path,
                   env=_env(tmp_path)), conf


@pytest.mark.parametrize(("text", "key", "words"), [
    ("[executors.local]\nbogus = 1\n", "executors.local.bogus", "unknown key"),
    ("[executors.nosuch]\nx = 1\n", "executors.nosuch", "no executor 'nosuch' is installed"),
    ("[guests.nosuch]\n", "guests.nosuch", "no guest-provider 'nosuch' is installed"),
    ("[executors.host-initiated]\nkeepalive = 0\n", "executors.host-initiated.keepalive",
     "more than 0"),
    ("[executors.guest-self-hosted]\nhelper = 7\n", "executors.guest-self-hosted.helper",
     "expected a string"),
    ("[guests.ssh]\nport = 22\n", "guests.ssh.host", "must name the guest's host"),
    ("[guests.xcpng]\nurl = \"ftp://x\"\n", "guests.xcpng.url", ""),
    ("[observers.command]\nevents = [\"lunch\"]\n", "observers.command.events",
     "unknown event kind"),
])
def test_a_bad_plugin_table_is_refused_naming_file_and_key(tmp_path, text, key, words):
    proc, conf = _check(tmp_path, text)
    assert proc.returncode == ExitCode.USAGE, proc.stdout
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"fruix: error: {conf}: key '{key}'") and words in line
    assert proc.stdout == ""


def test_a_valid_config_is_printed_resolved(tmp_path):
    proc, conf = _check(tmp_path, '[build]\njobs = 3\n\n[executors.host-initiated]\n'
                                  'keep_work = true\n\n[observers.command]\ncommand = "true"\n')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"# {conf}: valid"
    assert "[executors.host-initiated]\n" in proc.stdout
    assert 'work_dir = "/var/tmp/fruix-native-builds"' in proc.stdout  # a default, filled in
    as_json = run_cli("config", "check", "--config", str(conf), "--json", cwd=tmp_path,
                      env=_env(tmp_path))
    doc = json.loads(as_json.stdout)
    validate_document(doc)
    resolved = doc["configuration"]
    assert doc["valid"] and resolved["build"]["jobs"] == 3
    assert resolved["executors"]["host-initiated"]["keep_work"] is True
    assert resolved["observers"]["command"]["events"] == ["run-finished", "run-failed"]


def test_no_config_file_checks_the_defaults(tmp_path):
    proc = run_cli("config", "check", cwd=tmp_path, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# no config file: the defaults: valid")


def test_a_run_validates_every_plugin_table_before_any_result_root(fruix_workspace, toy_source):
    # The table of a plugin this run does not use is checked too.
    conf = fruix_workspace.write_config("[executors.host-initiated]\nbogus = true\n",
                                        source=toy_source)
    with pytest.raises(ConfigError) as info:
        run_build(load_config(conf))
    assert str(info.value) == (f"{conf}: key 'executors.host-initiated.bogus': unknown key "
                               "(known: check_overlay, detach, keep_work, keepalive, results_dir, "
                               "work_dir)")
    assert list_runs(fruix_workspace.results) == []


def test_the_table_of_a_blocked_plugin_is_left_alone(tmp_path):
    # FRUIX_BLOCK_PLUGINS is a debugging aid: it must not make the config unusable.
    conf = tmp_path / "fruix.toml"
    conf.write_text("[executors.host-initiated]\nkeep_work = true\n")
    env = dict(_env(tmp_path), FRUIX_BLOCK_PLUGINS="host-initiated")
    proc = run_cli("config", "check", "--config", str(conf), "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["configuration"]["executors"]["host-initiated"] == {
        "keep_work": True}
