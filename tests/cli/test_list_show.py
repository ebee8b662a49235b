"""``native-build list`` and ``show`` on result roots as runs leave them: header, aligned
columns (``...Z-1`` ids too), timings, phases in build order, typed metadata."""

from __future__ import annotations

import json
from pathlib import Path

from fruix_core.schemas import validate_document
from fruix_core.testkit import Workspace, run_cli

FAILED = ("phases=buildworld,buildkernel,installworld,distribution,installkernel\n"
          "executor=local\nstarted=2026-04-05T15:03:59Z\nrun_seconds=4210.5\nbuild_jobs=8\n"
          "size_world=notanumber\n"
          # written out of order on purpose: show follows the build order
          "phase_buildkernel_started=2026-04-05T16:08:59Z\nphase_buildkernel_seconds=310.25\n"
          "phase_buildworld_started=2026-04-05T15:03:59Z\nphase_buildworld_seconds=3900\n")


def _run(results: Path, run_id: str, status: str, metadata: str) -> Path:
    root = results / run_id
    (root / "logs").mkdir(parents=True)
    (root / "status").write_text(status + "\n")
    (root / "metadata").write_text(metadata)
    for phase in ("installworld", "buildkernel", "buildworld"):
        (root / "logs" / f"{phase}.log").write_text("line\n")
    return root


def _workspace(tmp_path: Path) -> tuple[Workspace, Path]:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    config = ws.write_config()
    _run(ws.results, "20260405T150359Z", "failed buildkernel", FAILED)
    _run(ws.results, "20260405T150359Z-1", "ok",
         "executor=local\nstarted=2026-04-05T15:03:59Z\nrun_seconds=65\n")
    return ws, config


def test_list_has_a_header_and_aligned_columns(tmp_path: Path):
    ws, config = _workspace(tmp_path)
    proc = run_cli("native-build", "list", "--config", str(config), cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["RUN", "ID", "STARTED", "(UTC)", "DURATION", "STATUS",
                                "EXECUTOR"]
    assert lines[1].split() == ["20260405T150359Z", "2026-04-05", "15:03:59", "1h10m",
                                "failed", "(buildkernel)", "local"]
    assert lines[2].split() == ["20260405T150359Z-1", "2026-04-05", "15:03:59", "1m05s",
                                "ok", "local"]
    for column in ("STARTED", "DURATION", "STATUS", "EXECUTOR"):
        at = lines[0].index(column)
        assert all(line[at - 2:at] == "  " and line[at] != " " for line in lines[1:]), column


def test_show_gives_phases_in_build_order_and_typed_metadata(tmp_path: Path):
    ws, config = _workspace(tmp_path)
    proc = run_cli("native-build", "show", "20260405T150359Z", "--config", str(config),
                   "--json", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    validate_document(doc)
    assert doc["status"] == "failed" and doc["failed_phase"] == "buildkernel"
    assert [(p["name"], p["seconds"]) for p in doc["phases"][:2]] == [
        ("buildworld", 3900.0), ("buildkernel", 310.25)]
    assert [Path(p).name for p in doc["logs"]] == ["buildworld.log", "buildkernel.log",
                                                    "installworld.log"]
    assert doc["metadata"]["build_jobs"] == 8 and doc["metadata"]["run_seconds"] == 4210.5
    assert doc["metadata"]["size_world"] is None  # does not parse: not trusted
    assert doc["bundle"] is None and doc["artifacts"] == {} and doc["guest"] is None
    text = run_cli("native-build", "show", "20260405T150359Z", "--config", str(config),
                   cwd=ws.root).stdout
    phases = text.split("phases:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in phases[:3]] == ["buildworld", "buildkernel",
                                                         "installworld"]
    assert "1h05m" in phases[0] and "bundle       not promoted" in text
