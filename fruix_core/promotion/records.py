"""The metadata files inside store objects, written and read back.

``.fruix-native-build-object.scm`` (artifact objects)::

    (fruix-native-build-object
      (name "<h40>-fruix-native-world-15.0-STABLE-local")
      (nar-size 123456)
      (manifest ".fruix-native-build-manifest")
      (identity (fruix-native-artifact-identity ...)))

``.fruix-native-build-result.scm`` (result bundles)::

    (fruix-native-build-result
      (name "<h40>-fruix-native-build-result-15.0-STABLE-local")
      (identity (fruix-native-build-result-identity ...)))

The ``identity`` form is exactly the document whose hash prefixes the name,
so ``fruix store verify`` re-derives the name from the file alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fruix_core.errors import MetadataError
from fruix_core.model import ARTIFACT_KINDS
from fruix_core.promotion import sexp
from fruix_core.promotion.display import shown
from fruix_core.promotion.identity import (
    ARTIFACT_IDENTITY_FORM,
    BUNDLE_IDENTITY_FORM,
    artifact_name,
    bundle_name,
)
from fruix_core.promotion.layout import MANIFEST_FILE
from fruix_core.promotion.sexp import Datum, SList, Symbol

__all__ = [
    "BundleRecord",
    "ObjectRecord",
    "bundle_text",
    "object_text",
    "read_bundle_record",
    "read_object_record",
]

OBJECT_FORM = "fruix-native-build-object"
RESULT_FORM = "fruix-native-build-result"
_HEADER = ";; written by fruix native-build; read as data, never evaluated.\n"
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


def object_text(name: str, nar_size: int, identity: Datum) -> str:
    """The text of an artifact object's ``.fruix-native-build-object.scm``."""
    s = Symbol
    return _HEADER + sexp.dumps([s(OBJECT_FORM), [s("name"), name], [s("nar-size"), nar_size],
                                 [s("manifest"), MANIFEST_FILE], [s("identity"), identity]])


def bundle_text(name: str, identity: Datum) -> str:
    """The text of a bundle's ``.fruix-native-build-result.scm``."""
    s = Symbol
    return _HEADER + sexp.dumps([s(RESULT_FORM), [s("name"), name], [s("identity"), identity]])


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """What an artifact object's metadata file says."""

    name: str
    derived_name: str
    nar_size: int
    kind: str
    tree_signature: str
    manifest_sha256: str


@dataclass(frozen=True, slots=True)
class BundleRecord:
    """What a bundle's metadata file says."""

    name: str
    derived_name: str
    artifacts: Mapping[str, str]
    run_id: str = ""


def _fields(form: SList, source: str, allowed: frozenset[str] | None = None) -> dict[str, SList]:
    out: dict[str, SList] = {}
    for item in form[1:]:
        if not (isinstance(item, SList) and item and isinstance(item[0], Symbol)):
            raise MetadataError("expected (field value ...) entries", file=source, line=form.line)
        key = item[0].name
        if key in out:
            raise MetadataError(f"field '{key}' appears twice", file=source, line=item.line)
        if allowed is not None and key not in allowed:
            raise MetadataError(f"unknown field '{shown(key)}'", file=source, line=item.line)
        out[key] = item
    return out


_OBJECT_FIELDS = frozenset({"name", "nar-size", "manifest", "identity"})
_RESULT_FIELDS = frozenset({"name", "identity"})


def _single(fields: Mapping[str, SList], key: str, kind: type, source: str,
            line: int) -> Any:
    item = fields.get(key)
    if item is None or len(item) != 2 or not isinstance(item[1], kind) or isinstance(
            item[1], bool) != (kind is bool):
        raise MetadataError(f"missing or malformed field '{key}'", file=source, line=line)
    return item[1]


def _top(path: Path, head: str) -> tuple[SList, str]:
    source = shown(path)
    forms = sexp.read_file(path)
    if len(forms) != 1 or not isinstance(forms[0], SList) or forms[0][:1] != [Symbol(head)]:
        raise MetadataError(f"expected exactly one ({head} ...) form", file=source)
    return forms[0], source


def _identity(fields: Mapping[str, SList], head: str, source: str, line: int) -> SList:
    item = fields.get("identity")
    if item is None or len(item) != 2 or not isinstance(item[1], SList) or \
            item[1][:1] != [Symbol(head)]:
        raise MetadataError(f"missing or malformed ({head} ...) identity", file=source, line=line)
    return item[1]


def read_object_record(path: Path) -> ObjectRecord:
    """Read an artifact object's metadata and re-derive its name.

    :raises MetadataError: when the file is missing fields or malformed.
    """
    form, source = _top(path, OBJECT_FORM)
    fields = _fields(form, source, _OBJECT_FIELDS)
    if _single(fields, "manifest", str, source, form.line) != MANIFEST_FILE:
        raise MetadataError(f"field 'manifest' must be {MANIFEST_FILE!r}", file=source,
                            line=form.line)
    identity = _identity(fields, ARTIFACT_IDENTITY_FORM, source, form.line)
    ident = _fields(identity, source)
    line = identity.line
    base = _fields(_single_form(ident, "base", source, line), source)
    kind = _single(ident, "kind", str, source, line)
    version = _single(base, "version", str, source, line)
    executor = _single(ident, "executor", str, source, line)
    tree = _single(ident, "tree-signature", str, source, line)
    manifest = _single(ident, "manifest-sha256", str, source, line)
    if kind not in ARTIFACT_KINDS or not tree.startswith("sha256:") or not _HEX64.match(
            tree[7:]) or not _HEX64.match(manifest):
        raise MetadataError("malformed identity values", file=source, line=line)
    return ObjectRecord(
        name=_single(fields, "name", str, source, form.line),
        derived_name=artifact_name(identity, kind, version, executor),
        nar_size=_single(fields, "nar-size", int, source, form.line),
        kind=kind, tree_signature=tree[7:], manifest_sha256=manifest)


def _single_form(fields: Mapping[str, SList], key: str, source: str, line: int) -> SList:
    item = fields.get(key)
    if item is None:
        raise MetadataError(f"missing field '{key}'", file=source, line=line)
    return item


def read_bundle_record(path: Path) -> BundleRecord:
    """Read a bundle's metadata and re-derive its name.

    :raises MetadataError: when the file is missing fields or malformed.
    """
    form, source = _top(path, RESULT_FORM)
    fields = _fields(form, source, _RESULT_FIELDS)
    identity = _identity(fields, BUNDLE_IDENTITY_FORM, source, form.line)
    ident = _fields(identity, source)
    line = identity.line
    version = _single(ident, "version", str, source, line)
    executor = _single(ident, "executor", str, source, line)
    artifacts: dict[str, str] = {}
    for entry in _single_form(ident, "artifacts", source, line)[1:]:
        if not (isinstance(entry, SList) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], str)):
            raise MetadataError("malformed artifacts entry", file=source, line=line)
        artifacts[entry[0]] = entry[1]
    return BundleRecord(name=_single(fields, "name", str, source, form.line),
                        derived_name=bundle_name(identity, version, executor),
                        artifacts=artifacts,
                        run_id=_single(ident, "run-id", str, source, line))
