"""``fruix store export-tar``: a store object as a deployable tar archive.

The store keeps every file owned by the store's owner, read-only and without
set-user-ID bits; what the tree must be on a FreeBSD system is in the
object's manifest (from the build's METALOG: owners, groups, full modes and
file flags). The export writes a POSIX pax archive whose entries carry them,
the way FreeBSD's release ``base.txz`` is made from a METALOG
(``tar -cf - @METALOG``):

* ``uname``/``gname`` from the manifest, with numeric ids from the object's
  own ``etc/master.passwd`` and ``etc/group`` when it has them, else from
  FreeBSD's well-known ones (:data:`FREEBSD_UIDS`, :data:`FREEBSD_GIDS`);
  an entry without a recorded owner is ``root``/``wheel``, like
  ``installworld`` run as root;
* the full ``mode`` (``4555`` for ``usr/bin/passwd``);
* file flags as the pax keyword ``SCHILY.fflags`` (``schg``), which bsdtar
  and FreeBSD's tar restore with ``--fflags``;
* hard-link groups as one file and hard links to it; symlink targets as recorded.

Entries are named ``./path`` in manifest order, with modification time 0,
so the same object always gives the same bytes. Every file is checked
against the manifest's size and sha256 while it is written; any difference
is a :class:`~fruix_core.errors.VerificationError` and, with an output file,
nothing is left behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fruix_core.errors import UsageError, VerificationError
from fruix_core.promotion.layout import MANIFEST_FILE, OBJECT_FILE
from fruix_core.promotion.manifest import ManifestEntry, parse_manifest
from fruix_core.promotion.records import read_object_record

__all__ = ["FREEBSD_GIDS", "FREEBSD_UIDS", "ExportReport", "export_tar", "export_tar_file"]

#: Users of FreeBSD's etc/master.passwd that base files are owned by.
FREEBSD_UIDS: dict[str, int] = {"root": 0, "toor": 0, "daemon": 1, "operator": 2, "bin": 3,
                                "tty": 4, "kmem": 5, "games": 7, "news": 8, "man": 9,
                                "sshd": 22, "smmsp": 25, "mailnull": 26, "bind": 53,
                                "unbound": 59, "proxy": 62, "_pflogd": 64, "_dhcp": 65,
                                "uucp": 66, "pop": 68, "auditdistd": 78, "www": 80,
                                "ntpd": 123, "_ypldap": 160, "hast": 845,
                                "nobody": 65534}
#: Groups of FreeBSD's etc/group that base files belong to.
FREEBSD_GIDS: dict[str, int] = {"wheel": 0, "daemon": 1, "kmem": 2, "sys": 3, "tty": 4,
                                "operator": 5, "mail": 6, "bin": 7, "news": 8, "man": 9,
                                "games": 13, "ftp": 14, "staff": 20, "sshd": 22,
                                "smmsp": 25, "mailnull": 26, "guest": 31, "video": 44,
                                "bind": 53, "unbound": 59, "proxy": 62, "authpf": 63,
                                "_pflogd": 64, "_dhcp": 65, "uucp": 66, "dialer": 68,
                                "network": 69, "audit": 77, "www": 80, "ntpd": 123,
                                "_ypldap": 160, "hast": 845, "nogroup": 65533,
                                "nobody": 65534}
#: Id of a name neither the object nor FreeBSD's tables know.
UNKNOWN_ID = 65534


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What an export wrote."""

    object: Path
    entries: int
    bytes: int


def _ids(obj: Path, rel: str, known: dict[str, int]) -> dict[str, int]:
    """name -> id from the object's own passwd/group file (fields 1 and 3), over ``known``."""
    table = dict(known)
    path = obj / rel
    if not path.is_file() or path.is_symlink():
        return table
    for line in path.read_text("utf-8", "replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and not line.startswith("#") and fields[2].isdigit():
            table.setdefault(fields[0], int(fields[2]))
    return table


class _HashingReader(io.RawIOBase):
    """Reads a store file for tarfile while hashing what it hands out."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data


def _display(rel: bytes) -> str:
    return "./" + os.fsdecode(rel) if rel else "."


def _check_object(obj: Path) -> str:
    """The object's recorded manifest digest; refuses anything that is not an artifact object."""
    if not (obj / OBJECT_FILE).is_file() or not (obj / MANIFEST_FILE).is_file():
        raise UsageError(f"{obj} is not an artifact store object (no {OBJECT_FILE} or "
                         f"{MANIFEST_FILE})")
    record = read_object_record(obj / OBJECT_FILE)
    digest = hashlib.sha256((obj / MANIFEST_FILE).read_bytes()).hexdigest()
    if digest != record.manifest_sha256:
        raise VerificationError(f"{obj}/{MANIFEST_FILE}: digest differs from the recorded one")
    return record.manifest_sha256


def _group_owners(entries: Iterable[ManifestEntry]) -> dict[bytes, ManifestEntry]:
    """For each hard-link group (keyed by its first member), the member that names an owner."""
    best: dict[bytes, ManifestEntry] = {}
    for entry in entries:
        if entry.type != "file" or entry.nlink < 2:
            continue
        head = entry.hardlink if entry.hardlink is not None else entry.rel
        if head not in best or (best[head].uname is None and entry.uname is not None):
            best[head] = entry
    return best


def export_tar(obj: Path, out: BinaryIO) -> ExportReport:
    """Write artifact object ``obj`` to ``out`` as a pax tar archive (see the module docstring).

    :raises UsageError: when ``obj`` is not an artifact object.
    :raises VerificationError: when a file differs from its manifest line.
    """
    obj = Path(obj)
    _check_object(obj)
    with open(obj / MANIFEST_FILE, "rb") as stream:
        entries = list(parse_manifest(stream, str(obj / MANIFEST_FILE)))
    for entry in entries:
        # Never read outside the object, whatever its manifest says.
        parts = entry.rel.split(b"/") if entry.rel else []
        if any(part in (b"", b".", b"..") for part in parts):
            raise VerificationError(f"{obj}/{MANIFEST_FILE}: path {_display(entry.rel)!r} "
                                    "leaves the object")
    uids = _ids(obj, "etc/master.passwd", FREEBSD_UIDS)
    gids = _ids(obj, "etc/group", FREEBSD_GIDS)
    owners = _group_owners(entries)
    written = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            attrs = entry
            if entry.type == "file" and entry.nlink > 1:
                attrs = owners.get(entry.hardlink if entry.hardlink is not None else entry.rel,
                                   entry)
            info = tarfile.TarInfo("./" + os.fsdecode(entry.rel) if entry.rel else ".")
            info.mtime = 0
            info.uname = attrs.uname or "root"
            info.gname = attrs.gname or "wheel"
            info.uid = uids.get(info.uname, UNKNOWN_ID)
            info.gid = gids.get(info.gname, UNKNOWN_ID)
            if attrs.flags:
                info.pax_headers = {"SCHILY.fflags": attrs.flags}
            path = obj / os.fsdecode(entry.rel)
            if entry.type == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = entry.mode if entry.mode is not None else 0o755
                archive.addfile(info)
            elif entry.type == "link":
                info.type = tarfile.SYMTYPE
                info.mode = 0o755
                info.linkname = os.fsdecode(entry.link or b"")
                archive.addfile(info)
            elif entry.hardlink is not None:
                info.type = tarfile.LNKTYPE
                info.mode = attrs.mode if attrs.mode is not None else 0o444
                info.linkname = "./" + os.fsdecode(entry.hardlink)
                archive.addfile(info)
            else:
                info.type = tarfile.REGTYPE
                info.mode = attrs.mode if attrs.mode is not None else 0o444
                try:
                    st = os.lstat(path)
                except OSError as err:
                    raise VerificationError(f"{obj}: {_display(entry.rel)}: {err.strerror}"
                                            ) from None
                if os.path.realpath(path) != os.path.join(os.path.realpath(obj),
                                                          os.fsdecode(entry.rel)):
                    raise VerificationError(f"{obj}: {_display(entry.rel)} is reached through "
                                            "a symbolic link")
                if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
                    raise VerificationError(f"{obj}: {_display(entry.rel)} is not the "
                                            f"{entry.size}-byte file the manifest records")
                info.size = st.st_size
                with open(path, "rb") as source:
                    reader = _HashingReader(source)
                    archive.addfile(info, reader)
                if reader.digest.hexdigest() != entry.sha256 or reader.count != entry.size:
                    raise VerificationError(f"{obj}: {_display(entry.rel)} differs from its "
                                            "manifest (sha256)")
                written += st.st_size
    return ExportReport(object=obj, entries=len(entries), bytes=written)


def export_tar_file(obj: Path, output: Path) -> ExportReport:
    """Export to ``output`` atomically: a temporary file beside it, renamed when complete."""
    output = Path(output)
    temp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as stream:
            report = export_tar(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, output)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    return report
