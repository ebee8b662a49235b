"""The default pool check (``stat``): what a content-pool entry must be to be linked.

A pool entry is linked into a new object only when the inode linked is a
regular file of the content's size with the canonical mode (``0444`` or
``0555``) and time (1), checked on the new link itself. Its bytes are not
read: the pool is the store's own, and ``fruix store verify`` hashes every
entry. This is what Nix does with its ``.links`` directory: on a hit it
compares the entry's size only, and re-hashes it only when repairing
(``src/libstore/optimise-store.cc``: "removing corrupted link" when
``st.st_size != stLink.st_size``). ``FRUIX_STORE_POOL_CHECK=content`` reads
the bytes too (``test_pool_compare.py``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from fruix_core.errors import UsageError
from fruix_core.promotion import PromotionOutcome, promote, verify
from fruix_core.promotion.layout import StoreLayout
from fruix_core.promotion.store import POOL_CHECK_ENV

from .conftest import build_result_root

DATA = b'hostname="fruix"\n'  # etc/rc.conf of the synthetic world


def _entry(store: Path) -> Path:
    return StoreLayout(store).pool_entry(hashlib.sha256(DATA).hexdigest(), False)


def _problems(logs: Sequence[MutableMapping[str, Any]]) -> list[object]:
    return [e["problem"] for e in logs if e["event"] == "store.pool.wrong_entry"]


def _replace(entry: Path, make: Callable[[Path], None]) -> None:
    entry.unlink()
    make(entry)


def _file(data: bytes, mode: int = 0o444, mtime: int = 1) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(data)
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    return make


def _symlink(path: Path) -> None:
    outside = path.parents[2] / "outside"  # beside the store, with the right bytes
    outside.write_bytes(DATA)
    os.chmod(outside, 0o444)
    os.utime(outside, (1, 1))
    path.symlink_to(outside)


PLANTED: dict[str, tuple[Callable[[Path], None], str]] = {
    "longer": (_file(DATA + b"#"), "wrong size, mode or time"),
    "writable": (_file(DATA, 0o644), "wrong size, mode or time"),
    "executable": (_file(DATA, 0o555), "wrong size, mode or time"),
    "mtime": (_file(DATA, 0o444, 2), "wrong size, mode or time"),
    "symlink": (_symlink, "not a regular file"),
    "fifo": (os.mkfifo, "not a regular file"),
    "directory": (os.mkdir, "not a regular file"),
}


def _rebuilt(tmp_path: Path, when: str) -> Path:
    if when == "ingestion":
        # bin/cat changes and comes first: rc.conf is linked while the world is read.
        return build_result_root(tmp_path / "b", salt=b"rebuilt")

    def more(root: Path) -> None:
        (root / "artifacts/world/var/db").mkdir(parents=True)

    # Same contents, one more directory: linked when the new object is completed.
    return build_result_root(tmp_path / "b", extra=more)


@pytest.fixture
def first(tmp_path: Path, store: Path) -> PromotionOutcome:
    return promote(build_result_root(tmp_path / "a"), store)


def test_stat_is_the_default_and_good_entries_are_linked(
        tmp_path: Path, store: Path, first: PromotionOutcome,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POOL_CHECK_ENV, raising=False)
    with capture_logs() as logs:
        second = promote(_rebuilt(tmp_path, "ingestion"), store)
    assert _problems(logs) == []
    placed = second.artifacts["world"] / "etc/rc.conf"
    assert os.lstat(placed).st_ino == os.lstat(_entry(store)).st_ino
    assert second.bytes_written < first.bytes_written
    assert verify(store).ok


@pytest.mark.parametrize("when", ["ingestion", "completion"])
@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_wrong_kind_size_mode_or_time_is_never_linked(
        tmp_path: Path, store: Path, first: PromotionOutcome, planted: str,
        when: str) -> None:
    make, problem = PLANTED[planted]
    entry = _entry(store)
    _replace(entry, make)
    before = os.lstat(entry)
    with capture_logs() as logs:
        second = promote(_rebuilt(tmp_path, when), store)  # never waits on the FIFO
    assert _problems(logs) == [problem]
    placed = second.artifacts["world"] / "etc/rc.conf"
    assert placed.read_bytes() == DATA
    assert os.lstat(placed).st_ino != before.st_ino
    assert verify(store, [second.artifacts["world"]]).ok
    if planted != "directory":  # a directory cannot be renamed over: verify names it
        assert entry.read_bytes() == DATA  # replaced after publishing
        assert os.lstat(entry).st_ino == os.lstat(placed).st_ino
        assert verify(store).ok
    else:
        assert not verify(store).ok


def test_same_size_other_bytes_are_trusted_and_verify_names_them(
        tmp_path: Path, store: Path, first: PromotionOutcome) -> None:
    # The trade made by the default: a same-size entry with other bytes (only the
    # store's owner or a failing disk can make one) is linked like a good one, and
    # `store verify` names the entry and every object that shares it.
    entry = _entry(store)
    _replace(entry, _file(b"X" * len(DATA)))
    second = promote(_rebuilt(tmp_path, "ingestion"), store)
    report = verify(store)
    assert not report.ok
    text = "\n".join(str(problem) for problem in report.problems)
    assert entry.name in text
    assert second.artifacts["world"].name in text
    # The content check finds it instead: nothing wrong is linked then.
    third = promote(build_result_root(tmp_path / "c", salt=b"third"), store,
                    pool_check="content")
    assert (third.artifacts["world"] / "etc/rc.conf").read_bytes() == DATA


def test_both_checks_store_the_same_objects(tmp_path: Path) -> None:
    outcomes = []
    for check in ("stat", "content"):
        store = tmp_path / check / "store"
        promote(build_result_root(tmp_path / check / "a"), store, pool_check=check)
        outcomes.append(promote(_rebuilt(tmp_path / check, "ingestion"), store,
                                pool_check=check))
    assert ({k: p.name for k, p in outcomes[0].artifacts.items()}
            == {k: p.name for k, p in outcomes[1].artifacts.items()})
    assert outcomes[0].tree_signatures == outcomes[1].tree_signatures
    assert outcomes[0].bytes_written == outcomes[1].bytes_written


def test_an_unknown_check_is_a_usage_error(tmp_path: Path, store: Path) -> None:
    root = build_result_root(tmp_path / "a")
    with pytest.raises(UsageError, match="FRUIX_STORE_POOL_CHECK='sha1'"):
        promote(root, store, pool_check="sha1")
    assert not store.exists()
    done = subprocess.run([sys.executable, "-m", "fruix_core.cli.main", "native-build",
                           "promote", str(root), "--store", str(store)],
                          env={**os.environ, POOL_CHECK_ENV: "sha1"},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "expected one of stat, content" in done.stderr
    assert not store.exists()
