"""Many processes promoting one result root at once; kill -9 at named points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fruix_core.promotion import promote, verify
from fruix_core.promotion.layout import OBJECT_NAME_RE

from .conftest import build_result_root

CHILD = r"""
import json, sys
from pathlib import Path
from structlog.testing import capture_logs
from fruix_core.promotion import promote
print("ready", flush=True)
sys.stdin.readline()
with capture_logs():
    outcome = promote(Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps({"bundle": str(outcome.bundle),
                  "artifacts": {k: str(v) for k, v in outcome.artifacts.items()}}), flush=True)
"""


def _child(root: Path, store: Path) -> subprocess.Popen:
    env = {**os.environ, "FRUIX_STORE_FSYNC": "none"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(store)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _with_many_files(root: Path) -> None:
    lib = root / "artifacts/world/usr/lib"
    lib.mkdir(parents=True, exist_ok=True)
    for i in range(300):
        (lib / f"lib{i:03d}.so").write_bytes(f"library {i}\n".encode() * (i + 1))
    (lib / "libbig.so").write_bytes(os.urandom(5 << 20))


def _temporaries(store: Path) -> list[str]:
    return [n for n in os.listdir(store) if n.startswith(".tmp-")]


def test_six_processes_promote_one_root(tmp_path: Path) -> None:
    root = build_result_root(tmp_path / "root", extra=_with_many_files)
    store = tmp_path / "store"
    children = [_child(root, store) for _ in range(6)]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:  # release them together
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    assert all(result == results[0] for result in results)
    assert _temporaries(store) == []
    assert len([n for n in os.listdir(store) if OBJECT_NAME_RE.match(n)]) == 5
    assert verify(store).ok


def _final_objects_complete(store: Path) -> None:
    report = verify(store)
    assert report.ok, report.problems


#: A promoter that SIGKILLs itself the ``nth`` time it reaches the named point.
KILLED_AT = r"""
import os, signal, sys
from pathlib import Path
from structlog.testing import capture_logs
from fruix_core.promotion import promote, seams
point, nth = sys.argv[3], int(sys.argv[4])
seen = []
def kill(detail):
    seen.append(detail)
    if len(seen) == nth:
        os.kill(os.getpid(), signal.SIGKILL)
with capture_logs(), seams.installed(point, kill):
    promote(Path(sys.argv[1]), Path(sys.argv[2]))
print("not killed", flush=True)
"""

#: Where a promotion is killed: early, middle and late in the walk that reads and
#: ingests the files (the tree has 300 libraries and a 5 MiB one), after validation,
#: and with every object prepared but none published.
KILL_POINTS = [("walk.before-open", 1), ("walk.reading", 1), ("walk.reading", 40),
               ("walk.reading", 150), ("walk.reading", 290), ("walk.before-open", 320),
               ("promote.validated", 1), ("promote.before-publish", 1)]


def test_kill_9_at_named_points(tmp_path: Path) -> None:
    """A promotion killed at each named point leaves only complete objects under final
    names, and the next promotion into the same store completes and cleans up.

    Deterministic: each child kills itself at a named point of the engine (seams),
    never after a sleep.
    """
    root = build_result_root(tmp_path / "root", extra=_with_many_files)
    env = {**os.environ, "FRUIX_STORE_FSYNC": "none"}
    store = tmp_path / "store"
    interrupted = 0
    for point, nth in KILL_POINTS:
        done = subprocess.run([sys.executable, "-c", KILLED_AT, str(root), str(store), point,
                               str(nth)], capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == -signal.SIGKILL, (point, nth, done.stdout, done.stderr)
        if store.exists():
            _final_objects_complete(store)  # whatever exists under a final name is complete
            interrupted += bool(_temporaries(store))
    # The walk kills each left the ingestion's temporaries behind: the cleanup is tested.
    assert interrupted >= 4
    outcome = promote(root, store)
    assert _temporaries(store) == []
    _final_objects_complete(store)
    assert outcome.bundle.is_dir()
