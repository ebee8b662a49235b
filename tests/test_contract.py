"""The checked hook boundary and the core's provenance, with installed (fake) plugin distributions.

Every plugin here is a real distribution on ``sys.path`` (a module and its
``.dist-info``), found through its entry point like any installed plugin.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from fruix_core.config import load_config
from fruix_core.errors import (
    ExitCode,
    PluginContractError,
    PluginLoadError,
    ProvenanceError,
    UnknownPluginError,
)
from fruix_core.plugins import discover, load
from fruix_core.resultroot import list_runs
from fruix_core.runner import run_build
from fruix_core.schemas import validate_document
from fruix_core.testkit import run_cli, without_progress


def _config(ws, source):
    return load_config(ws.write_config(source=source))


def _run(ws, source, name):
    return run_build(_config(ws, source), executor=name)


def test_plugins_are_registered_under_their_entry_point_names():
    from fruix_core.plugins import make_plugin_manager

    local = load("executor", "local")
    assert (local.name, local.distribution) == ("local", "fruix-executor-local")
    pm = make_plugin_manager(local)
    assert pm.pm.get_plugin("local") is local.plugin
    assert pm.pm.get_name(local.plugin) == "local"


def test_a_wrong_return_type_names_plugin_distribution_and_hook(
        broken_plugins, fruix_workspace, toy_source):
    with pytest.raises(PluginContractError) as info:
        _run(fruix_workspace, toy_source, "returns-dict")
    message = str(info.value)
    assert message == ("executor plugin 'returns-dict' (fruix-test-returns-dict 1.2.3): "
                       "fruix_prepare_env returned a dict; it must return a PreparedEnv")
    assert info.value.stage == "prepare" and info.value.run_id
    (root,) = list_runs(fruix_workspace.results)
    assert str(root.status()) == "failed (prepare)"


def test_none_is_a_wrong_answer_too(broken_plugins, fruix_workspace, toy_source):
    with pytest.raises(PluginContractError,
                       match=r"'returns-none' \(fruix-test-returns-none 1.2.3\): "
                             r"fruix_stage_artifacts returned nothing \(None\)"):
        _run(fruix_workspace, toy_source, "returns-none")
    (root,) = list_runs(fruix_workspace.results)
    assert str(root.status()) == "failed (stage)"


def test_a_foreign_exception_in_a_hook_is_named(broken_plugins, fruix_workspace, toy_source):
    with pytest.raises(PluginContractError,
                       match=r"'crashes' .*: fruix_run_phase raised AttributeError"):
        _run(fruix_workspace, toy_source, "crashes")
    (root,) = list_runs(fruix_workspace.results)
    assert str(root.status()) == "failed (buildworld)"


def test_an_invalid_hookimpl_is_refused_at_load_before_any_result_root(
        broken_plugins, fruix_workspace, toy_source):
    with pytest.raises(PluginLoadError) as info:
        _run(fruix_workspace, toy_source, "extra-arg")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("executor plugin 'extra-arg' (fruix-test-extra-arg 1.2.3) has "
                              "an invalid hook implementation")
    assert "extra" in message and "fruix_prepare_env" in message
    assert list_runs(fruix_workspace.results) == []


def test_another_plugin_api_version_is_refused_naming_both(broken_plugins):
    with pytest.raises(PluginLoadError, match="targets plugin API 99, but this core offers "
                                              "plugin API 1"):
        load("executor", "api-99")
    with pytest.raises(PluginLoadError, match="declares no plugin API version"):
        load("executor", "no-api")


@pytest.mark.parametrize(("name", "claim"), [
    ("impostor", "executor 'local', but this run's executor is 'impostor'"),
    ("old-version", "executor-version '0.0.1', but fruix-test-old-version is version '1.2.3'"),
])
def test_a_promotion_naming_another_executor_is_refused_and_nothing_published(
        broken_plugins, fruix_workspace, toy_source, name, claim):
    with pytest.raises(ProvenanceError) as info:
        _run(fruix_workspace, toy_source, name)
    assert info.value.exit_code == ExitCode.USAGE
    assert claim in str(info.value) and f"'{name}' (fruix-test-{name} 1.2.3)" in str(info.value)
    assert not fruix_workspace.store.exists() or not any(fruix_workspace.store.iterdir())
    (root,) = list_runs(fruix_workspace.results)
    assert str(root.status()) == "failed (emit)"
    assert not (fruix_workspace.results / "latest").exists()


def test_another_result_root_is_refused(broken_plugins, fruix_workspace, toy_source):
    with pytest.raises(ProvenanceError, match="handed back .*elsewhere, not the result root "
                                              "the core reserved"):
        _run(fruix_workspace, toy_source, "other-root")
    assert not fruix_workspace.store.exists() or not any(fruix_workspace.store.iterdir())


def test_provenance_comes_from_the_entry_point_and_distribution(fruix_workspace, toy_source):
    from importlib.metadata import version

    outcome = run_build(_config(fruix_workspace, toy_source))
    metadata = (outcome.result_root / "metadata").read_text()
    assert "executor=local\n" in metadata
    assert f"executor_version={version('fruix-executor-local')}\n" in metadata
    assert "executor_distribution=fruix-executor-local\n" in metadata
    assert f"core_version={version('fruix-core')}\n" in metadata
    assert outcome.executor_version == version("fruix-executor-local")
    assert outcome.status == "ok"
    for phase in ("buildworld", "installkernel"):
        assert f"phase_{phase}_started=" in metadata and f"phase_{phase}_seconds=" in metadata
    assert "started=" in metadata and "finished=" in metadata


def test_the_cli_json_document_is_complete_for_a_contract_error(broken_plugins, tmp_path,
                                                                 fruix_workspace, toy_source):
    conf = fruix_workspace.write_config(source=toy_source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(broken_plugins / "returns-dict"), os.environ.get("PYTHONPATH", "")]))
    proc = run_cli("native-build", "run", "--config", str(conf), "--executor", "returns-dict",
                   "--json", cwd=tmp_path, env=env)
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    doc = json.loads(proc.stdout)
    validate_document(doc)
    assert doc["schema"] == "fruix.error/1" and doc["command"] == "native-build run"
    assert doc["status"] == "failed" and doc["phase"] == "prepare"
    assert doc["run_id"] and doc["result_root"]
    assert "fruix-test-returns-dict" in doc["error"] and "fruix_prepare_env" in doc["error"]
    # The line saying where the run stands and how to resume it, and the error.
    where, error = without_progress(proc.stderr)
    assert "Traceback" not in proc.stderr and error.startswith("fruix: error: ")
    assert where.startswith(f"fruix: run {doc['run_id']} failed in prepare; resume with: ")


def test_executors_list_marks_plugins_that_fail_to_validate(broken_plugins):
    infos = {i.name: i for i in discover(["executor"])}
    assert "invalid hook implementation" in infos["extra-arg"].error
    assert "plugin API 99" in infos["api-99"].error
    assert infos["returns-dict"].error is None  # its answers are checked when it runs
    assert infos["local"].api_version == 1


def test_blocked_plugins_are_never_imported(broken_plugins, monkeypatch):
    monkeypatch.setenv("FRUIX_BLOCK_PLUGINS", "crashes,returns-dict")
    names = {i.name for i in discover()}
    assert "crashes" not in names and "impostor" in names
    assert "fruix_test_crashes" not in sys.modules
    with pytest.raises(UnknownPluginError):
        load("executor", "returns-dict")
    assert "fruix_test_returns_dict" not in sys.modules
