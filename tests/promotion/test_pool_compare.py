"""With ``FRUIX_STORE_POOL_CHECK=content``, a pool entry is compared byte for byte.

Ingestion has just read and hashed the file; the content-pool entry of that
digest is linked into the new object only when its bytes equal those bytes,
through the descriptor they were read from. An entry changed while compared
is not linked; an entry met before the artifact showed any new content is
hashed before it is linked.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from fruix_core.promotion import PromotionOutcome, promote, publish, seams, verify
from fruix_core.promotion.layout import StoreLayout
from fruix_core.promotion.nar import PARALLEL_MIN
from fruix_core.promotion.store import POOL_CHECK_ENV

from .conftest import build_result_root

#: Past the size read into the reusable buffer (compared as a memoryview).
LARGE = PARALLEL_MIN + 4099


def _big(root: Path) -> None:
    path = root / "artifacts/world/usr/lib/libbig.so"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * (LARGE // 256) + b"tail" * 3)


def _entry(store: Path, outcome: PromotionOutcome, rel: str) -> tuple[Path, bytes]:
    data = (outcome.artifacts["world"] / rel).read_bytes()
    return StoreLayout(store).pool_entry(hashlib.sha256(data).hexdigest(), False), data


def _put(entry: Path, data: bytes, *, in_place: bool) -> None:
    """Give ``entry`` other bytes of the same size, with the canonical mode and time."""
    if in_place:
        os.chmod(entry, 0o644)
        with open(entry, "r+b") as out:
            out.write(data)
    else:
        entry.unlink()
        entry.write_bytes(data)
    os.chmod(entry, 0o444)
    os.utime(entry, (1, 1))


@pytest.fixture(autouse=True)
def _content_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the ``content`` pool check (``stat`` is the default)."""
    monkeypatch.setenv(POOL_CHECK_ENV, "content")


def _problems(logs: Sequence[MutableMapping[str, Any]]) -> list[object]:
    return [e["problem"] for e in logs if e["event"] == "store.pool.wrong_entry"]


@pytest.mark.parametrize("rel,where", [
    ("etc/rc.conf", 0), ("etc/rc.conf", -1),
    ("usr/lib/libbig.so", 0), ("usr/lib/libbig.so", LARGE // 2), ("usr/lib/libbig.so", -1),
])
def test_same_size_other_bytes_is_found_by_comparison_and_never_linked(
        tmp_path: Path, store: Path, rel: str, where: int) -> None:
    first = promote(build_result_root(tmp_path / "a", extra=_big), store)
    entry, data = _entry(store, first, rel)
    wrong = bytearray(data)
    wrong[where] ^= 0x5A
    _put(entry, bytes(wrong), in_place=False)
    planted = os.lstat(entry).st_ino
    with capture_logs() as logs:
        second = promote(build_result_root(tmp_path / "b", salt=b"rebuilt", extra=_big), store)
    # Found by the byte comparison during ingestion, not by hashing the entry again.
    assert _problems(logs) == ["content differs from the file it stands for"]
    placed = second.artifacts["world"] / rel
    assert placed.read_bytes() == data
    assert os.lstat(placed).st_ino != planted
    assert verify(store, [second.artifacts["world"]]).ok
    assert entry.read_bytes() == data  # the entry was replaced after publishing
    assert verify(store).ok


def test_good_entries_are_linked_after_comparison(tmp_path: Path, store: Path) -> None:
    first = promote(build_result_root(tmp_path / "a", extra=_big), store)
    with capture_logs() as logs:
        second = promote(build_result_root(tmp_path / "b", salt=b"rebuilt", extra=_big), store)
    assert _problems(logs) == []
    for rel in ("etc/rc.conf", "usr/lib/libbig.so"):
        entry, _data = _entry(store, first, rel)
        assert os.lstat(second.artifacts["world"] / rel).st_ino == os.lstat(entry).st_ino
    assert second.bytes_written < first.bytes_written
    assert verify(store).ok


@pytest.fixture(params=[True, False], ids=["proc-fd", "by-name"])
def link_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Entries linked through ``/proc/self/fd`` (Linux), or by name (elsewhere)."""
    if request.param and not os.path.isdir("/proc/self/fd"):
        pytest.fail("/proc/self/fd is needed on Linux")
    monkeypatch.setattr(publish, "_proc_links", request.param)
    return bool(request.param)


def test_compared_entries_are_linked_in_either_mode(tmp_path: Path, store: Path,
                                                     link_mode: bool) -> None:
    first = promote(build_result_root(tmp_path / "a", extra=_big), store)
    with capture_logs() as logs:
        second = promote(build_result_root(tmp_path / "b", salt=b"rebuilt", extra=_big), store)
    assert _problems(logs) == []
    entry, _data = _entry(store, first, "etc/rc.conf")
    assert os.lstat(second.artifacts["world"] / "etc/rc.conf").st_ino == os.lstat(entry).st_ino
    assert verify(store).ok


@pytest.mark.parametrize("how", ["in-place", "replaced"])
def test_entry_changed_right_after_comparison_is_never_linked(
        tmp_path: Path, store: Path, link_mode: bool, how: str) -> None:
    # Right after its bytes were compared equal, the entry is rewritten in place (same
    # inode, mode, size and time) or replaced by another file under its name. Either
    # sets the compared inode's change time: it is not linked (nor is the file now
    # under its name), and the content is written new.
    first = promote(build_result_root(tmp_path / "a"), store)
    entry, data = _entry(store, first, "etc/rc.conf")
    compared = os.lstat(entry).st_ino
    changed: list[int] = []

    def change(dest: bytes) -> None:
        if dest.endswith(b"/etc/rc.conf") and not changed:
            _put(entry, b"X" * len(data), in_place=how == "in-place")
            changed.append(os.lstat(entry).st_ino)

    with capture_logs() as logs, seams.installed("pool.compared", change):
        second = promote(build_result_root(tmp_path / "b", salt=b"rebuilt"), store)
    assert changed and (changed[0] == compared) == (how == "in-place")
    assert _problems(logs) == ["changed while it was compared"]
    placed = second.artifacts["world"] / "etc/rc.conf"
    assert placed.read_bytes() == data
    assert os.lstat(placed).st_ino not in (compared, changed[0])
    assert entry.read_bytes() == data  # replaced after publishing
    assert verify(store, [second.artifacts["world"]]).ok
    # Rewritten in place, the first world's rc.conf (the same inode) is wrong now.
    assert verify(store).ok == (how != "in-place")


def test_entries_met_before_any_new_content_are_hashed_when_linked(
        tmp_path: Path, store: Path) -> None:
    # Same contents, one more directory: a new world object whose every file is in
    # the pool, so nothing marks it as new while read; its entries are hashed instead.
    first = promote(build_result_root(tmp_path / "a"), store)
    entry, data = _entry(store, first, "etc/rc.conf")
    _put(entry, b"X" * len(data), in_place=False)

    def more(root: Path) -> None:
        (root / "artifacts/world/var/db").mkdir(parents=True)

    with capture_logs() as logs:
        second = promote(build_result_root(tmp_path / "b", extra=more), store)
    assert second.artifacts["world"] != first.artifacts["world"]
    assert second.artifacts["kernel"] == first.artifacts["kernel"]  # reused, nothing read
    assert _problems(logs) == ["content does not match its name"]
    placed = second.artifacts["world"] / "etc/rc.conf"
    assert placed.read_bytes() == data
    assert verify(store, [second.artifacts["world"]]).ok
