"""Hostile and broken result roots: one clear error, nothing written."""

from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from fruix_core.errors import ExitCode, MetadataError, PromotionInputError
from fruix_core.model import ArtifactEntry
from fruix_core.promotion import promote
from fruix_core.promotion.nar import SpecialFileError, TreeChangedError
from fruix_core.promotion.schema import read_promotion, write_promotion
from fruix_core.promotion.validate import (
    DigestMismatchError,
    EscapingPathError,
    ExternalHardLinkError,
    MissingArtifactError,
    validate_result_root,
)

from .conftest import build_result_root, finish_result_root


def _refused(root: Path, store: Path, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        promote(root, store)
    assert isinstance(info.value, PromotionInputError)
    assert info.value.exit_code == ExitCode.USAGE
    assert not store.exists(), "nothing may be written for bad input"


def _rewrite_entry(root: Path, kind: str, **changes) -> None:
    promotion = read_promotion(root / "promotion.scm")
    entries = tuple(replace(e, **changes) if e.kind == kind else e
                    for e in promotion.artifacts)
    write_promotion(replace(promotion, artifacts=entries), root / "promotion.scm")


def test_valid_root_passes(result_root: Path) -> None:
    checked = validate_result_root(result_root)
    try:
        assert [a.kind for a in checked.artifacts] == ["world", "kernel", "headers",
                                                       "bootloader"]
        assert checked.files > 0 and checked.bytes > 0
        assert all(os.fstat(a.fd) for a in checked.artifacts), "trees are held open"
    finally:
        checked.close()


@pytest.mark.parametrize("status", ["running\n", "failed buildworld\n", ""])
def test_status_must_be_ok(result_root: Path, store: Path, status: str) -> None:
    (result_root / "status").write_text(status)
    _refused(result_root, store, PromotionInputError, "not complete")


def test_not_a_result_root(tmp_path: Path, store: Path) -> None:
    _refused(tmp_path, store, PromotionInputError, "no status file")
    _refused(tmp_path / "missing", store, PromotionInputError, "does not exist")


def test_malformed_promotion(result_root: Path, store: Path) -> None:
    (result_root / "promotion.scm").write_text("(fruix-native-build-promotion #.(evil))\n")
    _refused(result_root, store, MetadataError, re.escape("promotion.scm:1: "))


@pytest.mark.parametrize("rel, kind", [("bin/sh", "world"), ("boot/kernel/kernel", "kernel"),
                                       ("boot/loader", "bootloader")])
def test_required_key_files(result_root: Path, store: Path, rel: str, kind: str) -> None:
    (result_root / "artifacts" / kind / rel).unlink()
    _rewrite_entry(result_root, kind, files=())
    _refused(result_root, store, MissingArtifactError, f"{kind} key file '{rel}' is missing")


def test_world_sh_must_be_at_bin_sh(tmp_path: Path, store: Path) -> None:
    def move(root: Path) -> None:
        world = root / "artifacts/world"
        (world / "usr/bin/sh").write_bytes((world / "bin/sh").read_bytes())
        (world / "bin/sh").unlink()

    root = tmp_path / "r"
    from .conftest import populate
    for kind in ("world", "kernel", "headers", "bootloader"):
        populate(kind, root / "artifacts" / kind)
    move(root)
    (root / "artifacts/world/bin/sh").write_bytes(b"")  # placeholder for digests
    finish_result_root(root)
    (root / "artifacts/world/bin/sh").unlink()
    _refused(root, store, MissingArtifactError, "bin/sh")


def test_missing_artifact_directory(result_root: Path, store: Path) -> None:
    os.rename(result_root / "artifacts/headers", result_root / "elsewhere")
    _refused(result_root, store, MissingArtifactError, "headers artifact path")


def test_empty_headers(tmp_path: Path, store: Path) -> None:
    root = build_result_root(tmp_path / "r")
    for path in sorted((root / "artifacts/headers").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    _refused(root, store, MissingArtifactError, "empty")


def test_missing_artifact_entry(result_root: Path, store: Path) -> None:
    promotion = read_promotion(result_root / "promotion.scm")
    write_promotion(replace(promotion, artifacts=promotion.artifacts[:3]),
                    result_root / "promotion.scm")
    _refused(result_root, store, MetadataError, "no entry for bootloader")


def test_digest_mismatch(result_root: Path, store: Path) -> None:
    (result_root / "artifacts/kernel/boot/kernel/kernel").write_bytes(b"tampered")
    _refused(result_root, store, DigestMismatchError, "boot/kernel/kernel': sha256 is")


def test_escaping_paths_in_metadata(result_root: Path, store: Path) -> None:
    text = (result_root / "promotion.scm").read_text()
    (result_root / "promotion.scm").write_text(
        text.replace('"artifacts/world"', '"artifacts/../../../etc"'))
    _refused(result_root, store, MetadataError, "'..' component")
    (result_root / "promotion.scm").write_text(
        text.replace('"artifacts/world"', '"/etc"'))
    _refused(result_root, store, MetadataError, "is absolute")
    (result_root / "promotion.scm").write_text(text.replace('"bin/sh"', '"../../status"'))
    _refused(result_root, store, MetadataError, "'..' component")


def test_artifact_path_through_a_symlink(tmp_path: Path, store: Path) -> None:
    root = build_result_root(tmp_path / "r")
    os.rename(root / "artifacts/kernel", tmp_path / "outside-kernel")
    os.symlink(tmp_path / "outside-kernel", root / "artifacts/kernel")
    _refused(root, store, EscapingPathError, "symlinks are not followed")


def test_key_file_through_a_symlink(result_root: Path, store: Path, tmp_path: Path) -> None:
    boot = result_root / "artifacts/bootloader/boot"
    os.rename(boot, tmp_path / "boot-elsewhere")
    os.symlink(tmp_path / "boot-elsewhere", boot)
    _refused(result_root, store, EscapingPathError, "goes through a symlink")


def test_symlinks_are_opaque(tmp_path: Path, store: Path) -> None:
    def links(root: Path) -> None:
        world = root / "artifacts/world"
        os.symlink("/etc/shadow", world / "etc/abs-escape")
        os.symlink("../../../../../../etc", world / "usr/rel-escape")
    root = build_result_root(tmp_path / "r", extra=links)
    world = promote(root, store).artifacts["world"]
    assert os.readlink(world / "etc/abs-escape") == "/etc/shadow"
    assert os.readlink(world / "usr/rel-escape") == "../../../../../../etc"


def test_fifo_is_refused(tmp_path: Path, store: Path) -> None:
    root = build_result_root(tmp_path / "r",
                             extra=lambda r: os.mkfifo(r / "artifacts/world/var/fifo"))
    _refused(root, store, SpecialFileError, "is a FIFO")


def test_socket_is_refused(tmp_path: Path, store: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        root = build_result_root(
            tmp_path / "r", extra=lambda r: sock.bind(str(r / "artifacts/world/var/sock")))
        _refused(root, store, SpecialFileError, "is a socket")
    finally:
        sock.close()


def test_device_node_is_refused(tmp_path: Path, store: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    root = build_result_root(
        tmp_path / "r",
        extra=lambda r: os.mknod(r / "artifacts/world/var/null", 0o600 | 0o020000,
                                 os.makedev(1, 3)))
    _refused(root, store, SpecialFileError, "device node")


def test_setuid_files_are_accepted_and_recorded(result_root: Path, store: Path) -> None:
    world = promote(result_root, store).artifacts["world"]
    assert os.stat(world / "sbin/ping").st_mode & 0o7777 == 0o555


def test_hard_link_to_a_file_outside_the_artifact(tmp_path: Path, store: Path) -> None:
    def link_out(root: Path) -> None:
        (tmp_path / "secret").write_bytes(b"outside")
        os.link(tmp_path / "secret", root / "artifacts/world/etc/inside")
    root = build_result_root(tmp_path / "r", extra=link_out)
    _refused(root, store, ExternalHardLinkError, "outside the artifact")


def test_hard_link_across_artifacts(tmp_path: Path, store: Path) -> None:
    def link_across(root: Path) -> None:
        os.link(root / "artifacts/kernel/boot/kernel/if_em.ko", root / "artifacts/world/em.ko")
    root = build_result_root(tmp_path / "r", extra=link_across)
    _refused(root, store, ExternalHardLinkError, "outside the artifact")


def test_reserved_names_are_refused(tmp_path: Path, store: Path) -> None:
    root = build_result_root(
        tmp_path / "r",
        extra=lambda r: (r / "artifacts/headers/.fruix-native-build-object.scm").write_text("x"))
    _refused(root, store, PromotionInputError, "reserved")


def test_unusual_names_are_fine(tmp_path: Path, store: Path) -> None:
    def odd(root: Path) -> None:
        world = root / "artifacts/world"
        (world / os.fsdecode(b"bytes-\xff\xfe")).write_bytes(b"1")
        (world / "new\nline").write_bytes(b"2")
        (world / "#hash \\ back").write_bytes(b"3")
    root = build_result_root(tmp_path / "r", extra=odd)
    from fruix_core.promotion import verify
    promote(root, store)
    assert verify(store).ok


def test_file_growing_while_read(tmp_path: Path, store: Path) -> None:
    def big(root: Path) -> None:
        (root / "artifacts/world/usr/lib").mkdir(parents=True)
        (root / "artifacts/world/usr/lib/libgrow.so").write_bytes(b"\0" * (6 << 20))
    root = build_result_root(tmp_path / "r", extra=big)
    growing = root / "artifacts/world/usr/lib/libgrow.so"

    def being_read() -> bool:
        fds = Path("/proc/self/fd")
        return any(os.path.realpath(fd) == str(growing) for fd in fds.iterdir())

    def grow(state) -> None:
        # Append once, while the engine holds the file open and is part-way through it.
        if growing.stat().st_size == 6 << 20 and being_read():
            with open(growing, "ab") as stream:
                stream.write(b"more")

    with pytest.raises(TreeChangedError, match="changed while being read"):
        promote(root, store, progress=grow)
    assert [n for n in os.listdir(store) if not n.startswith(".")] == []
    assert not [n for n in os.listdir(store) if n.startswith(".tmp-")]


def test_entries_must_not_nest(result_root: Path, store: Path) -> None:
    # The headers key file, where the nested entry would have it: only nesting is wrong.
    nested = result_root / "artifacts/world/usr/usr/include/sys"
    nested.mkdir(parents=True)
    shutil.copy(result_root / "artifacts/headers/usr/include/sys/param.h", nested)
    _rewrite_entry(result_root, "headers", path="artifacts/world/usr")
    entry = read_promotion(result_root / "promotion.scm").artifact("headers")
    assert isinstance(entry, ArtifactEntry)
    _refused(result_root, store, PromotionInputError, "inside artifact tree")
