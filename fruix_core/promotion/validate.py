"""Checks a result root before anything is written to the store.

:func:`validate_result_root` refuses, with one clear
:class:`~fruix_core.errors.PromotionInputError`, a result root whose status is
not ``ok``, whose ``promotion.scm`` is malformed, that lacks an artifact or a
required key file, whose recorded digests do not match the staged files,
whose metadata paths escape it (absolute, ``..``, or through a symlink), or
whose artifact trees hold device nodes, FIFOs, sockets, names reserved for
the object's own files, or hard links to files outside the artifact. Symlinks
are never followed; their targets are opaque bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fruix_core.errors import MetadataError, PromotionInputError
from fruix_core.model import ARTIFACT_KINDS, ArtifactEntry, Promotion
from fruix_core.profile import KEY_FILES
from fruix_core.promotion.layout import RESERVED_NAMES
from fruix_core.promotion.nar import MAX_DEPTH, SpecialFileError
from fruix_core.promotion.schema import check_relative_path, read_promotion

__all__ = [
    "EscapingPathError",
    "ExternalHardLinkError",
    "MissingArtifactError",
    "DigestMismatchError",
    "StagedArtifact",
    "ValidatedRoot",
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
    """One artifact tree, checked: where it is and how big."""

    kind: str
    path: Path
    files: int
    bytes: int
    entry: ArtifactEntry


@dataclass(frozen=True, slots=True)
class ValidatedRoot:
    """A result root that passed every check."""

    root: Path
    promotion: Promotion
    artifacts: tuple[StagedArtifact, ...]

    @property
    def files(self) -> int:
        return sum(a.files for a in self.artifacts)

    @property
    def bytes(self) -> int:
        return sum(a.bytes for a in self.artifacts)


def _status(root: Path) -> None:
    try:
        with open(root / "status", "rb") as stream:
            status = stream.read(256).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        raise PromotionInputError(f"{root}: not a result root (no status file)") from None
    except OSError as err:
        raise PromotionInputError(f"{root}/status: cannot read: {err.strerror}") from None
    if status != "ok":
        shown = status.splitlines()[0] if status else "empty"
        raise PromotionInputError(
            f"{root}: result root is not complete (status: {shown!r}); refusing to promote")


def resolve_inside(root: Path, rel: str, *, what: str) -> tuple[Path, os.stat_result]:
    """``root/rel`` and its lstat, checking no component is a symlink or escapes.

    :raises EscapingPathError: for unclean paths or symlinks on the way.
    :raises MissingArtifactError: when a component does not exist.
    """
    problem = check_relative_path(rel)
    if problem:
        raise EscapingPathError(f"{what} {rel!r} {problem}")
    current = root
    st = os.lstat(root)
    for part in rel.split("/"):
        if not stat.S_ISDIR(st.st_mode):
            raise MissingArtifactError(f"{what} {rel!r}: {current} is not a directory")
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise MissingArtifactError(f"{what} {rel!r} is missing ({current})") from None
        except OSError as err:
            raise PromotionInputError(f"{current}: cannot inspect: {err.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise EscapingPathError(
                f"{what} {rel!r} goes through a symlink ({current}); symlinks are not followed")
    return current, st


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_key_files(root: Path, tree: Path, entry: ArtifactEntry) -> None:
    required = KEY_FILES.get(entry.kind, ())[:1]
    listed = dict(entry.files)
    for rel in required:
        resolve_inside(tree, rel, what=f"{entry.kind} key file")
    for rel, expected in sorted(listed.items()):
        path, st = resolve_inside(tree, rel, what=f"{entry.kind} key file")
        if not stat.S_ISREG(st.st_mode):
            raise PromotionInputError(f"{entry.kind} key file {rel!r} is not a regular file")
        try:
            actual = _sha256_file(path)
        except OSError as err:
            raise PromotionInputError(f"{path}: cannot read: {err.strerror}") from None
        if actual != expected:
            raise DigestMismatchError(
                f"{entry.kind} key file {rel!r}: sha256 is {actual}, promotion.scm records "
                f"{expected} ({root / 'promotion.scm'})")


def _special_kind(mode: int) -> str | None:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    return "special file"


def _iter_tree(top: Path) -> Iterator[tuple[bytes, os.stat_result]]:
    stack = [(os.fsencode(top), 0)]
    while stack:
        path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PromotionInputError(f"{os.fsdecode(path)}: nested deeper than {MAX_DEPTH}")
        with os.scandir(path) as entries:
            for item in entries:
                st = item.stat(follow_symlinks=False)
                yield item.path, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append((item.path, depth + 1))


def _check_tree(kind: str, tree: Path) -> tuple[int, int]:
    files = size = 0
    inside: dict[tuple[int, int], int] = {}
    first: dict[tuple[int, int], tuple[int, bytes]] = {}
    try:
        with os.scandir(tree) as top:
            names = {item.name for item in top}
        reserved = sorted(names & RESERVED_NAMES)
        if reserved:
            raise PromotionInputError(
                f"{kind} artifact {tree}: top-level name {reserved[0]!r} is reserved for "
                "the store object's own metadata")
        if not names and kind == "headers":
            raise MissingArtifactError(f"headers artifact {tree} is empty")
        for path, st in _iter_tree(tree):
            special = _special_kind(st.st_mode)
            if special:
                raise SpecialFileError(
                    f"{kind} artifact: {os.fsdecode(path)} is a {special}; refused")
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    inside[key] = inside.get(key, 0) + 1
                    first.setdefault(key, (st.st_nlink, path))
            elif stat.S_ISLNK(st.st_mode):
                files += 1
    except OSError as err:
        raise PromotionInputError(
            f"{kind} artifact: cannot read {err.filename or tree}: {err.strerror}") from None
    for key, (nlink, path) in first.items():
        if inside[key] < nlink:
            raise ExternalHardLinkError(
                f"{kind} artifact: {os.fsdecode(path)} has {nlink} hard links but only "
                f"{inside[key]} inside the artifact; a hard link to a file outside the "
                "artifact is refused")
    return files, size


def validate_result_root(root: str | Path) -> ValidatedRoot:
    """Check everything about ``root`` that can be checked without writing.

    :raises PromotionInputError: (or a subclass, :class:`MetadataError` for
        promotion.scm) naming the first problem found.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise PromotionInputError(f"{root}: result root does not exist or is not a directory")
    _status(root)
    promotion = read_promotion(root / "promotion.scm")
    kinds = [entry.kind for entry in promotion.artifacts]
    missing = [kind for kind in ARTIFACT_KINDS if kind not in kinds]
    if missing:
        raise MetadataError(f"artifacts: no entry for {', '.join(missing)}",
                            file=root / "promotion.scm")
    staged = []
    for kind in ARTIFACT_KINDS:
        entry = promotion.artifact(kind)
        tree, st = resolve_inside(root, entry.path, what=f"{kind} artifact path")
        if not stat.S_ISDIR(st.st_mode):
            raise MissingArtifactError(f"{kind} artifact {tree} is not a directory")
        _check_key_files(root, tree, entry)
        files, size = _check_tree(kind, tree)
        staged.append(StagedArtifact(kind=kind, path=tree, files=files, bytes=size, entry=entry))
    _check_disjoint(staged)
    return ValidatedRoot(root=root, promotion=promotion, artifacts=tuple(staged))


def _check_disjoint(staged: list[StagedArtifact]) -> None:
    paths = [a.path for a in staged]
    for a in paths:
        for b in paths:
            if a != b and a.is_relative_to(b):
                raise EscapingPathError(f"artifact tree {a} lies inside artifact tree {b}")
