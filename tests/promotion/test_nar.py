"""The tree signature equals ``nix-hash --type sha256`` (golden tests)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from fruix_core.errors import PromotionInputError
from fruix_core.promotion.nar import (
    CHUNK_SIZE,
    SpecialFileError,
    nar_string,
    tree_signature,
)

NIX_HASH = shutil.which("nix-hash")
#: Golden tests against nix-hash: they fail, never skip, when nix-bin is missing.
needs_nix = pytest.mark.usefixtures("nix_hash_installed")


@pytest.fixture
def nix_hash_installed() -> None:
    from fruix_core.testkit import require_tool

    require_tool("nix-hash", "nix-bin")


def nix_hash(path: Path) -> str:
    assert NIX_HASH is not None
    out = subprocess.run([NIX_HASH, "--type", "sha256", os.fsencode(path)], check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


def test_nar_string_padding() -> None:
    assert nar_string(b"") == b"\0" * 8
    assert nar_string(b"abc") == b"\3" + b"\0" * 7 + b"abc" + b"\0" * 5
    assert len(nar_string(b"x" * 8)) == 16


def _tree(root: Path) -> Path:
    (root / "empty-dir").mkdir(parents=True)
    (root / "d/e/f").mkdir(parents=True)
    (root / "plain").write_bytes(b"hello")
    (root / "eight-bytes").write_bytes(b"12345678")
    (root / "empty-file").write_bytes(b"")
    (root / "d/exec").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "d/exec", 0o755)
    (root / "d/group-exec-only").write_bytes(b"x")
    os.chmod(root / "d/group-exec-only", 0o610)
    (root / "d/setuid").write_bytes(b"suid")
    os.chmod(root / "d/setuid", 0o4755)
    os.symlink("/usr/share/zoneinfo/UTC", root / "abs-link")
    os.symlink("../plain", root / "d/rel-link")
    os.symlink("dangling/target", root / "d/e/dangling")
    os.symlink("d", root / "dir-link")
    (root / "caf\u00e9 \u2603.txt").write_text("unicode")
    (root / os.fsdecode(b"latin1-\xe9")).write_bytes(b"not utf-8 name")
    for name in ("B", "a", "_", "Z", "aa", "a.b", "a-b"):
        (root / "d/e/f" / name).write_bytes(name.encode())
    (root / "big").write_bytes(os.urandom(CHUNK_SIZE + 12345))
    os.link(root / "plain", root / "d/hardlink-to-plain")
    return root


@needs_nix
def test_golden_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    assert tree_signature(root) == nix_hash(root)


@needs_nix
@pytest.mark.parametrize("make", ["file", "exec", "symlink", "empty-dir"])
def test_golden_single_nodes(tmp_path: Path, make: str) -> None:
    path = tmp_path / "node"
    if make == "file":
        path.write_bytes(b"data")
    elif make == "exec":
        path.write_bytes(b"data")
        os.chmod(path, 0o700)
    elif make == "symlink":
        os.symlink("/somewhere", path)
    else:
        path.mkdir()
    assert tree_signature(path) == nix_hash(path)


@needs_nix
def test_golden_sample_artifacts(result_root: Path) -> None:
    for kind in ("world", "kernel", "headers", "bootloader"):
        tree = result_root / "artifacts" / kind
        assert tree_signature(tree) == nix_hash(tree)


def test_signature_ignores_times_owners_and_other_mode_bits(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    before = tree_signature(root)
    os.utime(root / "plain", (1, 1))
    os.chmod(root / "plain", 0o600)
    os.chmod(root / "d/setuid", 0o555)
    assert tree_signature(root) == before
    os.chmod(root / "plain", 0o700)
    assert tree_signature(root) != before


def test_special_files_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SpecialFileError, match="FIFO"):
        tree_signature(tmp_path)
    os.unlink(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(SpecialFileError, match="socket"):
            tree_signature(tmp_path)
    finally:
        sock.close()
    assert issubclass(SpecialFileError, PromotionInputError)
