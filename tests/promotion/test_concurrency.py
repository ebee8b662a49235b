"""Many processes promoting one result root at once; kill -9 at random moments."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
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


def test_kill_9_at_random_moments(tmp_path: Path) -> None:
    root = build_result_root(tmp_path / "root", extra=_with_many_files)
    rng = random.Random(20261125)
    # How long an undisturbed promotion takes here, to spread the kills over it.
    probe = _child(root, tmp_path / "probe-store")
    assert probe.stdout is not None and probe.stdout.readline()
    started = time.monotonic()
    probe.communicate("go\n", timeout=240)
    duration = time.monotonic() - started
    moments: list[float] = []
    interrupted = 0
    for attempt in range(20):
        store = tmp_path / f"store-{attempt % 4}"
        child = _child(root, store)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert child.stdin is not None
        delay = rng.uniform(0, duration * 1.1)
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        moments.append(delay)
        if store.exists():
            # Whatever exists under a final name is complete.
            _final_objects_complete(store)
            interrupted += bool(_temporaries(store))
    assert len(set(moments)) == 20
    assert interrupted >= 3, "too few kills landed mid-promotion to mean anything"
    for index in range(4):
        store = tmp_path / f"store-{index}"
        outcome = promote(root, store)
        assert _temporaries(store) == []
        _final_objects_complete(store)
        assert outcome.bundle.is_dir()
