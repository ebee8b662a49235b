"""``store verify --fast``: trusts unchanged stat recorded by a full check, and no more."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fruix_core.cli.store import verify_command
from fruix_core.errors import ExitCode
from fruix_core.promotion import PromotionOutcome, promote, seams, statcache, verify
from fruix_core.promotion.statcache import CACHE_DIR, VERIFIED_FILE, VerifiedInodes
from fruix_core.schemas import validate_document

from .test_statcache import Reads


@pytest.fixture
def no_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Store files written just before the check count as settled (the tests' are new)."""
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)


@pytest.fixture
def promoted(result_root: Path, store: Path) -> PromotionOutcome:
    return promote(result_root, store)


def _verified(store: Path) -> Path:
    return store / CACHE_DIR / VERIFIED_FILE


def _same_size_rewrite(path: Path) -> os.stat_result:
    """Change one byte of a store file, keeping its size and modification time."""
    before = os.stat(path)
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o644)
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    os.chmod(path, before.st_mode & 0o7777)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.chmod(path.parent, 0o555)
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    return after


def test_fast_reads_no_file_after_a_full_verify(promoted: PromotionOutcome, store: Path,
                                                no_margin: None) -> None:
    assert verify(store).ok  # full: hashes everything and records it
    assert _verified(store).is_file()
    with seams.installed("walk.reading", seen := Reads()):
        report = verify(store, fast=True)
    assert report.ok and seen.files == []
    assert set(report.trusted) == set(promoted.artifacts.values())


def test_fast_without_records_checks_in_full(promoted: PromotionOutcome, store: Path,
                                            no_margin: None) -> None:
    with seams.installed("walk.reading", seen := Reads()):
        report = verify(store, fast=True)
    assert report.ok and report.trusted == ()
    assert b"bin/cat" in seen.files
    # ... and what it hashed is recorded for the next one.
    assert verify(store, fast=True).trusted


def test_changed_stat_tampering_is_caught(promoted: PromotionOutcome, store: Path,
                                         no_margin: None) -> None:
    assert verify(store).ok
    world = promoted.artifacts["world"]
    _same_size_rewrite(world / "bin/cat")
    report = verify(store, fast=True)
    problems = [(p.path, p.problem) for p in report.problems]
    assert any(path == "bin/cat" and "content differs" in problem
               for path, problem in problems), problems
    assert any("tree signature" in problem for _path, problem in problems)
    assert world not in report.trusted
    # The pool entry is the same inode: also not trusted, and named.
    assert any(p.object.endswith(".links") and "does not match its name" in p.problem
               for p in report.problems)


def test_same_stat_tampering_is_caught_only_by_a_full_verify(
        promoted: PromotionOutcome, store: Path, no_margin: None) -> None:
    # A change the kernel does not show in the change time (clock set back, a raw
    # write to the device) looks to --fast exactly like a record made after it:
    # modelled here by recording the tampered inode's new stat with the old digest.
    assert verify(store).ok
    world = promoted.artifacts["world"]
    inodes = VerifiedInodes(store)
    inodes.load()
    old = os.stat(world / "bin/cat")
    before_digest = inodes.known[(old.st_dev, old.st_ino)][4]
    after = _same_size_rewrite(world / "bin/cat")
    inodes.known[(after.st_dev, after.st_ino)] = (after.st_mode, after.st_size,
                                                  after.st_mtime_ns, after.st_ctime_ns,
                                                  before_digest)
    inodes.save(keep_others=True)
    assert verify(store, fast=True).ok  # documented: --fast trusts the stat
    full = verify(store)
    assert any(p.path == "bin/cat" and "content differs" in p.problem for p in full.problems)


def test_recently_changed_files_are_not_recorded(promoted: PromotionOutcome, store: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Racily clean: a file changed within the margin before the check could change
    # again in the same clock tick without a new change time.
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 3600 * 10**9)
    assert verify(store).ok
    with seams.installed("walk.reading", seen := Reads()):
        report = verify(store, fast=True)
    assert report.ok and report.trusted == () and b"bin/cat" in seen.files


@pytest.mark.parametrize("damage", ["flip", "truncate", "symlink", "foreign"])
def test_damaged_or_foreign_records_are_ignored(promoted: PromotionOutcome, store: Path,
                                                tmp_path: Path, no_margin: None,
                                                damage: str) -> None:
    assert verify(store).ok
    records = _verified(store)
    if damage == "flip":
        data = bytearray(records.read_bytes())
        data[-1] ^= 1
        records.write_bytes(bytes(data))
    elif damage == "truncate":
        records.write_bytes(records.read_bytes()[:-5])
    elif damage == "symlink":
        elsewhere = tmp_path / "elsewhere"
        shutil.copy(records, elsewhere)
        records.unlink()
        records.symlink_to(elsewhere)
    else:
        # Records of another store (another directory's device and inode).
        header, _, body = records.read_bytes().partition(b"\n\n")
        fields = json.loads(header.split(b"\n", 1)[1])
        fields["store"] = [fields["store"][0], fields["store"][1] + 1]
        records.write_bytes(header.split(b"\n", 1)[0] + b"\n" + json.dumps(fields).encode()
                            + b"\n\n" + body)
    with seams.installed("walk.reading", seen := Reads()):
        report = verify(store, fast=True)
    assert report.ok and report.trusted == () and b"bin/cat" in seen.files


def test_cli_fast_flag(promoted: PromotionOutcome, store: Path, no_margin: None,
                       capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_command([], str(store), as_json=False) == ExitCode.OK
    capsys.readouterr()
    assert verify_command([], str(store), as_json=False, fast=True) == ExitCode.OK
    assert "(4 from unchanged stat): all clean" in capsys.readouterr().out
    assert verify_command([], str(store), as_json=True, fast=True) == ExitCode.OK
    doc = json.loads(capsys.readouterr().out)
    validate_document(doc)
    assert doc["fast"] is True and len(doc["trusted"]) == 4 and set(doc["trusted"]) <= \
        set(doc["checked"])
    _same_size_rewrite(promoted.artifacts["kernel"] / "boot/kernel/kernel")
    assert verify_command([], str(store), as_json=False, fast=True) == ExitCode.VERIFICATION
    assert "content differs" in capsys.readouterr().out


def test_records_off_with_the_stat_cache(promoted: PromotionOutcome, store: Path,
                                        no_margin: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(statcache.DISABLE_ENV, "off")
    assert verify(store).ok
    assert not _verified(store).exists()
    with seams.installed("walk.reading", seen := Reads()):
        report = verify(store, fast=True)
    assert report.ok and report.trusted == () and b"bin/cat" in seen.files
