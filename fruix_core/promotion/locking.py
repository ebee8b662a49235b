"""Per-object publish locks, owner liveness, and removal of stale temporaries.

A promoting process holds ``STORE/.locks/owner-<token>.lock`` (``flock``)
for as long as it lives; its temporary objects are ``STORE/.tmp-<token>-*``.
The kernel drops the lock when the process dies, however it dies, so another
promoter can tell crash leftovers (lock free) from work in progress (lock
held) and remove only the former. Publishing an object holds
``STORE/.locks/<name>.lock`` exclusively, so one process at a time decides
whether the name exists and renames into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import structlog

from fruix_core.promotion.layout import StoreLayout
from fruix_core.promotion.storeio import remove_tree, store_errors

__all__ = ["OwnerLock", "object_lock", "remove_stale_temporaries"]

log = structlog.get_logger(__name__)

_TEMP_PREFIX = ".tmp-"


class OwnerLock:
    """This process's liveness lock in a store; ``token`` names its temporaries."""

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout
        self.token = f"{os.getpid()}{secrets.token_hex(4)}"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Create the owner lock file already locked (locked under a temporary name,
        then renamed), so no one ever sees it unlocked while this process lives."""
        path = self.layout.owner_lock(self.token)
        fresh = path.with_name(f".new-{path.name}")
        with store_errors(f"cannot create lock {path}"):
            self._fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL
                               | getattr(os, "O_CLOEXEC", 0), 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            os.rename(fresh, path)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.layout.owner_lock(self.token))
        os.close(self._fd)
        self._fd = None


@contextlib.contextmanager
def object_lock(layout: StoreLayout, name: str) -> Iterator[None]:
    """Hold the exclusive publish lock of the object ``name``."""
    path = layout.lock(name)
    with store_errors(f"cannot lock {path}"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with store_errors(f"cannot lock {path}"):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _owner_alive(layout: StoreLayout, token: str) -> bool:
    """False when no process holds the owner lock of ``token``.

    The lock file is created (and locked) before any temporary of its owner,
    so a temporary without a lock file is a leftover too.
    """
    try:
        fd = os.open(layout.owner_lock(token), os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return True
    # Dead owner: we hold its lock now; drop the file while holding it.
    with contextlib.suppress(OSError):
        os.unlink(layout.owner_lock(token))
    os.close(fd)
    return False


def remove_stale_temporaries(layout: StoreLayout, own_token: str) -> list[str]:
    """Remove temporaries whose owner is dead; returns the names removed."""
    removed: list[str] = []
    try:
        names = os.listdir(layout.root)
    except OSError:
        return removed
    verdicts: dict[str, bool] = {}
    for name in sorted(names):
        if not name.startswith(_TEMP_PREFIX):
            continue
        token = name[len(_TEMP_PREFIX):].split("-", 1)[0]
        if token == own_token:
            continue
        if token not in verdicts:
            verdicts[token] = _owner_alive(layout, token)
        if verdicts[token]:
            continue
        try:
            remove_tree(layout.root / name)
        except OSError as err:
            log.warning("store.stale_temporary.unremovable", path=str(layout.root / name),
                        error=err.strerror)
            continue
        removed.append(name)
        log.info("store.stale_temporary.removed", path=str(layout.root / name))
    for name in sorted(os.listdir(layout.locks)) if layout.locks.is_dir() else []:
        if name.startswith("owner-") and name.endswith(".lock"):
            token = name[len("owner-"):-len(".lock")]
            if token != own_token and token not in verdicts:
                _owner_alive(layout, token)  # removes the file when its owner is dead
    return removed


def ensure_store(layout: StoreLayout) -> None:
    """Create the store directory and its bookkeeping directories."""
    root = layout.root
    with store_errors(f"cannot create store directory {root}"):
        if os.path.lexists(root) and not os.path.isdir(root):
            raise NotADirectoryError(20, "exists and is not a directory", str(root))
        os.makedirs(root, exist_ok=True)
        for sub in (layout.links, layout.locks):
            os.makedirs(sub, exist_ok=True)
        probe = Path(root) / f".probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.unlink(probe)
