"""Every ``--json`` command's real output validates against its schema, in success and in
failure (one document on stdout, also when the command fails)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import structlog

from fruix_core.errors import ExitCode
from fruix_core.schemas import validate_document
from fruix_core.testkit import run_cli

from .conftest import SampleRuns


def _document(proc: subprocess.CompletedProcess[str], schema: str,
              code: int = ExitCode.OK) -> dict[str, object]:
    assert proc.returncode == code, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)  # exactly one document: json.loads refuses trailing text
    assert doc["schema"] == schema
    validate_document(doc)
    return doc


def test_run_documents_validate(sample_runs: SampleRuns):
    for doc in (sample_runs.first, sample_runs.second):
        assert doc["schema"] == "fruix.run/1" and doc["ok"] is True
        validate_document(doc)


def test_show_latest_has_phase_durations_and_the_bundle(sample_runs: SampleRuns):
    doc = _document(sample_runs.cli("native-build", "show", "latest", "--json"),
                    "fruix.run-record/1")
    assert doc["run_id"] == sample_runs.second["run_id"]
    assert doc["bundle"] == sample_runs.second["bundle"]
    assert doc["artifacts"] == sample_runs.second["artifacts"]
    phases = doc["phases"]
    assert [p["name"] for p in phases] == ["buildworld", "buildkernel", "installworld",
                                           "distribution", "installkernel"]
    for phase in phases:
        assert isinstance(phase["seconds"], float) and phase["seconds"] >= 0
        assert phase["timing"] == "metadata" and phase["started"].endswith("Z")
        assert Path(phase["log"]).is_file()
    assert doc["logs"] == [p["log"] for p in phases]
    # Metadata values keep their types; the file stays key=value text.
    meta = doc["metadata"]
    assert isinstance(meta["build_jobs"], int) and isinstance(meta["size_world"], int)
    assert isinstance(meta["run_seconds"], float)
    assert isinstance(meta["phase_buildworld_seconds"], float)
    assert meta["bundle"] == doc["bundle"] and isinstance(meta["base_version"], str)
    text = (Path(doc["result_root"]) / "metadata").read_text()
    assert f"bundle={doc['bundle']}\n" in text
    assert f"artifact_world={doc['artifacts']['world']}\n" in text


def test_list_and_store_documents_validate(sample_runs: SampleRuns):
    listed = _document(sample_runs.cli("native-build", "list", "--json"), "fruix.run-list/1")
    ids = [r["run_id"] for r in listed["runs"]]
    assert ids.index(sample_runs.first["run_id"]) < ids.index(sample_runs.second["run_id"])
    assert all(r["seconds"] is None or r["seconds"] >= 0 for r in listed["runs"])
    _document(sample_runs.cli("native-build", "prune", "--dry-run", "--json"), "fruix.prune/1")
    _document(sample_runs.cli("store", "roots", "--json"), "fruix.store-roots/1")
    gc = _document(sample_runs.cli("store", "gc", "--dry-run", "--json"), "fruix.store-gc/1")
    assert gc["dry_run"] is True
    verified = _document(sample_runs.cli("store", "verify", "--json"), "fruix.store-verify/1")
    assert verified["ok"] is True and sample_runs.second["bundle"] in verified["checked"]
    _document(sample_runs.cli("config", "check", "--json"), "fruix.config-check/1")
    plugins = _document(run_cli("executors", "list", "--json", cwd=sample_runs.workspace.root),
                        "fruix.plugin-list/1")
    assert "local" in {p["name"] for p in plugins["plugins"]}


def test_promote_pin_gc_and_a_failed_verify_in_a_store_of_their_own(sample_runs: SampleRuns,
                                                                    tmp_path: Path):
    store = tmp_path / "store"
    root = sample_runs.first["result_root"]
    dry = _document(sample_runs.cli("native-build", "promote", root, "--store", str(store),
                                    "--dry-run", "--json"), "fruix.promote/1")
    assert dry["dry_run"] is True and not store.exists()
    done = _document(sample_runs.cli("native-build", "promote", root, "--store", str(store),
                                     "--json"), "fruix.promote/1")
    assert len(done["published"]) == 5
    pinned = _document(sample_runs.cli("store", "pin", done["bundle"], "--name", "keep",
                                       "--store", str(store), "--json"), "fruix.store-pin/1")
    assert pinned["name"] == "keep"
    roots = _document(sample_runs.cli("store", "roots", "--store", str(store), "--json"),
                      "fruix.store-roots/1")
    assert ("pin", "keep") in {(r["kind"], r["name"]) for r in roots["roots"]}
    _document(sample_runs.cli("store", "pin", "keep", "--remove", "--store", str(store),
                              "--json"), "fruix.store-pin/1")
    _document(sample_runs.cli("store", "gc", "--store", str(store), "--json"),
              "fruix.store-gc/1")
    # A changed file: verify's own document, ok false, exit 4.
    world = Path(done["artifacts"]["world"])
    target = world / "etc" / "motd"
    os.chmod(world / "etc", 0o755)
    os.chmod(target, 0o644)
    target.write_text("tampered\n")
    bad = _document(sample_runs.cli("store", "verify", "--store", str(store), "--json"),
                    "fruix.store-verify/1", ExitCode.VERIFICATION)
    assert bad["ok"] is False and bad["problems"]


#: One failure of each --json command: (arguments, exit code). ``{root}`` is a result root.
FAILURES = [
    (["native-build", "run", "--executor", "no-such-executor"], ExitCode.USAGE),
    (["native-build", "show", "no-such-run"], ExitCode.USAGE),
    (["native-build", "list", "--config", "/no/such/fruix.toml"], ExitCode.USAGE),
    (["native-build", "promote", "{root}/logs"], ExitCode.USAGE),
    (["native-build", "prune", "--keep-last", "-1"], ExitCode.USAGE),
    (["native-build", "report", "--limit", "0"], ExitCode.USAGE),
    (["store", "verify", "no-such-object"], ExitCode.USAGE),
    (["store", "gc", "--keep-last", "-1"], ExitCode.USAGE),
    (["store", "pin", "no-such-object"], ExitCode.USAGE),
    (["store", "roots", "--keep-last", "-1"], ExitCode.USAGE),
    (["store", "diff", "no-such-run", "latest"], ExitCode.USAGE),
    (["config", "check", "--config", "{bad_config}"], ExitCode.USAGE),
    (["guests", "release"], ExitCode.USAGE),
]


@pytest.mark.parametrize(("argv", "code"), FAILURES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else str(v))
def test_a_failing_command_prints_one_error_document(sample_runs: SampleRuns, tmp_path: Path,
                                                     argv: list[str], code: int):
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[build]\nexecutor = 5\n")
    argv = [a.format(root=sample_runs.first["result_root"], bad_config=bad_config)
            for a in argv]
    if "--config" in argv:  # its own config, not the runs'
        proc = run_cli(*argv, "--json", cwd=sample_runs.workspace.root)
    else:
        proc = sample_runs.cli(*argv, "--json")
    doc = _document(proc, "fruix.error/1", code)
    assert doc["ok"] is False and doc["exit_code"] == code
    assert doc["command"] == " ".join(argv[:2])
    assert proc.stderr.splitlines()[-1] == f"fruix: error: {doc['error']}"
    assert "Traceback" not in proc.stderr


def test_a_failed_promotion_names_its_result_root(sample_runs: SampleRuns, tmp_path: Path):
    root = tmp_path / "20260101T000000Z"
    (root / "logs").mkdir(parents=True)  # no promotion.scm, no artifacts
    doc = _document(sample_runs.cli("native-build", "promote", str(root), "--json"),
                    "fruix.error/1", ExitCode.USAGE)
    assert doc["result_root"] == str(root) and doc["run_id"] == root.name


def test_a_failed_check_is_the_checks_own_document(tmp_path: Path):
    doc = _document(run_cli("executors", "check", "no-such-executor", "--json", cwd=tmp_path),
                    "fruix.executor-check/1", ExitCode.BUILD_FAILED)
    assert doc["ok"] is False and not doc["checks"][0]["ok"]


def test_argparse_usage_errors_stay_on_stderr(tmp_path: Path):
    proc = run_cli("native-build", "show", "--json", cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE and proc.stdout == ""
    assert "usage:" in proc.stderr


@pytest.mark.parametrize(("fault", "code", "error"), [
    (RuntimeError("boom"), ExitCode.INFRASTRUCTURE, "internal error: RuntimeError: boom"),
    (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted"),
])
def test_our_own_bugs_and_interrupts_still_print_one_document(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        fault: BaseException, code: int, error: str):
    from fruix_core.cli import main as cli

    def dispatch(_args: object) -> int:
        raise fault

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    saved = structlog.get_config()  # main configures logging for this process
    try:
        assert cli.main(["store", "roots", "--json"]) == code
    finally:
        structlog.configure(**saved)
    out, err = capsys.readouterr()
    doc = json.loads(out)
    validate_document(doc)
    assert doc == {"schema": "fruix.error/1", "ok": False, "command": "store roots",
                   "error": error, "exit_code": code, "run_id": None, "result_root": None}
    assert "Traceback" not in err
