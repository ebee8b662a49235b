"""``fruix executors check NAME``: the conformance suite from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fruix_core.schemas import validate_document
from fruix_core.testkit import run_cli
from fruix_core.testkit.conformance import CHECKS


def _env(extra: list[Path] = ()) -> dict[str, str]:
    paths = [str(p) for p in extra] + [os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


@pytest.mark.parametrize(("name", "as_json"), [
    ("local", True), ("host-initiated", False), ("guest-self-hosted", False)])
def test_shipped_executors_pass_every_check_with_no_config(tmp_path, name, as_json):
    # As from a fresh clone: no config file, so the in-guest executors meet the
    # FreeBSD-shaped test guest with the shipped helper in its overlay.
    env = dict(_env(), XDG_CONFIG_HOME=str(tmp_path / "no-user-config"))
    proc = run_cli("executors", "check", name, *(["--json"] if as_json else []), cwd=tmp_path,
                   env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if as_json:
        doc = json.loads(proc.stdout)
        validate_document(doc)
        assert doc["ok"] is True and doc["executor"] == name
        assert [(c["name"], c["ok"]) for c in doc["checks"]] == [(c, True) for c in CHECKS]
        return
    lines = proc.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == list(CHECKS)
    assert all(line.startswith("ok  ") for line in lines[:-1])
    assert lines[-1] == f"{name}: {len(CHECKS)}/{len(CHECKS)} checks passed"


@pytest.mark.parametrize(("name", "check", "words"), [
    ("returns-dict", "build", "fruix_prepare_env returned a dict; it must return a PreparedEnv"),
    ("impostor", "build", "promotion.scm refused: it names executor 'local'"),
    ("other-root", "build", "not the result root the core reserved"),
    ("extra-arg", "load", "has an invalid hook implementation"),
])
def test_a_broken_plugin_fails_with_one_line(tmp_path, broken_plugins, name, check, words):
    proc = run_cli("executors", "check", name, "--json", cwd=tmp_path,
                   env=_env([broken_plugins / name]))
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    validate_document(doc)
    assert doc["executor"] == name and doc["ok"] is False
    failed = {c["name"]: c["detail"] for c in doc["checks"] if not c["ok"]}
    assert words in failed[check] and "\n" not in failed[check]
    assert "Traceback" not in proc.stderr


def test_an_unknown_executor_fails_the_load_check(tmp_path):
    proc = run_cli("executors", "check", "no-such-executor", cwd=tmp_path, env=_env())
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0].startswith("FAIL  load")
    assert "unknown executor 'no-such-executor'" in proc.stdout
