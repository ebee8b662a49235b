"""``fruix store gc``: roots, reachability, dry runs, pins, concurrency and ``kill -9``."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fruix_core.errors import UsageError
from fruix_core.promotion import PromotionOutcome, promote, seams, verify
from fruix_core.promotion.gc import collect_garbage, pin, unpin
from fruix_core.promotion.layout import OBJECT_NAME_RE, StoreLayout

from .conftest import build_result_root, sample_promotion


def _run(results: Path, n: int, *, status: str = "ok\n") -> Path:
    run_id = f"2026-11-29T10{n:02d}00Z-{n}"
    root = build_result_root(results / run_id, salt=f"run {n}".encode(),
                             promotion=sample_promotion(run_id=run_id))
    (root / "status").write_text(status)
    return root


def _latest(results: Path, root: Path) -> None:
    fresh = results / ".latest-new"
    os.symlink(root.name, fresh)
    os.rename(fresh, results / "latest")


def _objects(store: Path) -> set[str]:
    return {n for n in os.listdir(store) if OBJECT_NAME_RE.match(n)}


def _closure(outcome: PromotionOutcome) -> set[str]:
    return {outcome.bundle.name, *(p.name for p in outcome.artifacts.values())}


def _fruix(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FRUIX_STORE_FSYNC": "none"}
    return subprocess.run([sys.executable, "-m", "fruix_core.cli.main", *args],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def history(tmp_path: Path, store: Path) -> tuple[Path, list[PromotionOutcome]]:
    """Five promoted runs in one results directory; ``latest`` is the fifth."""
    results = tmp_path / "results"
    outcomes = []
    for n in range(1, 6):
        root = _run(results, n)
        outcomes.append(promote(root, store))
        _latest(results, root)
    return results, outcomes


def test_keep_last_keeps_latest_and_recent_runs(history, store: Path) -> None:
    _results, outcomes = history
    layout = StoreLayout(store)
    everything = _objects(store)
    kept = set().union(*(_closure(o) for o in outcomes[3:]))
    dry = collect_garbage(layout, keep_last=2, dry_run=True)
    assert _objects(store) == everything, "a dry run deletes nothing"
    assert {p.name for p in dry.deleted} == everything - kept
    done = _fruix("store", "gc", "--store", str(store), "--keep-last", "2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {Path(p).name for p in report["deleted"]} == everything - kept
    assert report["bytes_freed"] == dry.bytes_freed > 0
    assert report["pool_entries"] == dry.pool_entries > 0
    assert _objects(store) == kept
    assert verify(store).ok
    # Every pool entry left is linked by some object.
    for entry in os.listdir(layout.links):
        assert os.lstat(layout.links / entry).st_nlink > 1
    # Lock files of deleted objects go too; the GC lock stays.
    locks = set(os.listdir(layout.locks))
    assert locks <= {"gc.lock"} | {f"{name}.lock" for name in kept}
    again = collect_garbage(layout, keep_last=2)
    assert again.deleted == [] and again.bytes_freed == 0


def test_latest_is_a_root_even_when_keep_last_is_zero(history, store: Path) -> None:
    _results, outcomes = history
    collect_garbage(StoreLayout(store), keep_last=0)
    assert _objects(store) == _closure(outcomes[-1])


def test_failed_and_removed_runs_are_no_roots(history, store: Path) -> None:
    results, outcomes = history
    (results / os.readlink(results / "latest") / "status").write_text("failed installworld\n")
    os.unlink(results / "latest")
    shutil.rmtree(results / sorted(os.listdir(results))[3])  # run 4 removed by hand
    collect_garbage(StoreLayout(store), keep_last=2)
    # Run 5 failed, run 4 is gone: the two most recent successful runs are 3 and 2.
    assert _objects(store) == _closure(outcomes[2]) | _closure(outcomes[1])


def test_pins_are_roots(history, store: Path) -> None:
    _results, outcomes = history
    layout = StoreLayout(store)
    done = _fruix("store", "pin", str(outcomes[0].bundle), "--name", "release-1",
                  "--store", str(store))
    assert done.returncode == 0, done.stderr
    pin(layout, outcomes[1].artifacts["kernel"].name)
    listed = _fruix("store", "roots", "--store", str(store), "--json")
    kinds = {(r["kind"], Path(r["target"]).name) for r in json.loads(listed.stdout)["roots"]}
    assert ("pin", outcomes[0].bundle.name) in kinds
    assert ("latest", outcomes[4].bundle.name) in kinds
    collect_garbage(layout, keep_last=0)
    assert _objects(store) == (_closure(outcomes[0]) | _closure(outcomes[4])
                               | {outcomes[1].artifacts["kernel"].name})
    unpin(layout, "release-1")
    collect_garbage(layout, keep_last=0)
    assert outcomes[0].bundle.name not in _objects(store)
    assert verify(store).ok


@pytest.mark.parametrize("target,message", [("nothing-here", "no such store object"),
                                            ("/etc", "not an object of the store")])
def test_pin_refuses_what_is_not_an_object(history, store: Path, target: str,
                                           message: str) -> None:
    with pytest.raises(UsageError, match=message):
        pin(StoreLayout(store), target)


def test_a_promotion_in_progress_holds_the_collector_off(tmp_path: Path, store: Path) -> None:
    results = tmp_path / "results"
    promote(_run(results, 1), store)
    layout = StoreLayout(store)
    blocked = []

    def try_collect(_detail: bytes) -> None:
        fd = os.open(layout.gc_lock, os.O_RDWR)
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            blocked.append(True)
        finally:
            os.close(fd)

    root = _run(results, 2)
    with seams.installed("promote.before-publish", try_collect):
        outcome = promote(root, store)
    assert blocked == [True], "the collector must wait for a promotion in progress"
    _latest(results, root)
    collect_garbage(layout, keep_last=0)
    assert _closure(outcome) <= _objects(store)


KILLER = r"""
import os, signal, sys
from pathlib import Path
from fruix_core.promotion import seams
from fruix_core.promotion.gc import collect_garbage
from fruix_core.promotion.layout import StoreLayout
point, nth = sys.argv[2], int(sys.argv[3])
seen = []
def die(_detail):
    seen.append(1)
    if len(seen) == nth:
        os.kill(os.getpid(), signal.SIGKILL)
with seams.installed(point, die):
    collect_garbage(StoreLayout(Path(sys.argv[1])), keep_last=1)
"""


@pytest.mark.parametrize("point,nth", [("gc.deleting", 1), ("gc.trashed", 1),
                                       ("gc.trashed", 3)])
def test_collector_killed_at_a_named_point(history, store: Path, point: str,
                                           nth: int) -> None:
    _results, outcomes = history
    kept = _closure(outcomes[4])  # keep_last=1: the latest run is the last successful one
    done = subprocess.run([sys.executable, "-c", KILLER, str(store), point, str(nth)],
                          capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert kept <= _objects(store), "rooted objects survive any kill"
    # No half-deleted object is visible under its name.
    for name in _objects(store):
        assert verify(store, [name]).ok or name not in kept
    collect_garbage(StoreLayout(store), keep_last=1)
    assert _objects(store) == kept
    assert not [n for n in os.listdir(store) if n.startswith(".trash-")]
    assert verify(store).ok


PROMOTER = r"""
import sys
from pathlib import Path
from structlog.testing import capture_logs
from fruix_core.promotion import promote
with capture_logs():
    promote(Path(sys.argv[1]), Path(sys.argv[2]))
print("done", flush=True)
"""

COLLECTOR = r"""
import sys
from pathlib import Path
from structlog.testing import capture_logs
from fruix_core.promotion.gc import collect_garbage
from fruix_core.promotion.layout import StoreLayout
with capture_logs():
    while True:
        collect_garbage(StoreLayout(Path(sys.argv[1])), keep_last=10)
        print("pass", flush=True)
"""


def test_four_promoters_and_a_collector_killed_at_random(tmp_path: Path, store: Path) -> None:
    results = tmp_path / "results"
    old = [promote(_run(results, n), store) for n in (1, 2)]
    roots = [_run(results, n) for n in range(3, 7)]
    env = {**os.environ, "FRUIX_STORE_FSYNC": "none"}
    rng = random.Random(12)
    promoters = [subprocess.Popen([sys.executable, "-c", PROMOTER, str(r), str(store)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env) for r in roots]
    kills = 0
    while any(p.poll() is None for p in promoters) or kills < 3:
        collector = subprocess.Popen([sys.executable, "-c", COLLECTOR, str(store)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        assert collector.stdout is not None
        for _ in range(rng.randint(0, 2)):  # let it finish a pass or two, then kill it
            if collector.stdout.readline() != "pass\n":
                break
        collector.send_signal(signal.SIGKILL)
        collector.wait()
        kills += 1
    for promoter in promoters:
        out, err = promoter.communicate(timeout=300)
        assert promoter.returncode == 0, err
        assert out == "done\n"
    collect_garbage(StoreLayout(store), keep_last=10)
    report = verify(store)
    assert report.ok, report.problems
    for root in roots:
        again = promote(root, store)
        assert not again.published, "every rooted object is present"
    for outcome in old:
        assert _closure(outcome) <= _objects(store)
