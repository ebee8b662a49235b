"""``fruix native-build prune`` and the build area a successful run leaves (none)."""

from __future__ import annotations

import json
import os

import pytest

from fruix_core.config import load_config
from fruix_core.errors import BuildFailed, ExitCode
from fruix_core.promotion.gc import pin
from fruix_core.promotion.layout import StoreLayout
from fruix_core.prune import prune_runs
from fruix_core.resultroot import ResultRoot, list_runs
from fruix_core.runner import run_build
from fruix_core.schemas import validate_document
from fruix_core.testkit import run_cli


def _runs(ws, source, count, **build):
    config = load_config(ws.write_config(source=source, **build))
    return config, [run_build(config) for _ in range(count)]


def test_a_successful_run_removes_its_build_area_unless_kept(fruix_workspace, toy_source):
    config, (outcome,) = _runs(fruix_workspace, toy_source, 1, promote=False)
    assert outcome.status == "ok"
    assert not (config.build_root / outcome.run_id).exists()
    config, (kept,) = _runs(fruix_workspace, toy_source, 1, promote=False,
                            keep_build_area=True)
    assert (config.build_root / kept.run_id).is_dir()


def test_a_failed_run_keeps_its_build_area_for_resume(fruix_workspace, toy_source):
    (toy_source / "fail-installworld").touch()
    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    with pytest.raises(BuildFailed) as info:
        run_build(config)
    assert (config.build_root / info.value.run_id).is_dir()


def test_prune_keeps_latest_the_newest_and_pinned_runs(fruix_workspace, toy_source):
    config, outcomes = _runs(fruix_workspace, toy_source, 5, keep_build_area=True)
    ids = [o.run_id for o in outcomes]
    pin(StoreLayout(config.store), outcomes[0].bundle, name="release")
    (toy_source / "fail-buildkernel").touch()
    with pytest.raises(BuildFailed) as info:
        run_build(config)
    failed = info.value.run_id

    dry = prune_runs(config, keep_last=2, dry_run=True)
    assert [r.run_id for r in dry.removed] == [ids[2], ids[1]]
    assert all((config.results / i).is_dir() for i in ids)  # a dry run removes nothing

    report = prune_runs(config, keep_last=2)
    assert [r.run_id for r in report.removed] == [ids[2], ids[1]]
    assert report.kept[ids[0]] == "pinned" and report.kept[ids[4]] == "latest"
    assert failed in report.kept and "--failed" in report.kept[failed]
    left = [r.run_id for r in list_runs(config.results)]
    assert left == [ids[0], ids[3], ids[4], failed]
    for gone in (ids[1], ids[2]):
        assert not (config.build_root / gone).exists()
    assert not [n for n in os.listdir(config.results) if n.startswith(".prune-")]

    prune_runs(config, keep_last=0, failed=True)
    assert [r.run_id for r in list_runs(config.results)] == [ids[0], ids[4]]
    verify = run_cli("store", "verify", "--store", str(config.store), cwd=fruix_workspace.root)
    assert verify.returncode == 0, verify.stdout + verify.stderr  # objects stay until gc


def test_prune_never_removes_a_running_run(fruix_workspace, toy_source):
    config, (done,) = _runs(fruix_workspace, toy_source, 1, promote=False)
    busy = ResultRoot(config.results / "20990101T000000Z")
    busy.create()  # "running pid=<this process>": alive
    report = prune_runs(config, keep_last=0, failed=True)
    assert report.kept[busy.run_id] == "running"
    assert busy.path.is_dir()


def test_prune_does_not_follow_a_run_that_is_a_symlink(fruix_workspace, toy_source, tmp_path):
    config, _ = _runs(fruix_workspace, toy_source, 1, promote=False)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    os.symlink(victim, config.results / "20000101T000000Z")
    prune_runs(config, keep_last=0, failed=True)
    assert (victim / "precious").read_text() == "keep me"


def test_prune_cli_json_and_bad_input(fruix_workspace, toy_source):
    config, outcomes = _runs(fruix_workspace, toy_source, 2, promote=False)
    cfg = str(fruix_workspace.root / "fruix.toml")
    proc = run_cli("native-build", "prune", "--keep-last", "0", "--json", "--config", cfg,
                   cwd=fruix_workspace.root)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "fruix.prune/1"
    validate_document(doc)
    assert [r["run_id"] for r in doc["removed"]] == [outcomes[0].run_id]
    assert doc["kept"] == {outcomes[1].run_id: "latest"}
    bad = run_cli("native-build", "prune", "--keep-last", "-1", "--config", cfg,
                  cwd=fruix_workspace.root)
    assert bad.returncode == ExitCode.USAGE
    assert bad.stderr.count("\n") == 1 and "--keep-last" in bad.stderr
