"""Fixtures: small synthetic result roots and empty stores."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from fruix_core.model import (
    ARTIFACT_KINDS,
    ArtifactEntry,
    BaseMetadata,
    BuildPolicy,
    Promotion,
    SourceStore,
)
from fruix_core.promotion.schema import write_promotion

PHASES = ("buildworld", "buildkernel", "installworld", "distribution", "installkernel")


def sample_promotion(**changes) -> Promotion:
    """A valid promotion description (artifact entries filled in by build_result_root)."""
    promotion = Promotion(
        executor="local",
        executor_version="0.1.0",
        run_id="run-0001",
        guest_host_name="builder.example",
        base=BaseMetadata(),
        source=SourceStore(path="/frx/store/aaaa-freebsd-source",
                           signature="sha256:" + "ab" * 32),
        policy=BuildPolicy(phases=PHASES, jobs=2, environment_policy="sanitised-v1"),
        artifacts=(),
        closure_path="/frx/store/bbbb-closure",
        development_profile_path=None,
    )
    return replace(promotion, **changes)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def populate_world(tree: Path, *, salt: bytes = b"") -> None:
    """A tiny FreeBSD-shaped world: sh, a rescue hard-link farm, setuid, symlinks."""
    _write(tree / "bin/sh", b"#!sh\x00ELF" + salt, 0o555)
    _write(tree / "bin/cat", b"cat binary" + salt, 0o555)
    _write(tree / "etc/master.passwd", b"root:*:0:0::0:0:Charlie &:/root:/bin/sh\n", 0o600)
    _write(tree / "etc/rc.conf", b'hostname="fruix"\n')
    _write(tree / "sbin/ping", b"ping" + salt, 0o4555)
    _write(tree / "usr/bin/wall", b"wall", 0o2555)
    _write(tree / "rescue/rescue", b"crunched rescue binary" * 50, 0o555)
    for name in ("ls", "cp", "mv"):
        os.link(tree / "rescue/rescue", tree / "rescue" / name)
    (tree / "tmp").mkdir()
    os.chmod(tree / "tmp", 0o1777)
    (tree / "var/empty").mkdir(parents=True)
    os.symlink("/usr/share/zoneinfo/UTC", tree / "etc/localtime")
    os.symlink("../bin/cat", tree / "usr/bin/cat")
    _write(tree / "usr/share/doc/caf\u00e9 notes.txt", "unicode \u2603\n".encode())
    _write(tree / "usr/share/empty-file", b"")


def populate(kind: str, tree: Path, salt: bytes = b"") -> None:
    tree.mkdir(parents=True, exist_ok=True)
    if kind == "world":
        populate_world(tree, salt=salt)
    elif kind == "kernel":
        _write(tree / "boot/kernel/kernel", b"\x7fELF kernel" + salt, 0o555)
        _write(tree / "boot/kernel/if_em.ko", b"module", 0o555)
    elif kind == "headers":
        _write(tree / "usr/include/stdio.h", b"int printf(const char *, ...);\n")
        _write(tree / "usr/include/sys/types.h", b"typedef int pid_t;\n")
        _write(tree / "usr/include/sys/param.h", b"#define __FreeBSD_version 1500000\n")
    elif kind == "bootloader":
        _write(tree / "boot/loader", b"loader" + salt, 0o555)
        _write(tree / "boot/defaults/loader.conf", b'kernel="kernel"\n')


KEY = {"world": "bin/sh", "kernel": "boot/kernel/kernel", "bootloader": "boot/loader",
       "headers": "usr/include/sys/param.h"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finish_result_root(root: Path, promotion: Promotion | None = None,
                       status: str = "ok\n") -> Promotion:
    """Write promotion.scm (with key-file digests of what is staged) and status."""
    entries = []
    for kind in ARTIFACT_KINDS:
        tree = root / "artifacts" / kind
        files = ((KEY[kind], sha256(tree / KEY[kind])),) if kind in KEY else ()
        entries.append(ArtifactEntry(kind=kind, path=f"artifacts/{kind}", files=files))
    promotion = replace(promotion or sample_promotion(), artifacts=tuple(entries))
    write_promotion(promotion, root / "promotion.scm")
    (root / "status").write_text(status)
    (root / "metadata").write_text(f"run_id={promotion.run_id}\n")
    (root / "logs").mkdir(exist_ok=True)
    return promotion


def build_result_root(root: Path, *, salt: bytes = b"", promotion: Promotion | None = None,
                      extra: Callable[[Path], None] | None = None) -> Path:
    """A complete synthetic result root at ``root``."""
    for kind in ARTIFACT_KINDS:
        populate(kind, root / "artifacts" / kind, salt)
    if extra is not None:
        extra(root)
    finish_result_root(root, promotion)
    return root


@pytest.fixture
def result_root(tmp_path: Path) -> Path:
    return build_result_root(tmp_path / "result")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite shares a busy machine: durability is covered by test_publish's own cases.
    monkeypatch.setenv("FRUIX_STORE_FSYNC", "none")


@pytest.fixture
def guile_installed() -> None:
    """Guile's reader is the golden check of our S-expressions."""
    from fruix_core.testkit import require_tool

    require_tool("guile", "guile-3.0")
