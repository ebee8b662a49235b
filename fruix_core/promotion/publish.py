"""Turning a temporary object into a final, immutable store object.

The steps, all inside ``STORE/.tmp-<token>-<what>`` until the last one:

1. *materialise*: replay the manifest, creating directories and symlinks and
   hard-linking every file not written during ingestion from the content
   pool (members of a hard-link group link to the group's first member);
2. write the object's metadata files (mode ``0444``);
3. *canonicalise*: every directory ``0555``, every node's mtime
   :data:`~fruix_core.promotion.ingest.FIXED_MTIME` (files were written
   canonical already);
4. make it durable (``syncfs``, else fsync of every file and directory);
5. under the object's lock: if the final name exists, drop the temporary
   (the object is reused); otherwise ``rename`` it into place and fsync the
   store directory. A final name therefore always means a complete object.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from fruix_core.errors import StoreError
from fruix_core.promotion.ingest import FIXED_MTIME, canonical_mode
from fruix_core.promotion.layout import MANIFEST_FILE, StoreLayout
from fruix_core.promotion.locking import object_lock
from fruix_core.promotion.manifest import parse_manifest
from fruix_core.promotion.storeio import (
    fsync_dir,
    fsync_tree,
    have_syncfs,
    remove_tree,
    store_errors,
    syncfs,
)

__all__ = ["FSYNC_POLICIES", "canonicalise", "materialise", "publish", "write_metadata_file"]

#: ``syncfs`` (one flush of the store's file system), ``each`` (fsync every
#: file and directory) or ``none`` (no flush; benchmarks and throwaway stores).
FSYNC_POLICIES = ("syncfs", "each", "none")


def _link_from_pool(layout: StoreLayout, digest: str, executable: bool, dest: str) -> None:
    source = layout.pool_entry(digest, executable)
    try:
        os.link(source, dest)
    except FileNotFoundError:
        raise StoreError(f"content pool entry {source} vanished while publishing") from None
    except OSError as err:
        if err.errno != errno.EMLINK:
            raise
        # The pool inode has as many links as the file system allows: copy it.
        shutil.copyfile(source, dest, follow_symlinks=False)
        os.chmod(dest, 0o555 if executable else 0o444)
        os.utime(dest, (FIXED_MTIME, FIXED_MTIME))


def materialise(layout: StoreLayout, temp: Path) -> None:
    """Complete the tree in ``temp`` from its manifest and the content pool."""
    base = os.fsencode(temp)
    with store_errors(f"cannot build {temp}"), open(temp / MANIFEST_FILE, "rb") as stream:
        for entry in parse_manifest(stream, str(temp / MANIFEST_FILE)):
            if not entry.rel:
                continue
            dest = base + b"/" + entry.rel
            if entry.type == "dir":
                os.makedirs(dest, exist_ok=True)
            elif entry.type == "link":
                os.symlink(entry.link or b"", dest)
            elif entry.hardlink is not None:
                os.link(base + b"/" + entry.hardlink, dest)
            elif not os.path.lexists(dest):
                _link_from_pool(layout, entry.sha256 or "", bool((entry.mode or 0) & 0o100),
                                os.fsdecode(dest))


def write_metadata_file(temp: Path, name: str, text: str | bytes) -> None:
    """Write one of the object's own files, read-only."""
    data = text.encode("ascii") if isinstance(text, str) else text
    path = temp / name
    with store_errors(f"cannot write {path}"):
        with open(path, "wb") as stream:
            stream.write(data)
        os.chmod(path, 0o444)


def canonicalise(temp: Path) -> None:
    """Directories ``0555``; every node's mtime fixed; files already read-only."""
    with store_errors(f"cannot canonicalise {temp}"):
        for top, dirs, files in os.walk(temp, topdown=False):
            for name in files:
                path = os.path.join(top, name)
                if os.path.islink(path):
                    os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
            for name in dirs:
                path = os.path.join(top, name)
                if os.path.islink(path):
                    os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
                else:
                    os.chmod(path, canonical_mode(0, is_dir=True))
                    os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        manifest = os.path.join(temp, MANIFEST_FILE)
        if os.path.isfile(manifest):
            os.chmod(manifest, 0o444)
        for name in os.listdir(temp):
            path = os.path.join(temp, name)
            if not os.path.islink(path) and os.path.isfile(path):
                os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        os.chmod(temp, 0o555)
        os.utime(temp, (FIXED_MTIME, FIXED_MTIME))


def _make_durable(layout: StoreLayout, temp: Path, policy: str) -> None:
    with store_errors(f"cannot flush {temp} to disk"):
        if policy == "syncfs" and have_syncfs():
            syncfs(layout.root)
        elif policy in ("syncfs", "each"):
            fsync_tree(temp)
            fsync_dir(layout.links)


def publish(layout: StoreLayout, temp: Path, name: str, *, fsync: str,
            prepare: Callable[[], None] | None = None) -> bool:
    """Move ``temp`` to ``STORE/name`` unless that object exists.

    Under the object's lock: when ``STORE/name`` exists, ``temp`` is removed;
    otherwise ``prepare()`` finishes ``temp`` (materialise, metadata,
    canonicalise), it is made durable, renamed into place, and the store
    directory fsynced.

    :returns: ``True`` when published, ``False`` when the object already existed.
    """
    final = layout.object(name)
    with object_lock(layout, name):
        if os.path.lexists(final):
            remove_tree(temp)
            return False
        if prepare is not None:
            prepare()
        _make_durable(layout, temp, fsync)
        with store_errors(f"cannot publish {final}"):
            os.rename(temp, final)
            if fsync != "none":
                fsync_dir(layout.root)
    return True
