"""Directories laid out like a Fruix guest system, for in-guest executor tests.

A guest system root made by :func:`make_guest_root` holds what an in-guest
executor expects on a real Fruix guest (whose system root is ``/``)::

    <root>/run/current-system/metadata/store-layout.scm   where the store items are
    <root>/frx/store/<32-char hash>-freebsd-source/       the source, as a store item
    <root>/usr/include/  <root>/usr/share/mk/             development overlay (optional)
    <root>/var/lib/fruix/native-builds/                   result roots
    <root>/var/tmp/                                       heavy work area

Pytest fixtures (in :mod:`fruix_core.testkit.fixtures`):

``fruix_guest_root``
    a :class:`GuestRoot` holding the bundled sample base;
``fruix_guest``
    a :class:`~fruix_core.model.Guest` for that root, reached through
    ``fruix_sshd`` (see :mod:`fruix_core.testkit.sshd`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fruix_core.guestlayout import LAYOUT_RELATIVE_PATH, StoreLayout, write_store_layout

__all__ = ["GuestRoot", "make_guest_root", "source_hash"]

_NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
STORE_DIRECTORY = "/frx/store"


@dataclass(frozen=True, slots=True)
class GuestRoot:
    """A guest system root on this machine and what it holds.

    ``source_store`` is the source's path *as the guest sees it*
    (``/frx/store/...``); ``source_dir`` is the same tree on this machine.
    """

    path: Path
    source_store: str
    source_dir: Path
    layout_file: Path
    results_dir: Path
    work_dir: Path
    closure_path: str
    development_profile_path: str

    def on_host(self, guest_path: str) -> Path:
        """This machine's path of a guest path (``/frx/store/x`` → ``<root>/frx/store/x``)."""
        return self.path / guest_path.lstrip("/")


def _base32(digest: bytes, length: int = 32) -> str:
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 32)
        chars.append(_NIX_BASE32[rest])
    return "".join(chars)


def source_hash(source_dir: Path) -> tuple[str, str]:
    """``(32-character store hash, "sha256:<NAR hash>")`` of a source tree.

    The signature is the one the ``local`` executor records for the same tree,
    so in-guest and local runs declare the same source.
    """
    from fruix_core.promotion.nar import tree_signature

    nar = tree_signature(source_dir)
    return _base32(bytes.fromhex(nar)), f"sha256:{nar}"


def make_guest_root(path: Path, source_dir: Path, *, with_overlay: bool = True,
                    host_name: str = "fruix-test-guest") -> GuestRoot:
    """Lay out a Fruix guest system root at ``path`` holding ``source_dir`` as its source store.

    :param with_overlay: create the development overlay (``usr/include``,
        ``usr/share/mk``); without it ``prepare-env`` must refuse the guest.
    """
    path = Path(path)
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"source tree not found: {source_dir}")
    path.mkdir(parents=True, exist_ok=True)
    staging = path / "frx/store/.incoming-source"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source_dir, staging, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
    digest, signature = source_hash(staging)
    source_store = f"{STORE_DIRECTORY}/{digest}-freebsd-source"
    host_source = path / source_store.lstrip("/")
    if host_source.exists():
        shutil.rmtree(staging)
    else:
        os.rename(staging, host_source)
    fake = hashlib.sha256(digest.encode()).digest()
    closure = f"{STORE_DIRECTORY}/{_base32(fake)}-fruix-system-closure"
    profile = f"{STORE_DIRECTORY}/{_base32(fake[::-1])}-fruix-development-profile"
    for item in (closure, profile):
        (path / item.lstrip("/")).mkdir(parents=True, exist_ok=True)
    layout_file = write_store_layout(path, StoreLayout(
        source_path=source_store, store_directory=STORE_DIRECTORY, source_signature=signature,
        closure_path=closure,
        development_profile_path=profile, host_name=host_name))
    if with_overlay:
        include = path / "usr/include"
        include.mkdir(parents=True, exist_ok=True)
        (include / "fruix-overlay.h").write_text("/* development overlay marker */\n")
        mk = path / "usr/share/mk"
        mk.mkdir(parents=True, exist_ok=True)
        (mk / "sys.mk").write_text("# development overlay marker\n")
    results = path / "var/lib/fruix/native-builds"
    results.mkdir(parents=True, exist_ok=True)
    work = path / "var/tmp"
    work.mkdir(parents=True, exist_ok=True)
    assert layout_file == path / LAYOUT_RELATIVE_PATH
    return GuestRoot(path=path, source_store=source_store, source_dir=host_source,
                     layout_file=layout_file, results_dir=results, work_dir=work,
                     closure_path=closure, development_profile_path=profile)
