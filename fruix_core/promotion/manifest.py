"""The per-file manifest of a store object (mtree(5) style).

NAR records file types, the executable bit and symlink targets; FreeBSD also
needs the full permission bits (setuid/setgid, sticky, ``0600`` secrets) and
hard-link groups (``/rescue``). The manifest records them, one line per node,
in NAR order (depth first, names sorted by bytes)::

    #mtree v2.0
    #fruix-native-build-manifest 1
    . type=dir mode=0755
    ./bin type=dir mode=0755
    ./bin/sh type=file mode=0555 size=171248 sha256digest=9f0c...
    ./rescue/cat type=file mode=0555 size=4096 sha256digest=ab12... nlink=2
    ./rescue/ls type=file mode=0555 size=4096 sha256digest=ab12... nlink=2 hardlink=./rescue/cat
    ./sbin/ping type=file mode=4555 size=40000 sha256digest=77aa...
    ./usr/bin/cc type=link link=clang

``mode`` is the staged file's permission bits (four octal digits, setuid
included); the store itself keeps only ``0444``/``0555``. When the build
wrote a METALOG (the install phases run with ``-DNO_ROOT``), its line for a
node gives the intended ``mode`` (set-user-ID included, which an unprivileged
install never applies) and adds ``uname``, ``gname`` and ``flags``, the
mtree(5) keywords FreeBSD's ``install -M`` writes::

    ./usr/bin/passwd type=file uname=root gname=wheel mode=4555 size=40000 \\
        sha256digest=77aa... flags=schg

Hard-link members and symbolic links carry an owner only when their METALOG
line names one (``install -l`` logs none unless told). Members of a
hard-link group carry ``nlink`` (the group size) and, after the first,
``hardlink=`` naming the first member. Paths and link targets are encoded
like vis(3) with octal escapes: every byte outside ``!``..``~`` and the bytes
``\\`` and ``#`` become ``\\ooo``. The manifest's SHA-256 enters artifact
identity.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from fruix_core.errors import VerificationError

__all__ = [
    "MANIFEST_HEADER",
    "ManifestEntry",
    "ManifestWriter",
    "decode_path",
    "encode_path",
    "parse_manifest",
    "parse_manifest_fields",
    "split_line",
]

MANIFEST_HEADER = b"#mtree v2.0\n#fruix-native-build-manifest 1\n"

_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("\\"), ord("#")}
_PLAIN_BYTES = bytes(sorted(_PLAIN))
_ENCODE = [chr(b).encode() if b in _PLAIN else b"\\%03o" % b for b in range(256)]
_ESCAPE_RE = re.compile(rb"\\([0-7]{3})")


def encode_path(raw: bytes) -> bytes:
    """vis(3)-style octal encoding of a path or link target."""
    if not raw.translate(None, _PLAIN_BYTES):
        return raw  # the common case: nothing to escape
    return b"".join(_ENCODE[b] for b in raw)


def decode_path(text: bytes) -> bytes:
    """Inverse of :func:`encode_path`."""
    return _ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 8)]), text)


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One manifest line: ``rel`` is the path below the object root (``b""`` for it)."""

    rel: bytes
    type: str                     # "dir", "file" or "link"
    mode: int | None = None       # permission bits (file, dir)
    size: int | None = None       # file
    sha256: str | None = None     # file
    link: bytes | None = None     # link target
    nlink: int = 1                # hard-link group size (file)
    hardlink: bytes | None = None  # first member of the group (file)
    uname: str | None = None      # intended owner (METALOG)
    gname: str | None = None      # intended group (METALOG)
    flags: str | None = None      # file flags, comma-separated (METALOG)

    def render(self) -> bytes:
        """The manifest line (with trailing newline)."""
        path = b"./" + encode_path(self.rel) if self.rel else b"."
        words = [path, b"type=" + self.type.encode()]
        if self.uname is not None:
            words.append(b"uname=" + self.uname.encode("ascii"))
        if self.gname is not None:
            words.append(b"gname=" + self.gname.encode("ascii"))
        if self.type == "link":
            words.append(b"link=" + encode_path(self.link or b""))
        else:
            words.append(b"mode=%04o" % (self.mode or 0))
        if self.type == "file":
            words.append(b"size=%d" % (self.size or 0))
            words.append(b"sha256digest=" + (self.sha256 or "").encode())
            if self.nlink > 1:
                words.append(b"nlink=%d" % self.nlink)
            if self.hardlink is not None:
                words.append(b"hardlink=./" + encode_path(self.hardlink))
        if self.flags is not None:
            words.append(b"flags=" + self.flags.encode("ascii"))
        return b" ".join(words) + b"\n"


class ManifestWriter:
    """Writes manifest lines to an optional stream while hashing them.

    :param overlay: called with each entry before it is written; returns the
        entry to write (the METALOG's owners, modes and flags applied).
    """

    def __init__(self, stream: BinaryIO | None = None,
                 overlay: Callable[[ManifestEntry], ManifestEntry] | None = None) -> None:
        self._stream = stream
        self._overlay = overlay
        self._hash = hashlib.sha256()
        self.entries = 0
        self._put(MANIFEST_HEADER)

    def _put(self, data: bytes) -> None:
        self._hash.update(data)
        if self._stream is not None:
            self._stream.write(data)

    def add(self, entry: ManifestEntry) -> None:
        if self._overlay is not None:
            entry = self._overlay(entry)
        self._put(entry.render())
        self.entries += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


_INT_KEYS = {"size", "nlink"}


def split_line(line: bytes, number: int, source: str) -> tuple[bytes, dict[str, bytes]]:
    """One manifest line (without its newline): raw path and every keyword, unparsed.

    Keywords this version does not know are kept, so readers that only
    compare (``fruix store diff``) see fields added later too.

    :raises VerificationError: on a malformed path or keyword.
    """
    words = line.split(b" ")
    path = words[0]
    if path == b".":
        rel = b""
    elif path.startswith(b"./"):
        rel = decode_path(path[2:])
    else:
        raise VerificationError(f"{source}:{number}: malformed manifest path")
    fields: dict[str, bytes] = {}
    for word in words[1:]:
        key, sep, value = word.partition(b"=")
        if not sep:
            raise VerificationError(f"{source}:{number}: malformed manifest keyword")
        fields[key.decode("ascii", "replace")] = value
    return rel, fields


def _parse_line(line: bytes, number: int, source: str) -> ManifestEntry:
    rel, fields = split_line(line, number, source)
    try:
        kind = fields["type"].decode("ascii")
        ints = {k: int(fields[k]) for k in _INT_KEYS if k in fields}
        hardlink = fields.get("hardlink")
        return ManifestEntry(
            rel=rel, type=kind,
            mode=int(fields["mode"], 8) if "mode" in fields else None,
            size=ints.get("size"),
            sha256=fields["sha256digest"].decode("ascii") if "sha256digest" in fields else None,
            link=decode_path(fields["link"]) if "link" in fields else None,
            nlink=ints.get("nlink", 1),
            hardlink=decode_path(hardlink[2:]) if hardlink else None,
            uname=fields["uname"].decode("ascii") if "uname" in fields else None,
            gname=fields["gname"].decode("ascii") if "gname" in fields else None,
            flags=fields["flags"].decode("ascii") if "flags" in fields else None,
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        raise VerificationError(f"{source}:{number}: malformed manifest line") from None


def _lines(stream: BinaryIO, source: str) -> Iterator[tuple[int, bytes]]:
    header = stream.read(len(MANIFEST_HEADER))
    if header != MANIFEST_HEADER:
        raise VerificationError(f"{source}: not a fruix manifest (bad header)")
    for number, line in enumerate(stream, start=3):
        if not line.endswith(b"\n"):
            raise VerificationError(f"{source}:{number}: truncated manifest line")
        yield number, line[:-1]


def parse_manifest(stream: BinaryIO, source: str) -> Iterator[ManifestEntry]:
    """Yield the entries of a manifest stream, in order.

    :raises VerificationError: when the header or a line is malformed.
    """
    for number, line in _lines(stream, source):
        yield _parse_line(line, number, source)


def parse_manifest_fields(stream: BinaryIO,
                          source: str) -> Iterator[tuple[bytes, dict[str, bytes]]]:
    """Yield ``(raw path, keywords)`` of a manifest stream, in order (see :func:`split_line`).

    :raises VerificationError: when the header or a line is malformed.
    """
    for number, line in _lines(stream, source):
        yield split_line(line, number, source)
