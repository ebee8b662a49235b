"""The store's own bookkeeping is never redirected; hostile inputs never hang or leak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fruix_core.errors import PromotionInputError, StoreError, UsageError
from fruix_core.promotion import promote, verify
from fruix_core.promotion.layout import StoreLayout

from .conftest import build_result_root
from .snapshot import snapshot


def _fruix(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "FRUIX_STORE_FSYNC": "none"}
    return subprocess.run([sys.executable, "-m", "fruix_core.cli.main", *args],
                          capture_output=True, timeout=120, env=env, cwd=cwd)


@pytest.mark.parametrize("name", [".links", ".locks"])
def test_planted_bookkeeping_symlink_is_refused(result_root: Path, store: Path,
                                                tmp_path: Path, name: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.mkdir()
    os.symlink(elsewhere, store / name)
    with pytest.raises(StoreError, match="symlink or another kind"):
        promote(result_root, store)
    assert os.listdir(elsewhere) == [], "nothing may be written through a planted symlink"
    assert not [n for n in os.listdir(store) if not n.startswith(".")]


def test_planted_object_lock_symlink_is_refused(result_root: Path, store: Path,
                                                tmp_path: Path) -> None:
    victim = tmp_path / "victim-file"
    victim.write_bytes(b"precious")
    planned = promote(result_root, store, dry_run=True)
    layout = StoreLayout(store)
    layout.locks.mkdir(parents=True)
    os.symlink(victim, layout.lock(planned.artifacts["world"].name))
    with pytest.raises(StoreError, match="is a symlink"):
        promote(result_root, store)
    assert victim.read_bytes() == b"precious"
    assert not [n for n in os.listdir(store) if not n.startswith(".")]


@pytest.mark.parametrize("name", ["status", "promotion.scm"])
def test_fifo_in_the_result_root_does_not_hang(result_root: Path, store: Path,
                                               name: str) -> None:
    (result_root / name).unlink()
    os.mkfifo(result_root / name)
    done = _fruix("native-build", "promote", str(result_root), "--store", str(store))
    assert done.returncode == 2, done.stderr
    assert b"FIFO" in done.stderr and done.stderr.count(b"\n") == 1
    assert not store.exists()


def test_depth_limit_is_the_same_for_validation_and_ingestion(tmp_path: Path,
                                                              store: Path) -> None:
    def deep(levels: int):
        def extra(root: Path) -> None:
            path = root / "artifacts/headers/usr/include"
            for _ in range(levels - 2):
                path = path / "d"
            path.mkdir(parents=True)
            (path / "leaf.h").write_bytes(b"")
        return extra

    ok = build_result_root(tmp_path / "ok", extra=deep(255))
    promote(ok, store)
    too_deep = build_result_root(tmp_path / "deep", extra=deep(256))
    other = tmp_path / "other-store"
    with pytest.raises(PromotionInputError, match="nested deeper than 256"):
        promote(too_deep, other)
    assert not other.exists(), "refused by validation, before the store is touched"


def test_store_inside_the_world_tree_is_refused(result_root: Path) -> None:
    inside = result_root / "artifacts/world/var/store"
    with pytest.raises(PromotionInputError, match="inside the world artifact tree"):
        promote(result_root, inside)
    assert not inside.exists()


def test_store_path_with_a_newline_is_refused(result_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "new\nline"
    with pytest.raises(UsageError, match=r"contains a newline"):
        promote(result_root, store)
    assert not store.exists()


@pytest.mark.parametrize("parts", [("j\u00f6rg", ".fruix", "store"),
                                   (os.fsdecode(b"bytes-\xff\xfe"), "store")])
def test_non_ascii_and_non_utf8_store_paths(result_root: Path, tmp_path: Path,
                                            parts: tuple[str, ...]) -> None:
    store = tmp_path.joinpath(*parts)
    done = _fruix("native-build", "promote", str(result_root), "--store", str(store), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert set(document["artifacts"]) == {"world", "kernel", "headers", "bootloader"}
    report = verify(store)
    assert report.ok, report.problems
    again = promote(result_root, store)
    assert not again.published
    refs = (again.bundle / ".references").read_bytes().splitlines()
    assert refs == sorted(os.fsencode(p) for p in again.artifacts.values())


def test_hostile_names_are_escaped_in_messages(tmp_path: Path, store: Path) -> None:
    def hostile(root: Path) -> None:
        os.mkfifo(root / "artifacts/world" / "evil\x1b]0;owned\x07\nname")

    root = build_result_root(tmp_path / "r", extra=hostile)
    done = _fruix("native-build", "promote", str(root), "--store", str(store))
    assert done.returncode == 2
    assert b"\x1b" not in done.stderr and b"\x07" not in done.stderr
    assert done.stderr.count(b"\n") == 1
    assert b"evil\\x1b]0;owned\\x07\\x0aname" in done.stderr


def test_read_only_store_answers_already_stored(result_root: Path, tmp_path: Path) -> None:
    # The store on a file system remounted read-only (a mounted /frx/store, say).
    mount = tmp_path / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.fail("this test needs root to mount a tmpfs")
    try:
        store = mount / "store"
        first = promote(result_root, store)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        before = snapshot(store)
        again = promote(result_root, store)
        assert not again.published
        assert [p.name for p in again.reused] == [
            *[p.name for p in first.artifacts.values()], first.bundle.name]
        assert snapshot(store) == before
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_sparse_file_stays_sparse(tmp_path: Path, store: Path) -> None:
    def sparse(root: Path) -> None:
        with open(root / "artifacts/world/var-disk.img", "wb") as stream:
            stream.truncate(256 << 20)
            stream.write(b"header")

    root = build_result_root(tmp_path / "r", extra=sparse)
    outcome = promote(root, store)
    stored = outcome.artifacts["world"] / "var-disk.img"
    st = stored.stat()
    assert st.st_size == 256 << 20
    assert st.st_blocks * 512 < 4 << 20, "holes must stay holes in the store"
    assert verify(store).ok


def test_planted_probe_symlink_never_truncates_its_target(result_root: Path, store: Path,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets

    victim = tmp_path / "victim-file"
    victim.write_bytes(b"precious")
    store.mkdir()
    monkeypatch.setattr(secrets, "token_hex", lambda _n=None: "0000")
    os.symlink(victim, store / f".probe-{os.getpid()}-0000")
    with pytest.raises(StoreError, match="File exists"):
        promote(result_root, store)
    assert victim.read_bytes() == b"precious"


def test_stale_new_owner_lock_files_are_removed(result_root: Path, store: Path) -> None:
    promote(result_root, store)
    stale = StoreLayout(store).locks / ".new-owner-12345deadbeef.lock"
    stale.write_bytes(b"")  # a promoter killed between creating and renaming its lock
    promote(result_root, store)
    assert not stale.exists()


def test_key_file_that_is_an_empty_directory_is_refused(result_root: Path,
                                                        store: Path) -> None:
    # bin/sh must be a regular file even when promotion.scm records no digest for it.
    from dataclasses import replace

    from fruix_core.promotion import read_promotion, write_promotion

    promotion = read_promotion(result_root / "promotion.scm")
    entries = tuple(replace(e, files=()) if e.kind == "world" else e
                    for e in promotion.artifacts)
    write_promotion(replace(promotion, artifacts=entries), result_root / "promotion.scm")
    sh = result_root / "artifacts/world/bin/sh"
    sh.unlink()
    sh.mkdir()
    with pytest.raises(PromotionInputError, match="bin/sh.*directory, not a regular file"):
        promote(result_root, store)
    assert not store.exists()
