"""Per-object publish locks, owner liveness, and removal of stale temporaries.

A promoting process holds ``STORE/.locks/owner-<token>.lock`` (``flock``)
for as long as it lives; its temporary objects are ``STORE/.tmp-<token>-*``.
The kernel drops the lock when the process dies, however it dies, so another
promoter can tell crash leftovers (lock free) from work in progress (lock
held) and remove only the former. Publishing an object holds
``STORE/.locks/<name>.lock`` exclusively, so one process at a time decides
whether the name exists and renames into it.

The collector (``fruix store gc``) holds ``STORE/.locks/gc.lock``
exclusively while it decides and deletes; every promotion holds it shared
from before it looks for existing objects until after it has published, so
an object a promotion is about to reuse or has just published is never
collected under it (Nix's global GC lock, simplified).

Every bookkeeping file is opened with ``O_NOFOLLOW`` (and created with
``O_EXCL`` where it is new), and ``.links``/``.locks`` must be real
directories owned by the store's owner: a planted symlink is refused, never
followed out of the store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import structlog

from fruix_core.errors import StoreError
from fruix_core.promotion.display import shown
from fruix_core.promotion.layout import StoreLayout
from fruix_core.promotion.storeio import remove_tree, store_errors

__all__ = [
    "OwnerLock",
    "check_store",
    "ensure_store",
    "gc_lock",
    "object_lock",
    "remove_stale_temporaries",
]

_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

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
        for _attempt in range(100):
            path = self.layout.owner_lock(self.token)
            fresh = path.with_name(f".new-{path.name}")
            with store_errors(f"cannot create lock {shown(path)}"):
                fd = os.open(fresh, _LOCK_FLAGS | os.O_EXCL, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    os.rename(fresh, path)
                except FileNotFoundError:
                    # Another promoter found it unlocked between our create and flock and
                    # removed it as a crash leftover: start again under a new token.
                    os.close(fd)
                    self.token = f"{os.getpid()}{secrets.token_hex(4)}"
                    continue
            self._fd = fd
            return
        raise StoreError(f"cannot create an owner lock in {shown(self.layout.locks)}")

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
        fd = _open_lock(path)
    try:
        with store_errors(f"cannot lock {path}"):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int:
    try:
        fd = os.open(path, _LOCK_FLAGS, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StoreError(f"{shown(path)} is a symlink; the store's lock files are never "
                             "followed (remove it)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{shown(path)} is not a regular file; refusing to use it as a lock")
    return fd


@contextlib.contextmanager
def gc_lock(layout: StoreLayout, *, exclusive: bool) -> Iterator[None]:
    """Hold the store-wide collector lock: shared (promoting) or exclusive (collecting)."""
    path = layout.gc_lock
    with store_errors(f"cannot lock {shown(path)}"):
        fd = _open_lock(path)
    try:
        with store_errors(f"cannot lock {shown(path)}"):
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _owner_alive(layout: StoreLayout, token: str) -> bool:
    """False when no process holds the owner lock of ``token``.

    The lock file is created (and locked) before any temporary of its owner,
    so a temporary without a lock file is a leftover too.
    """
    try:
        fd = os.open(layout.owner_lock(token), os.O_RDWR | os.O_NOFOLLOW
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    except OSError:
        return True  # not ours to judge (a planted symlink): leave its temporaries
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
    try:
        pool = [layout.links / n for n in os.listdir(layout.links) if n.startswith(_TEMP_PREFIX)]
    except OSError:
        pool = []
    for path in [layout.root / n for n in sorted(names)] + pool:
        name = path.name
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
            remove_tree(path)
        except OSError as err:
            log.warning("store.stale_temporary.unremovable", path=shown(path),
                        error=err.strerror)
            continue
        removed.append(name)
        log.info("store.stale_temporary.removed", path=shown(path))
    for name in sorted(os.listdir(layout.locks)) if layout.locks.is_dir() else []:
        if name.startswith("owner-") and name.endswith(".lock"):
            token = name[len("owner-"):-len(".lock")]
            if token != own_token and token not in verdicts:
                _owner_alive(layout, token)  # removes the file when its owner is dead
        elif name.startswith(".new-owner-") and name.endswith(".lock"):
            _remove_unlocked(layout.locks / name)
    return removed


def _remove_unlocked(path: Path) -> None:
    """Remove a lock file nobody holds (a promoter killed between create and rename)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.suppress(OSError):
            os.unlink(path)
    except BlockingIOError:
        pass  # its owner is between create and rename
    finally:
        os.close(fd)


def _real_dir(path: Path, owner: int, *, create: bool) -> None:
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{shown(path)} is not a directory (a symlink or another kind); the "
                         "store's bookkeeping is never followed elsewhere: remove it")
    if st.st_uid != owner:
        raise StoreError(f"{shown(path)} belongs to uid {st.st_uid}, not to the store's owner "
                         f"(uid {owner}); refusing to use it")


def check_store(layout: StoreLayout) -> None:
    """Refuse a store whose bookkeeping directories are symlinks or foreign (no writing)."""
    try:
        owner = os.stat(layout.root).st_uid
        for sub in (layout.links, layout.locks, layout.roots_dir):
            if os.path.lexists(sub):
                _real_dir(sub, owner, create=False)
    except OSError as err:
        raise StoreError(f"cannot inspect {shown(err.filename or layout.root)}: "
                         f"{err.strerror}") from None


def ensure_store(layout: StoreLayout) -> None:
    """Create the store directory and its bookkeeping directories, checked.

    ``.links`` and ``.locks`` must be real directories owned by the store's
    owner; the write probe is created with ``O_EXCL | O_NOFOLLOW``.
    """
    root = layout.root
    with store_errors(f"cannot create store directory {shown(root)}"):
        if os.path.lexists(root) and not os.path.isdir(root):
            raise NotADirectoryError(20, "exists and is not a directory", str(root))
        os.makedirs(root, exist_ok=True)
        owner = os.stat(root).st_uid
        for sub in (layout.links, layout.locks):
            _real_dir(sub, owner, create=True)
        probe = Path(root) / f".probe-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
        os.unlink(probe)
