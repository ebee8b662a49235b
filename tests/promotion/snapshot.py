"""A byte-exact picture of a store directory, to show a refusal changed nothing."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def snapshot(store: Path) -> dict[bytes, tuple]:
    """Every node under ``store``: type, mode, size, inode, link count, content digest.

    Directory sizes are left out too (ext4 never shrinks a directory that grew).
    """
    if not os.path.lexists(store):
        return {}
    picture: dict[bytes, tuple] = {}
    top = os.fsencode(store)
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as stream:
                    digest = hashlib.sha256(stream.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path).hex()
            else:
                digest = ""
            # A directory's own mtime moves when a temporary comes and goes; its entries
            # (compared one by one) are what must not change.
            is_dir = stat.S_ISDIR(st.st_mode)
            picture[path[len(top):]] = (st.st_mode, 0 if is_dir else st.st_size, st.st_ino,
                                         st.st_nlink, 0 if is_dir else st.st_mtime_ns, digest)
    return picture


def store_bytes(store: Path) -> bytes:
    """Everything stored, concatenated (to search for content that must not be there)."""
    out = []
    for base, _dirs, files in os.walk(os.fsencode(store)):
        for name in files:
            path = os.path.join(base, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as stream:
                    out.append(stream.read())
    return b"\0".join(out)
