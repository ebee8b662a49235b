"""The main job as an operator runs it: the sample base, locally, promoted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fruix_core.errors import ExitCode
from fruix_core.promotion.nar import tree_signature
from fruix_core.testkit import copy_sample_source, make_tree_writable, run_cli

KINDS = ("world", "kernel", "headers", "bootloader")


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "no-user-config")
    return env


def _signatures(result_root: Path) -> dict[str, str]:
    return {k: tree_signature(result_root / "artifacts" / k) for k in KINDS}


def test_run_with_no_config_builds_and_promotes_the_sample(tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    proc = run_cli("native-build", "run", "--json", cwd=work, env=_clean_env(tmp_path))
    try:
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert set(doc) >= {"run_id", "executor", "status", "result_root", "store", "bundle",
                            "artifacts"}
        assert doc["executor"] == "local" and doc["status"] == "ok"
        assert Path(doc["store"]) == work / ".fruix" / "store"
        assert Path(doc["result_root"]).parent == work / ".fruix" / "results"
        assert set(doc["artifacts"]) == set(KINDS)
        bundle = Path(doc["bundle"])
        for kind, path in doc["artifacts"].items():
            assert Path(path).name.endswith(f"-fruix-native-{kind}-15.0-STABLE-local")
            assert os.readlink(bundle / "artifacts" / kind) == path
        world = Path(doc["artifacts"]["world"])
        out = subprocess.run([world / "bin" / "sh", "-c", "echo hello"], capture_output=True,
                             text=True)
        assert out.returncode == 0 and "hello" in out.stdout  # a real compiled program
        verify = run_cli("store", "verify", "--json", cwd=work, env=_clean_env(tmp_path))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        human = run_cli("native-build", "run", "--no-promote", cwd=work, env=_clean_env(tmp_path))
        assert human.returncode == 0 and "result root:" in human.stdout
    finally:
        make_tree_writable(work)


def _polluted_env(tmp_path: Path) -> dict[str, str]:
    evil = tmp_path / "evil-bin"
    evil.mkdir()
    for tool in ("cc", "gcc", "make", "bmake", "ar", "ld"):
        script = evil / tool
        script.write_text("#!/bin/sh\necho polluted tool $0 >&2\nexit 97\n")
        script.chmod(0o755)
    env = _clean_env(tmp_path)
    env.update({
        "PATH": f"{evil}:{env['PATH']}", "MAKEFLAGS": "-j77 -e CFLAGS=-DPOLLUTED",
        "CC": "false", "CXX": "false", "AR": "false", "RANLIB": "false", "NM": "false",
        "CPPFLAGS": "-DPOLLUTED=1", "CFLAGS": "-O0 -DPOLLUTED=1 -g3",
        "CXXFLAGS": "-DPOLLUTED", "LDFLAGS": "-Wl,--build-id=sha1",
        "FRUIX_DEVELOPMENT_PROFILE": "/frx/store/nope", "FRUIX_DEVELOPMENT_CC": "false",
    })
    return env


def test_polluted_environment_does_not_reach_the_build(tmp_path, fruix_workspace):
    src = copy_sample_source(tmp_path / "src")
    conf = fruix_workspace.write_config(source=src, promote=False)
    clean = run_cli("native-build", "run", "--config", str(conf), "--json",
                    cwd=fruix_workspace.root, env=_clean_env(tmp_path))
    assert clean.returncode == 0, clean.stderr
    dirty = run_cli("native-build", "run", "--config", str(conf), "--json",
                    cwd=fruix_workspace.root, env=_polluted_env(tmp_path))
    assert dirty.returncode == 0, dirty.stderr
    a = Path(json.loads(clean.stdout)["result_root"])
    b = Path(json.loads(dirty.stdout)["result_root"])
    assert _signatures(a) == _signatures(b)
    for log in (b / "logs").iterdir():
        assert "polluted tool" not in log.read_text()
    make_tree_writable(src)


def test_two_runs_in_different_directories_are_identical(tmp_path):
    docs = []
    for name in ("one", "two/deeper"):
        base = tmp_path / name
        src = copy_sample_source(base / "source-tree")
        conf = base / "fruix.toml"
        conf.write_text(f'[build]\nsource = "{src}"\n')
        proc = run_cli("native-build", "run", "--config", str(conf), "--json", cwd=base,
                       env=_clean_env(tmp_path))
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(proc.stdout))
    first, second = (Path(d["result_root"]) for d in docs)
    assert _signatures(first) == _signatures(second)
    # Same content, same policy: the same artifact identities (names), distinct bundles.
    names = [{k: Path(p).name for k, p in d["artifacts"].items()} for d in docs]
    assert names[0] == names[1]
    assert Path(docs[0]["bundle"]).name != Path(docs[1]["bundle"]).name
    make_tree_writable(tmp_path)


def test_sample_world_keeps_what_nar_cannot(tmp_path, fruix_workspace, fruix_sample_source):
    conf = fruix_workspace.write_config(source=fruix_sample_source, promote=False)
    proc = run_cli("native-build", "run", "--config", str(conf), "--json",
                   cwd=fruix_workspace.root, env=_clean_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    root = Path(json.loads(proc.stdout)["result_root"])
    world = root / "artifacts" / "world"
    # Installed unprivileged (-DNO_ROOT): the set-user-ID bit, owners and flags are in
    # the METALOG, not on the staged files.
    metalog = (root / "metalog" / "world.METALOG").read_text()
    assert " uname=root gname=wheel mode=04555 " in metalog, "the sample world has a setuid program"
    inodes = [os.lstat(p).st_ino for p in world.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(inodes) != len(set(inodes)), "the sample world has a hard-linked pair"
    assert any(p.is_symlink() for p in world.rglob("*"))


@pytest.mark.parametrize("argv", [["--help"], ["executors", "list", "--json"],
                                  ["native-build", "run", "--dry-run"]])
def test_light_commands_import_no_heavy_dependency(argv, tmp_path):
    # rich only draws the live display on a terminal; structlog must not pull it in
    # for its traceback formatting (50 ms of every command).
    code = ("import sys\nfrom fruix_core.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('paramiko', 'XenAPI', 'cryptography', 'rich')"
            " if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert "HEAVY=\n" in proc.stderr, proc.stderr


def test_unreadable_config_is_a_usage_error(tmp_path):
    conf = tmp_path / "fruix.toml"
    conf.write_text("[build]\nexecutor = 3\n")
    proc = run_cli("native-build", "run", cwd=tmp_path, env=_clean_env(tmp_path))
    assert proc.returncode == ExitCode.USAGE
    assert "fruix.toml" in proc.stderr and "'build.executor'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".fruix" / "store").exists()
    shutil.rmtree(tmp_path / ".fruix", ignore_errors=True)
