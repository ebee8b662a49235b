"""FreeBSD METALOGs: what an unprivileged (``-DNO_ROOT``) install could not apply.

With ``-DNO_ROOT``, FreeBSD's ``Makefile.inc1`` runs every install as
``install -U -M ${METALOG} -D ${DESTDIR}``: the files land owned by the
building user, without set-user-ID bits or file flags, and one mtree(5) line
per node records what they should be (``usr.bin/xinstall/xinstall.c``,
``metadata_log``)::

    #mtree 2.0
    ./usr/bin/passwd type=file uname=root gname=wheel mode=04555 size=40000 flags=schg
    ./bin/[ type=file mode=0555 size=16624
    ./usr/bin/echo type=link mode=0755 link=../../bin/echo

The build profile writes one METALOG per stage; staging moves them into the
result root as ``metalog/world.METALOG`` and ``metalog/kernel.METALOG``
(:func:`stage_metalogs`). At promotion, :func:`artifact_metalog` selects the
lines of one artifact (by the same split rules as its tree) and
:meth:`ArtifactMetalog.apply` puts their owners, groups, modes and flags into
the manifest entries, so they become part of the artifact's identity.

A path may appear more than once (a directory made twice): later keywords
override earlier ones, as mtree does when it reads a spec.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from fruix_core.errors import PromotionInputError
from fruix_core.profile import BuildPaths, artifact_split
from fruix_core.promotion.manifest import ManifestEntry, decode_path

__all__ = [
    "METALOG_DIR",
    "ArtifactMetalog",
    "MetalogEntry",
    "artifact_metalog",
    "parse_metalog",
    "stage_metalogs",
]

#: Directory of the result root that holds the stages' METALOGs.
METALOG_DIR = "metalog"
#: Largest METALOG read (a real world's is a few MiB).
MAX_METALOG_BYTES = 256 << 20

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")
_FLAGS_RE = re.compile(r"[a-z]+(,[a-z]+)*\Z")
_TYPES = {"file", "dir", "link"}


@dataclass(frozen=True, slots=True)
class MetalogEntry:
    """What a METALOG says about one path (``rel`` below DESTDIR, ``b""`` for it)."""

    rel: bytes
    type: str
    mode: int | None = None
    uname: str | None = None
    gname: str | None = None
    flags: str | None = None
    link: bytes | None = None


def _decode_rel(word: bytes, where: str) -> bytes:
    if word == b".":
        return b""
    if not word.startswith(b"./"):
        raise PromotionInputError(f"{where}: path {word!r} does not start with './'")
    rel = decode_path(word[2:])
    parts = rel.split(b"/")
    if any(part in (b"", b".", b"..") for part in parts) or b"\0" in rel:
        raise PromotionInputError(f"{where}: path {word!r} leaves the tree or is not normal")
    return rel


def _merge(old: MetalogEntry | None, rel: bytes, fields: dict[str, bytes],
           where: str) -> MetalogEntry:
    current = old or MetalogEntry(rel=rel, type="")
    changes: dict[str, object] = {}
    for key, value in fields.items():
        text = value.decode("ascii", "replace")
        if key == "type":
            if text not in _TYPES:
                raise PromotionInputError(f"{where}: unsupported type={text}")
            changes["type"] = text
        elif key == "mode":
            if not re.fullmatch(r"[0-7]{1,6}", text) or int(text, 8) > 0o7777:
                raise PromotionInputError(f"{where}: invalid mode={text}")
            changes["mode"] = int(text, 8)
        elif key in ("uname", "gname"):
            if not _NAME_RE.match(text):
                raise PromotionInputError(f"{where}: invalid {key}={text}")
            changes[key] = text
        elif key == "flags":
            if text in ("", "none"):
                changes["flags"] = None
            elif not _FLAGS_RE.match(text):
                raise PromotionInputError(f"{where}: invalid flags={text}")
            else:
                changes["flags"] = text
        elif key == "link":
            changes["link"] = decode_path(value)
        # size, time, digests and tags describe the content, which the
        # manifest records from the tree itself.
    entry = replace(current, **changes)  # type: ignore[arg-type]
    if not entry.type:
        raise PromotionInputError(f"{where}: no type=")
    return entry


def parse_metalog(lines: Iterable[bytes], source: str) -> dict[bytes, MetalogEntry]:
    """The entries of a METALOG, merged by path.

    :raises PromotionInputError: naming the file and line of anything malformed.
    """
    entries: dict[bytes, MetalogEntry] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\n")
        if not line.strip() or line.startswith(b"#"):
            continue
        where = f"{source}:{number}"
        words = line.split()
        if words[0].startswith(b"/"):
            raise PromotionInputError(f"{where}: mtree directives ({words[0]!r}) are not "
                                      "supported in a METALOG")
        rel = _decode_rel(words[0], where)
        fields: dict[str, bytes] = {}
        for word in words[1:]:
            key, sep, value = word.partition(b"=")
            if not sep:
                raise PromotionInputError(f"{where}: malformed keyword {word!r}")
            fields[key.decode("ascii", "replace")] = value
        entries[rel] = _merge(entries.get(rel), rel, fields, where)
    return entries


def _read_lines(path: Path, label: str) -> list[bytes]:
    """Read a METALOG without following a symlink at its name."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PromotionInputError(f"{label} is a symbolic link") from None
        raise PromotionInputError(f"cannot read {label}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise PromotionInputError(f"{label} is not a regular file")
        data = stream.read(MAX_METALOG_BYTES + 1)
    if len(data) > MAX_METALOG_BYTES:
        raise PromotionInputError(f"{label} is larger than {MAX_METALOG_BYTES} bytes")
    return data.splitlines(keepends=True)


def stage_metalogs(paths: BuildPaths, result_root: Path) -> None:
    """Move the stages' METALOGs (when the build wrote them) into ``result_root/metalog``."""
    dest = result_root / METALOG_DIR
    for stage, source in (("world", paths.metalog_world), ("kernel", paths.metalog_kernel)):
        if os.path.isfile(source) and not os.path.islink(source):
            dest.mkdir(parents=True, exist_ok=True)
            os.replace(source, dest / f"{stage}.METALOG")


def _under(rel: bytes, top: bytes) -> bool:
    return rel == top or rel.startswith(top + b"/")


def _ancestors(top: bytes) -> Iterator[bytes]:
    yield b""
    parts = top.split(b"/")
    for n in range(1, len(parts)):
        yield b"/".join(parts[:n])


class ArtifactMetalog:
    """The METALOG lines of one artifact, applied to its manifest entries.

    :param kind: the artifact kind (for messages).
    :param entries: rel -> entry, restricted to the artifact.
    """

    def __init__(self, kind: str, entries: dict[bytes, MetalogEntry]) -> None:
        self.kind = kind
        self.entries = entries
        self.seen: set[bytes] = set()

    def apply(self, entry: ManifestEntry) -> ManifestEntry:
        """``entry`` with the METALOG's owner, group, mode and flags for its path.

        :raises PromotionInputError: when the METALOG disagrees with the tree
            about the node's type, a symlink's target or the executable bit.
        """
        meta = self.entries.get(entry.rel)
        if meta is None:
            return entry
        self.seen.add(entry.rel)
        name = "./" + os.fsdecode(entry.rel) if entry.rel else "."
        if meta.type != entry.type:
            raise PromotionInputError(f"{self.kind} artifact: METALOG says {name} is a "
                                      f"{meta.type}, the tree has a {entry.type}")
        if entry.type == "link":
            if meta.link is not None and meta.link != entry.link:
                raise PromotionInputError(
                    f"{self.kind} artifact: METALOG says {name} points to "
                    f"{os.fsdecode(meta.link)!r}, the tree's link points to "
                    f"{os.fsdecode(entry.link or b'')!r}")
            return replace(entry, uname=meta.uname, gname=meta.gname, flags=meta.flags)
        mode = entry.mode
        if meta.mode is not None:
            if entry.type == "file" and entry.mode is not None and \
                    bool(meta.mode & stat.S_IXUSR) != bool(entry.mode & stat.S_IXUSR):
                raise PromotionInputError(
                    f"{self.kind} artifact: METALOG gives {name} mode {meta.mode:04o}, but "
                    f"the staged file's mode is {entry.mode:04o} (executable bits differ)")
            mode = meta.mode
        return replace(entry, mode=mode, uname=meta.uname, gname=meta.gname, flags=meta.flags)

    def check_complete(self) -> None:
        """Every METALOG line must have named a node of the tree.

        :raises PromotionInputError: naming the first path that is missing.
        """
        missing = sorted(set(self.entries) - self.seen)
        if missing:
            name = "./" + os.fsdecode(missing[0]) if missing[0] else "."
            raise PromotionInputError(
                f"{self.kind} artifact: METALOG names {name}, which is not in the artifact"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def artifact_metalog(result_root: Path, kind: str) -> ArtifactMetalog | None:
    """The METALOG lines of artifact ``kind`` of a result root, or ``None`` without one.

    The lines are chosen by the artifact's split rule: a whole-stage artifact
    takes every path outside its exclusions; a subtree artifact takes its
    subtree and the directories above it (the artifact holds them too).
    """
    rules = {rule.kind: rule for rule in artifact_split()}
    rule = rules.get(kind)
    if rule is None:
        return None
    directory = result_root / METALOG_DIR
    if directory.is_symlink():
        raise PromotionInputError(f"{directory} is a symbolic link")
    label = f"{METALOG_DIR}/{rule.stage}.METALOG"
    try:
        lines = _read_lines(directory / f"{rule.stage}.METALOG", label)
    except FileNotFoundError:
        return None
    entries = parse_metalog(lines, label)
    if rule.subtree:
        top = os.fsencode(rule.subtree)
        keep = set(_ancestors(top))
        chosen = {rel: e for rel, e in entries.items() if rel in keep or _under(rel, top)}
    else:
        excluded = [os.fsencode(x) for x in rule.exclude]
        chosen = {rel: e for rel, e in entries.items()
                  if not any(_under(rel, x) for x in excluded)}
    return ArtifactMetalog(kind, chosen)
