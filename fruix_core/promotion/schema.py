"""``promotion.scm`` <-> :class:`~fruix_core.model.Promotion`.

The file holds exactly one form, ``(fruix-native-build-promotion FIELD ...)``;
each field is ``(NAME VALUE ...)`` and appears once. Unknown forms and fields,
missing fields and values of the wrong shape are refused with a
:class:`~fruix_core.errors.MetadataError` naming the file and line. Paths in
the description must be relative and stay inside the result root. The
complete schema, with an example, is in ``docs/formats.rst``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fruix_core.errors import MetadataError
from fruix_core.model import (
    ARTIFACT_KINDS,
    ArtifactEntry,
    BaseMetadata,
    BuildPolicy,
    Promotion,
    SourceStore,
)
from fruix_core.promotion import sexp
from fruix_core.promotion.sexp import Datum, SList, Symbol

__all__ = [
    "FORMAT_VERSION",
    "PROMOTION_FORM",
    "check_relative_path",
    "dumps_promotion",
    "loads_promotion",
    "promotion_datum",
    "read_promotion",
    "write_promotion",
]

#: The head symbol of ``promotion.scm``.
PROMOTION_FORM = "fruix-native-build-promotion"
#: The only format version this code reads and writes.
FORMAT_VERSION = 1

#: Executor names and base versions become part of store names.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
_MAX_TEXT = 4096

_HEADER = ";; promotion.scm: written by fruix native-build; read as data, never evaluated.\n"


# -- validation of values --------------------------------------------------


def _text_problem(value: str) -> str | None:
    if len(value) > _MAX_TEXT:
        return f"longer than {_MAX_TEXT} characters"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "contains control characters"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        return "contains an unencodable character"
    return None


def check_relative_path(value: str) -> str | None:
    """Why ``value`` is not a clean path relative to a root, or ``None`` if it is.

    Clean means: non-empty, not absolute, no empty, ``.`` or ``..`` component,
    no control characters.
    """
    problem = _text_problem(value)
    if problem:
        return problem
    if not value:
        return "is empty"
    if value.startswith("/"):
        return "is absolute"
    for part in value.split("/"):
        if part in ("", ".", ".."):
            return f"has a {part or 'empty'!r} component (paths must stay inside the root)"
    return None


class _Fields:
    """The fields of one form, each checked for presence and shape."""

    def __init__(self, form: SList, allowed: set[str], where: str, source: str | None) -> None:
        self.source = source
        self.form = form
        self.where = where
        self.values: dict[str, SList] = {}
        for item in form[1:]:
            if not isinstance(item, SList) or not item or not isinstance(item[0], Symbol):
                raise self.error(f"{where}: expected (field value ...) entries", form)
            name = item[0].name
            if name not in allowed:
                raise self.error(f"{where}: unknown field '{name}'", item)
            if name in self.values:
                raise self.error(f"{where}: field '{name}' given twice", item)
            self.values[name] = item

    def error(self, message: str, at: SList | None = None) -> MetadataError:
        line = at.line if at is not None else self.form.line
        return MetadataError(message, file=self.source, line=line or None)

    def field(self, name: str) -> SList:
        if name not in self.values:
            raise self.error(f"{self.where}: missing field '{name}'")
        return self.values[name]

    def one(self, name: str, check: Callable[[Any], str | None], *, optional: bool = False,
            allow_false: bool = False) -> Any:
        if optional and name not in self.values:
            return None
        item = self.field(name)
        if len(item) != 2:
            raise self.error(f"{self.where}: field '{name}' takes exactly one value", item)
        value = item[1]
        if allow_false and value is False:
            return None
        problem = check(value)
        if problem:
            raise self.error(f"{self.where}: field '{name}' {problem}", item)
        return value


def _string(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    return _text_problem(value)


def _nonempty_string(value: Any) -> str | None:
    problem = _string(value)
    if problem is None and not value:
        return "must not be empty"
    return problem


def _name(value: Any) -> str | None:
    problem = _string(value)
    if problem is None and not NAME_RE.match(value):
        return "must match [A-Za-z0-9][A-Za-z0-9._+-]* (at most 64 characters)"
    return problem


def _relative(value: Any) -> str | None:
    return _string(value) or check_relative_path(value)


def _store_path(value: Any) -> str | None:
    problem = _nonempty_string(value)
    if problem is None and not value.startswith("/"):
        return "must be an absolute path"
    return problem


def _count(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if not 0 <= value <= 65536:
        return "must be between 0 and 65536"
    return None


def _version(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if value != FORMAT_VERSION:
        return f"is {value}; this version of fruix reads format {FORMAT_VERSION} only"
    return None


def _symbol_head(form: Datum, head: str) -> bool:
    return isinstance(form, SList) and bool(form) and form[0] == Symbol(head)


# -- reading ---------------------------------------------------------------


def _base(item: SList, source: str | None) -> BaseMetadata:
    fields = _Fields(item, {"name", "version", "arch", "kernconf"}, "base", source)
    return BaseMetadata(name=fields.one("name", _name), version=fields.one("version", _name),
                        arch=fields.one("arch", _name), kernconf=fields.one("kernconf", _name))


def _source(item: SList, source: str | None) -> SourceStore:
    fields = _Fields(item, {"name", "path", "signature"}, "source", source)
    return SourceStore(path=fields.one("path", _nonempty_string),
                       signature=fields.one("signature", _nonempty_string),
                       name=fields.one("name", _nonempty_string))


def _policy(item: SList, source: str | None) -> BuildPolicy:
    fields = _Fields(item, {"phases", "jobs", "environment-policy", "make",
                            "make-configuration"}, "build-policy", source)
    phases = fields.field("phases")
    for value in phases[1:]:
        problem = _name(value)
        if problem:
            raise fields.error(f"build-policy: phase {problem}", phases)
    if len(phases) < 2:
        raise fields.error("build-policy: 'phases' lists no phase", phases)
    return BuildPolicy(phases=tuple(phases[1:]), jobs=fields.one("jobs", _count),
                       environment_policy=fields.one("environment-policy", _nonempty_string),
                       make=fields.one("make", _nonempty_string),
                       make_configuration=_make_configuration(fields))


def _make_configuration(fields: _Fields) -> tuple[tuple[str, str], ...]:
    """``(make-configuration ("SRCCONF" "/dev/null" | "sha256:HEX") ...)``, optional."""
    if "make-configuration" not in fields.values:
        return ()
    item = fields.field("make-configuration")
    out = []
    for pair in item[1:]:
        if not (isinstance(pair, SList) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)
                and pair[0] in ("SRCCONF", "__MAKE_CONF", "SRC_ENV_CONF")
                and (pair[1] == "/dev/null" or (pair[1].startswith("sha256:")
                                                and SHA256_RE.match(pair[1][7:])))):
            raise fields.error('build-policy: make-configuration expects ("SRCCONF" '
                               '"/dev/null" or "sha256:HEX") pairs', item)
        out.append((pair[0], pair[1]))
    if len({name for name, _ in out}) != len(out):
        raise fields.error("build-policy: make-configuration names a variable twice", item)
    return tuple(out)


def _file_entry(item: Datum, where: str, source: str | None, at: SList) -> tuple[str, str]:
    if not (_symbol_head(item, "file") and isinstance(item, SList) and len(item) == 3):
        raise MetadataError(f"{where}: expected (file \"PATH\" (sha256 \"HEX\"))", file=source,
                            line=getattr(item, "line", None) or at.line)
    path, digest = item[1], item[2]
    problem = _relative(path)
    if problem:
        raise MetadataError(f"{where}: file path {path!r} {problem}", file=source, line=item.line)
    if not (_symbol_head(digest, "sha256") and isinstance(digest, SList) and len(digest) == 2
            and isinstance(digest[1], str) and SHA256_RE.match(digest[1])):
        raise MetadataError(f"{where}: file {path!r} needs (sha256 \"<64 lower-case hex>\")",
                            file=source, line=item.line)
    return path, digest[1]


def _artifact(item: Datum, source: str | None, at: SList) -> ArtifactEntry:
    if not _symbol_head(item, "artifact") or not isinstance(item, SList):
        raise MetadataError("artifacts: expected (artifact FIELD ...) entries", file=source,
                            line=getattr(item, "line", None) or at.line)
    fields = _Fields(item, {"kind", "path", "files"}, "artifact", source)
    kind = fields.one("kind", _string)
    if kind not in ARTIFACT_KINDS:
        raise fields.error(f"artifact: unknown kind {kind!r} (known: {', '.join(ARTIFACT_KINDS)})",
                           fields.field("kind"))
    where = f"artifact {kind}"
    path = fields.one("path", _relative)
    files_form = fields.field("files")
    files = tuple(_file_entry(entry, where, source, files_form) for entry in files_form[1:])
    seen = set()
    for file_path, _ in files:
        if file_path in seen:
            raise fields.error(f"{where}: file {file_path!r} listed twice", files_form)
        seen.add(file_path)
    return ArtifactEntry(kind=kind, path=path, files=files)


_TOP_FIELDS = {"format-version", "executor", "executor-version", "run-id", "guest-host-name",
               "closure-path", "development-profile-path", "base", "source", "build-policy",
               "artifacts"}


def _promotion(form: SList, source: str | None) -> Promotion:
    fields = _Fields(form, _TOP_FIELDS, PROMOTION_FORM, source)
    fields.one("format-version", _version)
    artifacts_form = fields.field("artifacts")
    artifacts = tuple(_artifact(entry, source, artifacts_form) for entry in artifacts_form[1:])
    kinds = [entry.kind for entry in artifacts]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise fields.error(f"artifacts: kind {kind!r} given twice", artifacts_form)
    if not artifacts:
        raise fields.error("artifacts: no artifact listed", artifacts_form)
    return Promotion(
        executor=fields.one("executor", _name),
        executor_version=fields.one("executor-version", _nonempty_string),
        run_id=fields.one("run-id", _nonempty_string),
        guest_host_name=fields.one("guest-host-name", _string),
        closure_path=fields.one("closure-path", _store_path, optional=True, allow_false=True),
        development_profile_path=fields.one("development-profile-path", _store_path,
                                            optional=True, allow_false=True),
        base=_base(fields.field("base"), source),
        source=_source(fields.field("source"), source),
        policy=_policy(fields.field("build-policy"), source),
        artifacts=artifacts,
        format_version=FORMAT_VERSION,
    )


def loads_promotion(data: bytes | str, *, source: str | Path | None = None) -> Promotion:
    """Parse promotion.scm text into a :class:`Promotion`.

    :raises MetadataError: naming ``source`` and the line of the offending form.
    """
    name = str(source) if source is not None else None
    forms = sexp.loads(data, source=name)
    if not forms:
        raise MetadataError(f"empty: expected one ({PROMOTION_FORM} ...) form", file=name)
    first = forms[0]
    if not _symbol_head(first, PROMOTION_FORM) or not isinstance(first, SList):
        line = first.line if isinstance(first, SList) else None
        raise MetadataError(f"unknown top-level form (expected ({PROMOTION_FORM} ...))",
                            file=name, line=line)
    if len(forms) > 1:
        extra = forms[1]
        raise MetadataError("unknown top-level form after the promotion", file=name,
                            line=extra.line if isinstance(extra, SList) else None)
    return _promotion(first, name)


def read_promotion(path: str | Path) -> Promotion:
    """Read and check the promotion description at ``path``.

    :raises MetadataError: naming the file and line on any problem.
    """
    return loads_promotion(_read_bounded(path), source=path)


def _read_bounded(path: str | Path) -> bytes:
    from fruix_core.promotion.safeio import read_regular

    try:
        return read_regular(path, limit=sexp.MAX_INPUT_BYTES)
    except OSError as err:
        raise MetadataError(f"cannot read: {err.strerror or err}", file=path) from None


# -- writing ---------------------------------------------------------------


def _opt(value: str | None) -> str | bool:
    return value if value is not None else False


def promotion_datum(promotion: Promotion) -> list[Datum]:
    """The S-expression (as nested lists) that represents ``promotion``."""
    s = Symbol
    base, src, policy = promotion.base, promotion.source, promotion.policy
    artifacts: list[Datum] = [s("artifacts")]
    for entry in promotion.artifacts:
        files: list[Datum] = [s("files")]
        files.extend([s("file"), path, [s("sha256"), digest]] for path, digest in entry.files)
        artifacts.append([s("artifact"), [s("kind"), entry.kind], [s("path"), entry.path], files])
    return [
        s(PROMOTION_FORM),
        [s("format-version"), FORMAT_VERSION],
        [s("executor"), promotion.executor],
        [s("executor-version"), promotion.executor_version],
        [s("run-id"), promotion.run_id],
        [s("guest-host-name"), promotion.guest_host_name],
        [s("closure-path"), _opt(promotion.closure_path)],
        [s("development-profile-path"), _opt(promotion.development_profile_path)],
        [s("base"), [s("name"), base.name], [s("version"), base.version],
         [s("arch"), base.arch], [s("kernconf"), base.kernconf]],
        [s("source"), [s("name"), src.name], [s("path"), src.path],
         [s("signature"), src.signature]],
        [s("build-policy"), [s("phases"), *policy.phases], [s("jobs"), policy.jobs],
         [s("environment-policy"), policy.environment_policy], [s("make"), policy.make],
         *([[s("make-configuration"), *[[k, v] for k, v in policy.make_configuration]]]
           if policy.make_configuration else [])],
        artifacts,
    ]


def dumps_promotion(promotion: Promotion) -> str:
    """The deterministic promotion.scm text for ``promotion``.

    The result is checked by reading it back, so a description that this
    module would refuse to read is never written.

    :raises MetadataError: when ``promotion`` does not fit the schema.
    """
    try:
        text = _HEADER + sexp.dumps(promotion_datum(promotion))
    except (TypeError, ValueError) as err:
        raise MetadataError(f"cannot write promotion: {err}") from None
    loads_promotion(text, source="<promotion being written>")
    return text


def write_promotion(promotion: Promotion, path: str | Path) -> None:
    """Write ``promotion`` to ``path`` atomically (temporary file, fsync, rename).

    :raises MetadataError: when ``promotion`` does not fit the schema.
    :raises OSError: when the file cannot be written (the caller owns that directory).
    """
    text = dumps_promotion(promotion).encode("ascii")
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".promotion-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
