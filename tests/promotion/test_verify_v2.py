"""verify() misses nothing: every .scm field, reserved names, bundle modes, the pool, FIFOs."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fruix_core.promotion import PromotionOutcome, promote, verify
from fruix_core.promotion.layout import OBJECT_FILE, RESULT_FILE, StoreLayout

from .conftest import build_result_root


@pytest.fixture
def promoted(result_root: Path, store: Path) -> PromotionOutcome:
    return promote(result_root, store)


def _problems(store: Path, paths=None) -> list[tuple[str, str, str]]:
    report = verify(store, paths)
    return [(Path(p.object).name, p.path, p.problem) for p in report.problems]


def _rewrite(path: Path, old: str, new: str) -> None:
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o644)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    os.chmod(path, 0o444)
    os.chmod(path.parent, 0o555)


def test_nar_size_is_checked(promoted: PromotionOutcome, store: Path) -> None:
    scm = promoted.artifacts["kernel"] / OBJECT_FILE
    size = next(line for line in scm.read_text().splitlines() if "nar-size" in line)
    _rewrite(scm, size, size.replace("(nar-size ", "(nar-size 1"))
    problems = _problems(store, [promoted.artifacts["kernel"]])
    assert any("nar-size" in p[2] for p in problems), problems


@pytest.mark.parametrize("old,new,message", [
    ('(manifest ".fruix-native-build-manifest")', '(manifest "elsewhere")', "manifest"),
    ('(manifest ".fruix-native-build-manifest")',
     '(manifest ".fruix-native-build-manifest") (note "hi")', "unknown field 'note'"),
])
def test_object_scm_fields_are_checked(promoted: PromotionOutcome, store: Path, old: str,
                                       new: str, message: str) -> None:
    _rewrite(promoted.artifacts["kernel"] / OBJECT_FILE, old, new)
    problems = _problems(store, [promoted.artifacts["kernel"]])
    assert any(message in p[2] for p in problems), problems


def test_reserved_name_added_inside_an_artifact(promoted: PromotionOutcome,
                                                store: Path) -> None:
    world = promoted.artifacts["world"]
    os.chmod(world, 0o755)
    (world / RESULT_FILE).write_text("(fruix-native-build-result)\n")
    os.chmod(world, 0o555)
    problems = _problems(store, [world])
    assert any(p[1] == RESULT_FILE and "not in the manifest" in p[2] for p in problems)


def test_bundle_directory_modes(promoted: PromotionOutcome, store: Path) -> None:
    os.chmod(promoted.bundle / "artifacts", 0o755)
    problems = _problems(store, [promoted.bundle])
    assert ("artifacts" in [p[1] for p in problems]) and any(
        "mode is 0755, expected 0555" in p[2] for p in problems)


@pytest.mark.parametrize("which", ["object-scm", "manifest", "bundle-scm"])
def test_fifo_in_place_of_metadata_does_not_hang(promoted: PromotionOutcome, store: Path,
                                                 which: str) -> None:
    target = {"object-scm": promoted.artifacts["world"] / OBJECT_FILE,
              "manifest": promoted.artifacts["world"] / ".fruix-native-build-manifest",
              "bundle-scm": promoted.bundle / RESULT_FILE}[which]
    os.chmod(target.parent, 0o755)
    target.unlink()
    os.mkfifo(target)
    os.chmod(target.parent, 0o555)
    done = subprocess.run([sys.executable, "-m", "fruix_core.cli.main", "store", "verify",
                           "--store", str(store)], capture_output=True, timeout=120)
    assert done.returncode == 4
    assert target.name.encode() in done.stdout


def _tamper_pool(store: Path, outcome: PromotionOutcome, rel: str) -> Path:
    """Replace the pool entry of ``rel`` by a wrong file with canonical mode and time."""
    data = (outcome.artifacts["world"] / rel).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    entry = StoreLayout(store).pool_entry(digest, False)
    entry.unlink()
    entry.write_bytes(b"X" * len(data))
    os.chmod(entry, 0o444)
    os.utime(entry, (1, 1))
    return entry


def test_wrong_pool_entry_is_reported_and_the_content_check_never_links_it(
        tmp_path: Path, store: Path) -> None:
    first = promote(build_result_root(tmp_path / "a"), store)
    entry = _tamper_pool(store, first, "etc/rc.conf")
    problems = _problems(store)
    assert any(p[1] == entry.name and "does not match its name" in p[2] for p in problems)
    # A rebuilt world sharing rc.conf dedups against the pool: with the content check
    # the wrong entry is not linked; the new object verifies clean and the pool entry
    # is repaired. (The default check trusts a same-size entry, as Nix does, and
    # leaves it to verify: test_pool_check.py.)
    second = promote(build_result_root(tmp_path / "b", salt=b"rebuilt"), store,
                     pool_check="content")
    world = second.artifacts["world"]
    assert verify(store, [world]).ok
    assert (world / "etc/rc.conf").read_bytes() == (
        tmp_path / "b/artifacts/world/etc/rc.conf").read_bytes()
    assert verify(store).ok


def test_hostile_names_in_verify_output_are_escaped(promoted: PromotionOutcome,
                                                    store: Path) -> None:
    world = promoted.artifacts["world"]
    os.chmod(world / "etc", 0o755)
    (world / "etc" / "x\x1b[2J\x07\ny").write_bytes(b"planted")
    os.chmod(world / "etc", 0o555)
    for args in ([], ["--json"]):
        done = subprocess.run([sys.executable, "-m", "fruix_core.cli.main", "store", "verify",
                               "--store", str(store), *args], capture_output=True, timeout=120)
        assert done.returncode == 4
        assert b"\x1b" not in done.stdout and b"\x07" not in done.stdout
        assert b"x\\x1b[2J\\x07\\x0ay" in done.stdout.replace(b"\\\\", b"\\")
    document = json.loads(done.stdout)
    assert any("not in the manifest" in p["problem"] for p in document["problems"])


def _pool_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pool entries a verify reads on their own (spied, still read for real)."""
    verify_module = importlib.import_module("fruix_core.promotion.verify")
    names: list[str] = []
    real = verify_module._sha256_regular

    def counted(path: Path) -> str:
        if path.parent.name == ".links":
            names.append(path.name)
        return real(path)

    monkeypatch.setattr(verify_module, "_sha256_regular", counted)
    return names


def test_pool_entries_hashed_with_their_objects_are_not_read_again(
        promoted: PromotionOutcome, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    links = StoreLayout(store).links
    # An entry no object links any more (its objects collected by hand): read on its own.
    orphan = links / (hashlib.sha256(b"orphan").hexdigest() + "-r")
    orphan.write_bytes(b"orphan")
    os.chmod(orphan, 0o444)
    os.utime(orphan, (1, 1))
    reads = _pool_reads(monkeypatch)
    assert verify(store).ok
    assert reads == [orphan.name]
    assert len(os.listdir(links)) > 10


def test_an_entry_rewritten_in_place_is_named_in_the_pool_and_in_its_objects(
        promoted: PromotionOutcome, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Same inode, size, mode and time: the object walk reads the new bytes, and the
    # pool check compares their digest (not a stale one) with the entry's name.
    data = (promoted.artifacts["world"] / "etc/rc.conf").read_bytes()
    entry = StoreLayout(store).pool_entry(hashlib.sha256(data).hexdigest(), False)
    os.chmod(entry, 0o644)
    with open(entry, "r+b") as out:
        out.write(b"X" * len(data))
    os.chmod(entry, 0o444)
    os.utime(entry, (1, 1))
    reads = _pool_reads(monkeypatch)
    problems = _problems(store)
    assert any(p[1] == entry.name and "does not match its name" in p[2] for p in problems)
    assert any(p[0].endswith(promoted.artifacts["world"].name) and "etc/rc.conf" in p[1]
               for p in problems)
    assert reads == []


def test_an_entry_changed_after_its_objects_were_read_is_read_again(
        promoted: PromotionOutcome, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its change time moved since the object walk read it: the digest from then does
    # not stand for it, it is hashed again (and found right: only its time changed).
    verify_module = importlib.import_module("fruix_core.promotion.verify")
    data = (promoted.artifacts["world"] / "etc/rc.conf").read_bytes()
    entry = StoreLayout(store).pool_entry(hashlib.sha256(data).hexdigest(), False)
    real_pool = verify_module._verify_pool

    def touch_first(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        os.chmod(entry, 0o444)  # same mode: only the change time moves
        return real_pool(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(verify_module, "_verify_pool", touch_first)
    reads = _pool_reads(monkeypatch)
    assert verify(store).ok
    assert reads == [entry.name]
