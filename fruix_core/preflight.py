"""Checks a run passes before anything expensive: no result root, guest or phase yet.

::

    executor and guest fit together     an executor that builds here takes no guest;
                                        one that builds in a guest needs one     exit 2
    the source tree exists              executors that build on this machine      exit 2
    a resume has what it continues      its build area (executors building here)  exit 2
    the store can be written            when the run promotes                     exit 3
    results and build directories       created when missing, written by a probe  exit 3
    free space                          paths.min_free on each file system        exit 3

A directory counts as writable only when this user may write it
(:func:`os.access`) *and* a probe file can really be created and removed in
it: root passes every permission check, yet a read-only mount, an immutable
directory or a full file system still refuses the probe. A dry run
(``create=False``) creates no directory: it probes the nearest existing
parent instead, and leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fruix_core.config import Config
from fruix_core.errors import (
    FruixError,
    SourceTreeError,
    StoreError,
    UsageError,
    WorkAreaError,
)
from fruix_core.resultroot import list_runs
from fruix_core.runrecord import size_text

__all__ = ["AUTO_MIN_FREE", "FileSystemSpace", "Preflight", "runs_in_guest", "preflight"]

#: The least free space ``paths.min_free = "auto"`` asks for on each file system.
AUTO_MIN_FREE = 64 << 20


@dataclass(frozen=True, slots=True)
class FileSystemSpace:
    """Free and needed bytes on one file system a run writes."""

    directories: tuple[str, ...]
    free: int
    needed: int

    def as_dict(self) -> dict[str, Any]:
        return {"directories": list(self.directories), "free": self.free, "needed": self.needed}


@dataclass(frozen=True, slots=True)
class Preflight:
    """What the checks found: free space per file system, and where ``needed`` came from."""

    space: tuple[FileSystemSpace, ...]
    needed_from: str


def runs_in_guest(executor_plugin: Any) -> bool | None:
    """Whether an executor builds in a guest (``fruix_runs_in_guest``); ``None``: undeclared."""
    declared = getattr(executor_plugin, "fruix_runs_in_guest", None)
    return declared if isinstance(declared, bool) else None


def check_combination(executor: str, plugin: Any, guest: str, guest_origin: str) -> None:
    """An executor that builds here takes no guest; one that builds in a guest needs one."""
    from fruix_core.guests import no_guest_message

    in_guest = runs_in_guest(plugin)
    if in_guest is False and guest:
        raise UsageError(f"executor '{executor}' builds on this machine and uses no guest, but "
                         f"guest provider '{guest}' is configured ({guest_origin}): remove it, "
                         "or choose an executor that builds in a guest")
    if in_guest is True and not guest:
        raise UsageError(no_guest_message(executor))


def _probe(directory: Path, what: str, shown: Path, error: type[FruixError]) -> None:
    allowed = os.access(directory, os.W_OK | os.X_OK)
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-preflight-", dir=directory)
        try:  # one block of data: an empty file fits on a full file system
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except FileNotFoundError:
        pass  # a store's own clean-up may remove a .tmp- file: it was created
    except OSError as exc:
        who = f" by this user (uid {os.geteuid()})" if exc.errno in (errno.EACCES,
                                                                     errno.EPERM) else ""
        raise error(f"{what} {shown} is not writable{who}: {exc.strerror}") from None
    if not allowed:  # the probe passed, yet the permissions say no (an ACL, a race)
        raise error(f"{what} {shown} is not writable by this user (uid {os.geteuid()})")


def check_writable(path: Path, what: str, error: type[FruixError], *, create: bool) -> Path:
    """``path`` is a directory this user can write, created when missing (``create``).

    :returns: the directory that was probed: ``path``, or in a dry run its
        nearest existing parent.
    :raises error: one line naming ``what`` and ``path``.
    """
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = path if existing == path else f"{path} ({existing} is not a directory)"
        raise error(f"{what} {where} is not a directory")
    if existing != path and create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise error(f"{what} {path} cannot be created: {exc.strerror}") from None
        existing = path
    _probe(existing, what, path, error)
    return existing


def _last_sizes(results: Path) -> tuple[dict[str, int], str]:
    """``{"results": n, "build": n}`` of the newest successful run that recorded them."""
    for root in reversed(list_runs(results)):
        if root.status().state != "ok":
            continue
        meta = root.read_metadata()
        try:
            sizes = {"results": int(meta["result_root_size"]),
                     "build": int(meta.get("build_root_size", 0))}
        except (KeyError, ValueError):
            continue
        return sizes, f"the sizes of run {root.run_id}"
    return {}, "no successful run yet"


def check_space(places: Iterable[tuple[str, Path, Path]], config: Config) -> Preflight:
    """Enough free space on each file system of ``places`` ((role, path, probed directory)).

    :raises WorkAreaError: a file system has less than it needs.
    """
    if config.min_free is not None:
        per_role: dict[str, int] = {}
        source = "paths.min_free"
    else:
        per_role, source = _last_sizes(config.results)
        per_role = {**per_role, "store": per_role.get("results", 0)}
    groups: dict[int, tuple[list[str], int, Path]] = {}
    for role, path, probed in places:
        device = os.stat(probed).st_dev
        names, needed, first = groups.setdefault(device, ([], 0, probed))
        names.append(str(path))
        groups[device] = (names, needed + per_role.get(role, 0), first)
    found = []
    for names, needed, probed in groups.values():
        if config.min_free is not None:
            needed = config.min_free
        else:
            needed = max(needed, AUTO_MIN_FREE)
        stats = os.statvfs(probed)
        free = stats.f_bavail * stats.f_frsize
        found.append(FileSystemSpace(tuple(names), free, needed))
        if needed and free < needed:
            raise WorkAreaError(
                f"not enough free space for a run: {', '.join(names)}: {size_text(free)} free on "
                f"its file system, {size_text(needed)} needed ({source}; set paths.min_free to "
                "change it)")
    return Preflight(tuple(found), source)


def preflight(config: Config, *, executor: str, executor_plugin: Any, guest: str,
              guest_origin: str, promote: bool, resume: tuple[str, str] | None,
              create: bool) -> Preflight:
    """Every check before a run creates its result root (see the module's table).

    :param resume: ``(run id, phase)`` of the run ``--resume`` continues.
    :param create: create missing results and build directories (``False``:
        a dry run, nothing is created).
    :raises UsageError: exit 2, a combination or input that cannot work.
    :raises StoreError: the store cannot be written (exit 3).
    :raises WorkAreaError: a results or build directory cannot be written or
        lacks space (exit 3).
    """
    check_combination(executor, executor_plugin, guest, guest_origin)
    here = runs_in_guest(executor_plugin) is False
    if here and config.source is not None and not config.source.is_dir():
        raise SourceTreeError(f"source tree {config.source} does not exist or is not a "
                              f"directory (build.source in {config.file})")
    if here and resume is not None:
        from fruix_core.profile import PHASES

        run_id, phase = resume
        area = config.build_root / run_id
        if phase != PHASES[0].name and not area.is_dir():
            raise UsageError(f"run {run_id} cannot be resumed at {phase}: its build area "
                             f"{area} is gone (pruned?); start a new run")
    wanted: list[tuple[str, Path, str, type[FruixError]]] = []
    if promote:
        wanted.append(("store", config.store, "store", StoreError))
    wanted.append(("results", config.results, "results directory", WorkAreaError))
    if runs_in_guest(executor_plugin) is not True:  # an in-guest build area is the guest's
        wanted.append(("build", config.build_root, "build directory", WorkAreaError))
    # Probe everything first: a refusal leaves no directory behind.
    places = [(role, path, check_writable(path, what, error, create=False))
              for role, path, what, error in wanted]
    checks = check_space(places, config)
    if create:  # the store is the promotion's to create, with its own layout
        for role, path, what, error in wanted:
            if role != "store":
                check_writable(path, what, error, create=True)
    return checks
