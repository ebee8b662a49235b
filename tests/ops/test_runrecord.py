"""Reading a run's timings back: the runner's keys, log times, and values not to trust."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from fruix_core.resultroot import ResultRoot
from fruix_core.runrecord import read_run


def _root(tmp_path: Path, run_id: str, metadata: str, status: str = "ok") -> ResultRoot:
    path = tmp_path / run_id
    (path / "logs").mkdir(parents=True)
    (path / "status").write_text(status + "\n")
    (path / "metadata").write_text(metadata)
    return ResultRoot(path)


def test_runner_keys_are_read_in_phase_order(tmp_path: Path):
    root = _root(tmp_path, "20260101T000000Z",
                 "started=2026-01-01T00:00:00Z\nfinished=2026-01-01T00:02:00Z\n"
                 "run_seconds=120.5\nphases=buildworld,buildkernel\n"
                 "phase_buildkernel_started=2026-01-01T00:01:30Z\n"
                 "phase_buildkernel_finished=2026-01-01T00:01:50Z\n"
                 "phase_buildworld_started=2026-01-01T00:00:00Z\n"
                 "phase_buildworld_finished=2026-01-01T00:01:30Z\n"
                 "phase_buildworld_seconds=90.25\n")
    record = read_run(root)
    assert [(p.name, p.seconds, p.timing) for p in record.phases] == [
        ("buildworld", 90.25, "metadata"), ("buildkernel", 20.0, "metadata")]
    assert record.seconds == 120.5
    assert record.started == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_values_that_do_not_parse_are_ignored_not_trusted(tmp_path: Path):
    root = _root(tmp_path, "20260101T000000Z-2",
                 "phases=buildworld,../../x,buildkernel\nrun_seconds=nan\n"
                 "phase_buildworld_seconds=-5\nphase_buildworld_started=yesterday\n"
                 "phase_buildkernel_seconds=1e400\nstarted=__import__('os')\n",
                 status="failed buildkernel")
    log = root.log_path("buildworld")
    log.write_text("x\n")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    os.utime(log, (start + 7, start + 7))
    record = read_run(root)
    names = [p.name for p in record.phases]
    assert "../../x" not in names
    world = record.phases[0]
    # Every timing value is unusable, so the log's time tells (from the run id's stamp,
    # a -N suffix allowed); nothing crashes, nothing is evaluated.
    assert (world.name, world.seconds, world.timing) == ("buildworld", 7.0, "log-times")
    assert record.started == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert all(p.seconds is None or p.seconds >= 0 for p in record.phases)
