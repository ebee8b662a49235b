"""The stat cache: an unchanged tree is not read again; a changed one always is.

A record is trusted only for a tree whose every node has the same device,
inode, mode, owner, link count, size, mtime and ctime as when it was read,
and only when none of them changed within the racy margin before that read.
Records that are damaged, from another store, or in an untrusted directory
are ignored.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fruix_core.promotion import promote, seams, statcache, verify
from fruix_core.promotion.statcache import CACHE_DIR, TreeFingerprint
from fruix_core.testkit import require_tool

from .conftest import build_result_root


@pytest.fixture
def no_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trees written just before a promotion count as settled (the tests' trees are new)."""
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)


class Reads:
    """Records every file a promotion opens for reading (the ``walk.reading`` seam)."""

    def __init__(self) -> None:
        self.files: list[bytes] = []

    def __call__(self, rel: bytes) -> None:
        self.files.append(rel)


@pytest.fixture
def reads() -> Iterator[Reads]:
    seen = Reads()
    with seams.installed("walk.reading", seen):
        yield seen


def _records(store: Path) -> list[str]:
    return sorted(os.listdir(store / CACHE_DIR))


def nix_hash(path: Path) -> str:
    require_tool("nix-hash", "nix-bin")
    import subprocess
    return subprocess.run(["nix-hash", "--type", "sha256", str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_unchanged_root_is_not_read_again(tmp_path: Path, store: Path, no_margin: None) -> None:
    root = build_result_root(tmp_path / "r")
    first = promote(root, store)
    assert len(_records(store)) == 4
    with seams.installed("walk.reading", seen := Reads()):
        again = promote(root, store)
    assert seen.files == []
    assert again.artifacts == first.artifacts and again.bundle == first.bundle
    assert again.published == () and again.bytes_written == 0
    assert again.tree_signatures == first.tree_signatures
    assert verify(store).ok


def test_racily_clean_tree_is_not_recorded(tmp_path: Path, store: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Every node was changed within the margin before the promotion started: the
    # change times cannot prove a later change in the same clock tick, so nothing is
    # recorded and the next promotion reads every file.
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 3600 * 10**9)
    root = build_result_root(tmp_path / "r")
    promote(root, store)
    assert not (store / CACHE_DIR).exists() or _records(store) == []
    with seams.installed("walk.reading", seen := Reads()):
        promote(root, store)
    assert b"bin/sh" in seen.files


def test_racy_rule() -> None:
    fingerprint = TreeFingerprint("world", started_ns=10 * 10**9)
    st = os.stat_result((0o100644, 1, 1, 1, 0, 0, 5, 0, 0, 0,
                         0, 0, 0, 7 * 10**9, 7 * 10**9, 7 * 10**9))
    fingerprint.add(b"a", st, None)
    assert not fingerprint.racy
    recent = os.stat_result((0o100644, 2, 1, 1, 0, 0, 5, 0, 0, 0,
                             0, 0, 0, 7 * 10**9, 7 * 10**9, int(8.5 * 10**9)))
    fingerprint.add(b"b", recent, None)
    assert fingerprint.racy, "a ctime 1.5 s before the start is within the 2 s margin"


def test_same_size_same_mtime_change_is_seen_through_ctime(tmp_path: Path, store: Path,
                                                           no_margin: None) -> None:
    root = build_result_root(tmp_path / "r")
    first = promote(root, store)
    target = root / "artifacts/world/bin/cat"
    before = os.stat(target)
    data = target.read_bytes()
    target.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(target)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with seams.installed("walk.reading", seen := Reads()):
        again = promote(root, store)
    assert b"bin/cat" in seen.files
    assert again.artifacts["world"] != first.artifacts["world"]
    assert again.tree_signatures["world"] == nix_hash(root / "artifacts/world")
    assert (again.artifacts["world"] / "bin/cat").read_bytes() == target.read_bytes()


def test_damaged_record_is_ignored_and_replaced(tmp_path: Path, store: Path,
                                               no_margin: None) -> None:
    root = build_result_root(tmp_path / "r")
    first = promote(root, store)
    records = _records(store)
    damaged = [b"", b"{not json", b"[]", b"\xff" * 40]
    for name, junk in zip(records, damaged, strict=True):
        (store / CACHE_DIR / name).write_bytes(junk)
    with seams.installed("walk.reading", seen := Reads()):
        again = promote(root, store)
    assert {b"bin/sh", b"boot/kernel/kernel", b"boot/loader"} <= set(seen.files)
    assert again.artifacts == first.artifacts
    with seams.installed("walk.reading", seen := Reads()):
        promote(root, store)
    assert seen.files == [], "the damaged records were replaced by good ones"


def test_forged_digest_fails_the_records_checksum(tmp_path: Path, store: Path,
                                                  no_margin: None) -> None:
    root = build_result_root(tmp_path / "r")
    promote(root, store)
    for name in _records(store):
        path = store / CACHE_DIR / name
        text = path.read_text()
        path.write_text(text.replace('"tree_signature": "', '"tree_signature": "0'))
    with seams.installed("walk.reading", seen := Reads()):
        promote(root, store)
    assert b"bin/sh" in seen.files


def test_record_from_another_store_is_ignored(tmp_path: Path, no_margin: None) -> None:
    root = build_result_root(tmp_path / "r")
    one, two = tmp_path / "one", tmp_path / "two"
    promote(root, one)
    promote(root, two)
    shutil.rmtree(two / CACHE_DIR)
    shutil.copytree(one / CACHE_DIR, two / CACHE_DIR)
    with seams.installed("walk.reading", seen := Reads()):
        promote(root, two)
    assert b"bin/sh" in seen.files


def test_cache_directory_planted_as_symlink_is_not_followed(tmp_path: Path, store: Path,
                                                            no_margin: None) -> None:
    root = build_result_root(tmp_path / "r")
    promote(root, store)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(store / CACHE_DIR, elsewhere)
    os.symlink(elsewhere, store / CACHE_DIR)
    with seams.installed("walk.reading", seen := Reads()):
        promote(root, store)
    assert b"bin/sh" in seen.files
    assert os.path.islink(store / CACHE_DIR)


def test_record_whose_object_was_deleted_promotes_in_full(tmp_path: Path, store: Path,
                                                          no_margin: None) -> None:
    root = build_result_root(tmp_path / "r")
    first = promote(root, store)
    world = first.artifacts["world"]
    shutil.rmtree(first.bundle)
    os.system(f"chmod -R u+w {world}")  # noqa: S605 -- the test's own store
    shutil.rmtree(world)
    with seams.installed("walk.reading", seen := Reads()):
        again = promote(root, store)
    assert b"bin/sh" in seen.files
    assert again.artifacts["world"] == world and world in again.published
    assert verify(store).ok


def test_gc_that_deletes_objects_drops_the_records(tmp_path: Path, no_margin: None) -> None:
    from fruix_core.promotion.gc import collect_garbage
    from fruix_core.promotion.layout import StoreLayout
    store = tmp_path / "store"
    # A result root promoted by hand, outside any results directory with runs: no root.
    promote(build_result_root(tmp_path / "runs" / "r"), store)
    assert _records(store)
    report = collect_garbage(StoreLayout(store), keep_last=0)
    assert report.deleted
    assert _records(store) == []


def test_stat_cache_can_be_switched_off(tmp_path: Path, store: Path, no_margin: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_result_root(tmp_path / "r")
    promote(root, store)
    monkeypatch.setenv(statcache.DISABLE_ENV, "off")
    with seams.installed("walk.reading", seen := Reads()):
        promote(root, store)
    assert b"bin/sh" in seen.files


def test_a_changed_metalog_is_never_answered_from_the_cache(tmp_path: Path, store: Path,
                                                            no_margin: None) -> None:
    # The METALOG is not part of the artifact trees, but it shapes their manifests
    # (owners, modes, flags) and so their names: the same trees with another METALOG
    # must give the objects a full promotion gives, never the cached ones.
    from .test_metalog import WORLD_METALOG, _manifest, _with_metalog

    root = build_result_root(tmp_path / "r", extra=_with_metalog(WORLD_METALOG))
    first = promote(root, store)
    assert "flags=schg" in _manifest(first.artifacts["world"])["./sbin/ping"]
    (root / "metalog" / "world.METALOG").write_text(
        WORLD_METALOG.replace(" flags=schg", ""))
    again = promote(root, store)
    assert again.artifacts["world"] != first.artifacts["world"]
    assert "flags=" not in _manifest(again.artifacts["world"])["./sbin/ping"]
    fresh = promote(root, tmp_path / "fresh-store")
    assert again.artifacts["world"].name == fresh.artifacts["world"].name
    assert verify(store).ok
