"""verify(): a clean store passes; every kind of tampering is named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fruix_core.promotion import PromotionOutcome, promote, verify
from fruix_core.promotion.layout import MANIFEST_FILE, OBJECT_FILE, REFERENCES_FILE


@pytest.fixture
def promoted(result_root: Path, store: Path) -> PromotionOutcome:
    return promote(result_root, store)


def _writable(path: Path) -> None:
    os.chmod(path, 0o755)


def _problems(store: Path, paths=None) -> list[tuple[str, str, str]]:
    report = verify(store, paths)
    assert report.ok == (not report.problems)
    return [(Path(p.object).name, p.path, p.problem) for p in report.problems]


def test_clean_store(promoted: PromotionOutcome, store: Path) -> None:
    report = verify(store)
    assert report.ok and len(report.checked) == 5
    assert verify(store, [promoted.artifacts["world"]]).ok
    assert verify(store, [promoted.bundle.name]).ok


def test_content_change(promoted: PromotionOutcome, store: Path) -> None:
    world = promoted.artifacts["world"]
    target = world / "etc/rc.conf"
    os.chmod(target, 0o644)
    target.write_text('hostname="evil"\n')
    os.chmod(target, 0o444)
    problems = _problems(store, [world])
    assert any(p[1] == "etc/rc.conf" and "content differs" in p[2] for p in problems)
    assert any("tree signature" in p[2] for p in problems)


def test_mode_change(promoted: PromotionOutcome, store: Path) -> None:
    world = promoted.artifacts["world"]
    os.chmod(world / "bin/sh", 0o4555)
    problems = _problems(store, [world])
    assert ("bin/sh" in [p[1] for p in problems])
    assert any("mode is 4555, expected 0555" in p[2] for p in problems)


def test_exec_bit_change(promoted: PromotionOutcome, store: Path) -> None:
    world = promoted.artifacts["world"]
    os.chmod(world / "etc/rc.conf", 0o555)
    problems = _problems(store, [world])
    assert any(p[1] == "etc/rc.conf" and "mode is 0555" in p[2] for p in problems)
    assert any("tree signature" in p[2] for p in problems)


def test_added_file(promoted: PromotionOutcome, store: Path) -> None:
    world = promoted.artifacts["world"]
    _writable(world / "etc")
    (world / "etc/backdoor").write_text("x")
    problems = _problems(store, [world])
    assert ("etc/backdoor" in [p[1] for p in problems])
    assert any("not in the manifest" in p[2] for p in problems)


def test_removed_file(promoted: PromotionOutcome, store: Path) -> None:
    world = promoted.artifacts["world"]
    _writable(world / "usr/share/doc")
    (world / "usr/share/doc/caf\u00e9 notes.txt").unlink()
    problems = _problems(store, [world])
    assert any(p[1] == "usr/share/doc/caf\u00e9 notes.txt" and "missing" in p[2]
               for p in problems)


def test_symlink_retargeted(promoted: PromotionOutcome, store: Path) -> None:
    world = promoted.artifacts["world"]
    _writable(world / "etc")
    os.unlink(world / "etc/localtime")
    os.symlink("/evil", world / "etc/localtime")
    problems = _problems(store, [world])
    assert any(p[1] == "etc/localtime" and "symlink target" in p[2] for p in problems)


def test_broken_hard_link_group(promoted: PromotionOutcome, store: Path) -> None:
    world = promoted.artifacts["world"]
    _writable(world / "rescue")
    data = (world / "rescue/ls").read_bytes()
    os.unlink(world / "rescue/ls")
    (world / "rescue/ls").write_bytes(data)
    os.chmod(world / "rescue/ls", 0o555)
    problems = _problems(store, [world])
    assert any(p[1] == "rescue/ls" and "hard-linked" in p[2] for p in problems)


def test_renamed_object(promoted: PromotionOutcome, store: Path) -> None:
    kernel = promoted.artifacts["kernel"]
    renamed = kernel.with_name("0" * 40 + kernel.name[40:])
    os.rename(kernel, renamed)
    problems = _problems(store)
    assert any(p[0] == renamed.name and "does not match its identity" in p[2]
               for p in problems)
    assert any(p[1] == "artifacts/kernel" and "does not exist" in p[2] for p in problems)


def test_tampered_metadata(promoted: PromotionOutcome, store: Path) -> None:
    headers = promoted.artifacts["headers"]
    _writable(headers)
    meta = headers / OBJECT_FILE
    os.chmod(meta, 0o644)
    meta.write_text(meta.read_text().replace('(make "make")', '(make "gmake")'))
    problems = _problems(store, [headers])
    assert any("does not match its identity" in p[2] for p in problems)


def test_tampered_manifest(promoted: PromotionOutcome, store: Path) -> None:
    headers = promoted.artifacts["headers"]
    manifest = headers / MANIFEST_FILE
    os.chmod(manifest, 0o644)
    manifest.write_text(manifest.read_text().replace("mode=0644", "mode=0755"))
    os.chmod(manifest, 0o444)
    problems = _problems(store, [headers])
    assert any(p[1] == MANIFEST_FILE and "digest" in p[2] for p in problems)


def test_references_and_bundle_links(promoted: PromotionOutcome, store: Path) -> None:
    bundle = promoted.bundle
    _writable(bundle / "artifacts")
    os.unlink(bundle / "artifacts/world")
    os.symlink(str(promoted.artifacts["kernel"]), bundle / "artifacts/world")
    kernel = promoted.artifacts["kernel"]
    os.chmod(kernel / REFERENCES_FILE, 0o644)
    (kernel / REFERENCES_FILE).write_text("/frx/store/x\n")
    problems = _problems(store)
    assert any(p[1] == "artifacts/world" and "points to" in p[2] for p in problems)
    assert any(p[1] == REFERENCES_FILE for p in problems)


def test_not_an_object(store: Path, promoted: PromotionOutcome) -> None:
    problems = _problems(store, [store / "no-such-object"])
    assert problems == [("no-such-object", "", "no such store object")]


def test_missing_store(tmp_path: Path) -> None:
    report = verify(tmp_path / "nowhere")
    assert not report.ok and report.problems[0].problem == "store directory does not exist"
