"""Checks a result root before anything is written to the store.

:func:`validate_result_root` refuses, with one clear
:class:`~fruix_core.errors.PromotionInputError`, a result root whose status is
not ``ok``, whose ``promotion.scm`` is malformed, that lacks an artifact or a
required key file, whose recorded digests do not match the staged files,
whose metadata paths escape it (absolute, ``..``, or through a symlink), or
whose artifact trees hold device nodes, FIFOs, sockets, names reserved for
the object's own files, or hard links to files outside the artifact, or
files this process cannot read, or a store inside an artifact tree. Symlinks
are never followed; their targets are opaque bytes.

Validation opens the result root and each artifact directory once and keeps
them open in the :class:`ValidatedRoot`; ingestion walks from those
descriptors and repeats every check on what it reads (:class:`TreeCheck` is
shared), so the tree stored is the tree validated.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from fruix_core.errors import MetadataError, PromotionInputError
from fruix_core.model import ARTIFACT_KINDS, ArtifactEntry, Promotion
from fruix_core.profile import KEY_FILES
from fruix_core.promotion import sexp
from fruix_core.promotion.display import shown
from fruix_core.promotion.layout import RESERVED_NAMES
from fruix_core.promotion.nar import walk
from fruix_core.promotion.safeio import (
    UnsafeNodeError,
    kind_of,
    open_dir_at,
    open_regular_at,
    read_regular,
)
from fruix_core.promotion.schema import check_relative_path, loads_promotion
from fruix_core.promotion.statcache import TreeFingerprint

__all__ = [
    "EscapingPathError",
    "ExternalHardLinkError",
    "MissingArtifactError",
    "DigestMismatchError",
    "StagedArtifact",
    "TreeCheck",
    "ValidatedRoot",
    "open_inside",
    "required_key_files",
    "sha256_fd",
    "validate_result_root",
]


class MissingArtifactError(PromotionInputError):
    """An artifact or one of its required key files is absent."""


class DigestMismatchError(PromotionInputError):
    """A key file's sha256 differs from the one recorded in promotion.scm."""


class EscapingPathError(PromotionInputError):
    """A path in the metadata leaves the result root (absolute, ``..``, symlink)."""


class ExternalHardLinkError(PromotionInputError):
    """A file in an artifact is hard-linked to a file outside that artifact."""


@dataclass(frozen=True, slots=True)
class StagedArtifact:
    """One artifact tree, checked: where it is, how big, and its open directory.

    ``fd`` is the artifact directory opened (without following symlinks)
    during validation; ingestion walks from it, so the tree ingested is the
    tree validated even if the result root is rearranged in between.
    """

    kind: str
    path: Path
    files: int
    bytes: int
    entry: ArtifactEntry
    fd: int = -1
    #: Stat fingerprint of the tree as validated (:mod:`~fruix_core.promotion.statcache`).
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class ValidatedRoot:
    """A result root that passed every check; :meth:`close` releases its descriptors."""

    root: Path
    promotion: Promotion
    artifacts: tuple[StagedArtifact, ...]
    fd: int = -1

    @property
    def files(self) -> int:
        return sum(a.files for a in self.artifacts)

    @property
    def bytes(self) -> int:
        return sum(a.bytes for a in self.artifacts)

    def close(self) -> None:
        """Close the directory descriptors held since validation."""
        for fd in [a.fd for a in self.artifacts] + [self.fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _status(root_fd: int, root: Path) -> None:
    try:
        data = read_regular("status", dir_fd=root_fd, limit=256)
    except FileNotFoundError:
        raise PromotionInputError(
            f"{shown(root)}: not a result root (no status file)") from None
    except OSError as err:
        raise PromotionInputError(
            f"{shown(root)}/status: cannot read: {err.strerror}") from None
    status = data[:256].decode("utf-8", "replace").strip()
    if status != "ok":
        first = status.splitlines()[0] if status else "empty"
        raise PromotionInputError(
            f"{shown(root)}: result root is not complete (status: {shown(first)!r}); "
            "refusing to promote")


def open_inside(root_fd: int, root: Path, rel: str, *, what: str,
                directory: bool) -> tuple[int, os.stat_result]:
    """Open ``root/rel`` relative to ``root_fd``, one component at a time.

    No component may be a symlink (refused, never followed); the last must be a
    directory (``directory``) or a regular file.

    :raises EscapingPathError: for unclean paths or symlinks on the way.
    :raises MissingArtifactError: when a component does not exist or has the wrong type.
    """
    problem = check_relative_path(rel)
    if problem:
        raise EscapingPathError(f"{what} {shown(rel)!r} {problem}")
    parts = rel.split("/")
    fd = os.dup(root_fd)
    current = root
    try:
        for index, part in enumerate(parts):
            current = current / part
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise MissingArtifactError(
                    f"{what} {shown(rel)!r} is missing ({shown(current)})") from None
            except NotADirectoryError:
                raise MissingArtifactError(
                    f"{what} {shown(rel)!r}: a component is not a directory") from None
            if stat.S_ISLNK(st.st_mode):
                raise EscapingPathError(
                    f"{what} {shown(rel)!r} goes through a symlink ({shown(current)}); "
                    "symlinks are not followed")
            last = index == len(parts) - 1
            if last and not directory:
                if not stat.S_ISREG(st.st_mode):
                    raise PromotionInputError(
                        f"{what} {shown(rel)!r} is a {kind_of(st.st_mode)}, not a regular "
                        "file")
                child, st = open_regular_at(part, fd, st)
            else:
                if not stat.S_ISDIR(st.st_mode):
                    raise MissingArtifactError(
                        f"{what} {shown(rel)!r}: {shown(current)} is a "
                        f"{kind_of(st.st_mode)}, not a directory")
                child, st = open_dir_at(part, fd, st)
            os.close(fd)
            fd = child
        return fd, st
    except UnsafeNodeError as err:
        os.close(fd)
        raise PromotionInputError(f"{what} {shown(rel)!r}: {err.strerror}; the result root "
                                  "changed while it was checked") from None
    except OSError as err:
        os.close(fd)
        if isinstance(err, PromotionInputError):
            raise
        raise PromotionInputError(f"{shown(current)}: cannot open: {err.strerror}") from None
    except BaseException:
        os.close(fd)
        raise


def sha256_fd(fd: int) -> str:
    """SHA-256 of an open file, read from its start."""
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def required_key_files(entry: ArtifactEntry) -> dict[str, str | None]:
    """Key files of an artifact: rel -> recorded sha256 (``None``: must merely exist)."""
    wanted: dict[str, str | None] = {rel: None for rel in KEY_FILES.get(entry.kind, ())[:1]}
    wanted.update(dict(entry.files))
    return wanted


def _check_key_files(root: Path, tree_fd: int, tree: Path, entry: ArtifactEntry) -> None:
    for rel, expected in sorted(required_key_files(entry).items()):
        fd, _st = open_inside(tree_fd, tree, rel, what=f"{entry.kind} key file",
                              directory=False)
        try:
            actual = sha256_fd(fd)
        except OSError as err:
            raise PromotionInputError(
                f"{shown(tree / rel)}: cannot read: {err.strerror}") from None
        finally:
            os.close(fd)
        if expected is not None and actual != expected:
            raise DigestMismatchError(
                f"{entry.kind} key file {shown(rel)!r}: sha256 is {actual}, promotion.scm "
                f"records {expected} ({shown(root / 'promotion.scm')})")


class TreeCheck:
    """Metadata-only checks of an artifact tree, shared by validation and ingestion.

    Call :meth:`entry` for every node; then :meth:`finish`.
    """

    def __init__(self, kind: str, tree: Path, store_id: tuple[int, int] | None) -> None:
        self.kind = kind
        self.tree = tree
        self.store_id = store_id
        self.files = 0
        self.bytes = 0
        self._inside: dict[tuple[int, int], int] = {}
        self._first: dict[tuple[int, int], tuple[int, bytes]] = {}

    def entry(self, rel: bytes, st: os.stat_result) -> None:
        if rel and b"/" not in rel and os.fsdecode(rel) in RESERVED_NAMES:
            raise PromotionInputError(
                f"{self.kind} artifact {shown(self.tree)}: top-level name {shown(rel)!r} is "
                "reserved for the store object's own metadata")
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if self.store_id is not None and (st.st_dev, st.st_ino) == self.store_id:
                raise PromotionInputError(
                    f"{self.kind} artifact: {shown(self.tree / os.fsdecode(rel))} is the store "
                    "itself; a store inside an artifact tree is refused")
        elif stat.S_ISREG(mode):
            self.files += 1
            self.bytes += st.st_size
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                self._inside[key] = self._inside.get(key, 0) + 1
                self._first.setdefault(key, (st.st_nlink, rel))
        elif stat.S_ISLNK(mode):
            self.files += 1

    def finish(self) -> None:
        for key, (nlink, rel) in self._first.items():
            if self._inside[key] < nlink:
                raise ExternalHardLinkError(
                    f"{self.kind} artifact: {shown(self.tree / os.fsdecode(rel))} has {nlink} "
                    f"hard links but only {self._inside[key]} inside the artifact; a hard link "
                    "to a file outside the artifact is refused")


def _check_tree(kind: str, tree_fd: int, tree: Path,
                store_id: tuple[int, int] | None) -> tuple[int, int, str]:
    check = TreeCheck(kind, tree, store_id)
    fingerprint = TreeFingerprint(kind)

    def on_entry(rel: bytes, st: os.stat_result, target: bytes | None) -> None:
        check.entry(rel, st)
        fingerprint.add(rel, st, target)

    try:
        if not os.listdir(tree_fd) and kind == "headers":
            raise MissingArtifactError(f"headers artifact {shown(tree)} is empty")
        walk(root_fd=tree_fd, display=os.fsencode(tree), with_contents=False,
             on_entry=on_entry)
    except PromotionInputError:
        raise
    except OSError as err:
        raise PromotionInputError(
            f"{kind} artifact: cannot read {shown(err.filename or tree)}: "
            f"{err.strerror}") from None
    check.finish()
    return check.files, check.bytes, fingerprint.hexdigest()


def store_identity(store: Path | None) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the store directory, when it exists."""
    if store is None:
        return None
    try:
        st = os.stat(store)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def validate_result_root(root: str | Path, store: Path | None = None) -> ValidatedRoot:
    """Check everything about ``root`` that can be checked without writing.

    The returned :class:`ValidatedRoot` holds the result root and every
    artifact directory open; the caller must :meth:`~ValidatedRoot.close` it.

    :param store: the store promoted into; refused when inside an artifact tree
        (or holding one).
    :raises PromotionInputError: (or a subclass, :class:`MetadataError` for
        promotion.scm) naming the first problem found.
    """
    root = Path(root).absolute()
    try:
        # The operator's own argument may go through symlinks; nothing inside it will.
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise PromotionInputError(
            f"{shown(root)}: result root does not exist or is not a directory") from None
    staged: list[StagedArtifact] = []
    try:
        _status(root_fd, root)
        promotion_file = root / "promotion.scm"
        try:
            data = read_regular("promotion.scm", dir_fd=root_fd, limit=sexp.MAX_INPUT_BYTES)
        except OSError as err:
            raise MetadataError(f"cannot read: {err.strerror or err}",
                                file=shown(promotion_file)) from None
        promotion = loads_promotion(data, source=shown(promotion_file))
        kinds = [entry.kind for entry in promotion.artifacts]
        missing = [kind for kind in ARTIFACT_KINDS if kind not in kinds]
        if missing:
            raise MetadataError(f"artifacts: no entry for {', '.join(missing)}",
                                file=shown(promotion_file))
        store_id = store_identity(store)
        for kind in ARTIFACT_KINDS:
            entry = promotion.artifact(kind)
            tree = root / entry.path
            fd, _st = open_inside(root_fd, root, entry.path, what=f"{kind} artifact path",
                                  directory=True)
            staged.append(StagedArtifact(kind=kind, path=tree, files=0, bytes=0, entry=entry,
                                         fd=fd))
            _check_key_files(root, fd, tree, entry)
            files, size, fingerprint = _check_tree(kind, fd, tree, store_id)
            staged[-1] = replace(staged[-1], files=files, bytes=size, fingerprint=fingerprint)
        _check_disjoint(staged)
        _check_store_outside(staged, store)
    except BaseException:
        ValidatedRoot(root=root, promotion=None, artifacts=tuple(staged),  # type: ignore[arg-type]
                      fd=root_fd).close()
        raise
    return ValidatedRoot(root=root, promotion=promotion, artifacts=tuple(staged), fd=root_fd)


def _check_disjoint(staged: list[StagedArtifact]) -> None:
    paths = [a.path for a in staged]
    for a in paths:
        for b in paths:
            if a != b and a.is_relative_to(b):
                raise EscapingPathError(
                    f"artifact tree {shown(a)} lies inside artifact tree {shown(b)}")


def _check_store_outside(staged: list[StagedArtifact], store: Path | None) -> None:
    if store is None:
        return
    where = Path(os.path.realpath(store))
    for artifact in staged:
        tree = Path(os.path.realpath(artifact.path))
        if where == tree or where.is_relative_to(tree):
            raise PromotionInputError(
                f"the store {shown(store)} lies inside the {artifact.kind} artifact tree "
                f"{shown(artifact.path)}; choose a store outside the result root")
        if tree.is_relative_to(where):
            raise PromotionInputError(
                f"the {artifact.kind} artifact tree {shown(artifact.path)} lies inside the "
                f"store {shown(store)}")
