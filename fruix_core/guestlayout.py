"""The guest's store layout: ``/run/current-system/metadata/store-layout.scm``.

A Fruix guest system says where its store items are in one small
S-expression file, written when the system is built and read by in-guest
executors to find the FreeBSD source store they build from. It is read with
the strict reader of :mod:`fruix_core.promotion.sexp` and never evaluated::

    ;; Fruix store layout of this system (read, never evaluated).
    (fruix-store-layout
      (version 1)
      (store-directory "/frx/store")
      (freebsd-source "/frx/store/0v4pa...-freebsd-source")
      (freebsd-source-signature "sha256:9f2c...")       ; optional
      (closure "/frx/store/1k9...-fruix-system-closure")  ; optional
      (development-profile "/frx/store/7hq...-fruix-development-profile")  ; optional
      (host-name "fruix-builder")                         ; optional
      (freebsd-version "15.0-STABLE")                     ; optional
      (freebsd-arch "amd64"))                             ; optional

Rules: exactly one top-level ``fruix-store-layout`` form; ``version`` is
``1``; every known field appears at most once and holds one string; paths
are absolute, normalised (no ``.``/``..``/``//``) and, for store items,
directly under ``store-directory``. Records grow: a field this reader does
not know is skipped (its name kept in :attr:`StoreLayout.unknown_fields`), as
long as it is a ``(name ...)`` form; the fields it uses are required and
checked. Paths are as the guest sees them (its system root is ``/``).

``freebsd-version`` and ``freebsd-arch``, when present, declare what the
guest's source store is; :func:`check_declared_base` refuses a build request
for another version or architecture.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from fruix_core.errors import ConfigError, MetadataError
from fruix_core.model import BaseMetadata

__all__ = [
    "LAYOUT_RELATIVE_PATH",
    "check_declared_base",
    "StoreLayout",
    "dumps_store_layout",
    "parse_store_layout",
    "read_store_layout",
    "store_hash_part",
    "write_store_layout",
]

#: Where the file lives, relative to the guest's system root.
LAYOUT_RELATIVE_PATH = "run/current-system/metadata/store-layout.scm"
FORMAT_VERSION = 1
_HEAD = "fruix-store-layout"
_STRING_FIELDS = {
    "store-directory": "store_directory",
    "freebsd-source": "source_path",
    "freebsd-source-signature": "source_signature",
    "closure": "closure_path",
    "development-profile": "development_profile_path",
    "host-name": "host_name",
    "freebsd-version": "base_version",
    "freebsd-arch": "base_arch",
}
_STORE_ITEM_FIELDS = ("freebsd-source", "closure", "development-profile")
_STORE_NAME_RE = re.compile(r"(?P<hash>[0-9a-z]{32,64})-(?P<name>[A-Za-z0-9+._?=-]+)\Z")


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """What ``store-layout.scm`` says about a guest system."""

    source_path: str
    store_directory: str = "/frx/store"
    source_signature: str | None = None
    closure_path: str | None = None
    development_profile_path: str | None = None
    host_name: str | None = None
    base_version: str | None = None
    base_arch: str | None = None
    version: int = FORMAT_VERSION
    #: Names of fields this reader skipped (newer records).
    unknown_fields: tuple[str, ...] = ()

    @property
    def source_hash(self) -> str:
        """The hash part of the source store item's name."""
        return store_hash_part(self.source_path)


def store_hash_part(path: str) -> str:
    """``0v4pa...`` of ``/frx/store/0v4pa...-freebsd-source``."""
    match = _STORE_NAME_RE.match(posixpath.basename(path))
    if not match:
        raise ValueError(f"not a store item name: {path!r}")
    return match.group("hash")


def _check_path(value: str, field: str, source: str | None, line: int) -> None:
    if not value.startswith("/") or posixpath.normpath(value) != value or "//" in value:
        raise MetadataError(f"{field}: not an absolute, normalised path: {value!r}",
                            file=source, line=line)
    if any(ch in value for ch in "\0\n"):
        raise MetadataError(f"{field}: path holds a control character", file=source, line=line)


def parse_store_layout(text: str | bytes, *, source: str | Path | None = None) -> StoreLayout:
    """Read a ``store-layout.scm`` text strictly.

    :raises MetadataError: naming ``source`` and the line, for any syntax or
        schema problem.
    """
    from fruix_core.promotion.sexp import SList, Symbol, loads

    name = str(source) if source is not None else None
    data = loads(text, source=name)
    if len(data) != 1 or not isinstance(data[0], list) or not data[0] \
            or data[0][0] != Symbol(_HEAD):
        raise MetadataError(f"expected exactly one ({_HEAD} ...) form", file=name)
    form = data[0]
    form_line = form.line if isinstance(form, SList) else 1
    values: dict[str, object] = {}
    lines: dict[str, int] = {}
    unknown: list[str] = []
    for item in form[1:]:
        line = item.line if isinstance(item, SList) else form_line
        if not isinstance(item, list) or not item or not isinstance(item[0], Symbol):
            raise MetadataError("expected a (field value) pair", file=name, line=line)
        if item[0].name != "version" and item[0].name not in _STRING_FIELDS:
            unknown.append(item[0].name)  # a newer record's field: skipped, never evaluated
            continue
        if len(item) != 2:
            raise MetadataError(f"field '{item[0].name}' takes exactly one value", file=name,
                                line=line)
        field, value = item[0].name, item[1]
        if field in values:
            raise MetadataError(f"field '{field}' appears twice", file=name, line=line)
        if field == "version":
            if value is True or value is False or not isinstance(value, int):
                raise MetadataError("version: expected an integer", file=name, line=line)
        elif not isinstance(value, str) or not value:
            raise MetadataError(f"{field}: expected a non-empty string", file=name, line=line)
        values[field] = value
        lines[field] = line
    if values.get("version") != FORMAT_VERSION:
        raise MetadataError(f"unsupported or missing version (expected {FORMAT_VERSION})",
                            file=name, line=lines.get("version", form_line))
    if "freebsd-source" not in values:
        raise MetadataError("missing field 'freebsd-source' (the FreeBSD source store path)",
                            file=name, line=form_line)
    store = str(values.get("store-directory", "/frx/store"))
    _check_path(store, "store-directory", name, lines.get("store-directory", form_line))
    for field in _STORE_ITEM_FIELDS:
        if field not in values:
            continue
        path = str(values[field])
        _check_path(path, field, name, lines[field])
        if posixpath.dirname(path) != store or not _STORE_NAME_RE.match(posixpath.basename(path)):
            raise MetadataError(f"{field}: not a store item directly under {store}: {path!r}",
                                file=name, line=lines[field])
    signature = values.get("freebsd-source-signature")
    if signature is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", str(signature)):
        raise MetadataError("freebsd-source-signature: expected sha256:<64 hex digits>",
                            file=name, line=lines["freebsd-source-signature"])
    for field in ("freebsd-version", "freebsd-arch"):
        value = values.get(field)
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}",
                                                  str(value)):
            raise MetadataError(f"{field}: expected a word such as 15.0-STABLE or amd64",
                                file=name, line=lines[field])
    kwargs = {_STRING_FIELDS[k]: v for k, v in values.items() if k in _STRING_FIELDS}
    return StoreLayout(**kwargs, unknown_fields=tuple(unknown))  # type: ignore[arg-type]


def check_declared_base(layout: StoreLayout, base: BaseMetadata) -> None:
    """Refuse a build whose declared version or architecture is not the guest's.

    :raises ConfigError: naming the config key, the guest's value and the request's.
    """
    for declared, wanted, key in ((layout.base_version, base.version, "base.version"),
                                  (layout.base_arch, base.arch, "base.arch")):
        if declared is not None and declared != wanted:
            raise ConfigError(f"the guest's source store is {declared} (store-layout.scm), "
                              f"but the build asks for {wanted}", key=key)


def read_store_layout(system_root: str | Path) -> StoreLayout:
    """Read ``<system_root>/run/current-system/metadata/store-layout.scm`` (local file).

    :raises MetadataError: when it is missing, unreadable or malformed.
    """
    path = Path(system_root) / LAYOUT_RELATIVE_PATH
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MetadataError("missing: the guest's store layout (FreeBSD source store "
                            "metadata) is not there", file=path) from None
    except OSError as exc:
        raise MetadataError(f"cannot read: {exc.strerror}", file=path) from None
    return parse_store_layout(data, source=path)


def dumps_store_layout(layout: StoreLayout) -> str:
    """The ``store-layout.scm`` text of ``layout`` (deterministic)."""
    from fruix_core.promotion.sexp import Symbol, dumps

    fields: list[object] = [Symbol(_HEAD), [Symbol("version"), layout.version],
                            [Symbol("store-directory"), layout.store_directory],
                            [Symbol("freebsd-source"), layout.source_path]]
    optional = (("freebsd-source-signature", layout.source_signature),
                ("closure", layout.closure_path),
                ("development-profile", layout.development_profile_path),
                ("host-name", layout.host_name),
                ("freebsd-version", layout.base_version),
                ("freebsd-arch", layout.base_arch))
    fields.extend([Symbol(k), v] for k, v in optional if v is not None)
    header = ";; Fruix store layout of this system (read, never evaluated).\n"
    return header + dumps(fields, width=100)


def write_store_layout(system_root: str | Path, layout: StoreLayout) -> Path:
    """Write ``layout`` to ``<system_root>/run/current-system/metadata/store-layout.scm``."""
    path = Path(system_root) / LAYOUT_RELATIVE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_store_layout(layout), encoding="ascii")
    return path
