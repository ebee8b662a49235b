"""A strict S-expression reader and a deterministic writer.

The reader accepts a small, explicit subset of Guile's datum syntax and never
evaluates anything: proper lists ``( ... )``, strings, symbols, decimal
integers, the booleans ``#t``/``#f`` and ``;`` line comments. Everything else
(``#.`` read-time evaluation, ``#(`` vectors, ``'`` quotes, dotted pairs,
``|symbols|``, block comments, brackets) is refused with a
:class:`~fruix_core.errors.MetadataError` naming the file and line. Input is
bounded in size, nesting depth and number of tokens.

The writer emits pure ASCII that Guile 3's default ``read`` accepts: strings
escape ``\\``, ``"`` and every character outside printable ASCII as ``\\xHH``,
``\\uHHHH`` or ``\\UHHHHHH`` (lower-case hex, fixed width). :func:`dumps` is
the pretty (but still canonical) form used for files; :func:`dumps_compact` is
the one-line form hashed for identities.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from fruix_core.errors import MetadataError

__all__ = [
    "MAX_DEPTH",
    "MAX_INPUT_BYTES",
    "MAX_TOKENS",
    "Datum",
    "SList",
    "Symbol",
    "dumps",
    "dumps_compact",
    "loads",
    "read_file",
]

#: Largest accepted input, in bytes.
MAX_INPUT_BYTES = 1 << 20
#: Deepest accepted list nesting.
MAX_DEPTH = 32
#: Most tokens (atoms and parentheses) accepted in one input.
MAX_TOKENS = 200_000
#: Longest accepted integer literal, in digits.
_MAX_INT_DIGITS = 19


@dataclass(frozen=True, slots=True)
class Symbol:
    """A symbol (an identifier such as ``executor``)."""

    name: str

    def __str__(self) -> str:
        return self.name


class SList(list[Any]):
    """A proper list read from input; ``line`` is where its ``(`` stood."""

    line: int

    def __init__(self, items: Iterable[Datum] = (), line: int = 0) -> None:
        super().__init__(items)
        self.line = line


#: What the reader returns and the writer accepts. Python lists and tuples are
#: written as lists; ``bool`` is written as ``#t``/``#f``.
Datum = Union[Symbol, str, int, bool, "SList", list[Any], tuple[Any, ...]]

_SYMBOL_RE = re.compile(r"[A-Za-z!$%&*/:<=>?^_~+\-.][A-Za-z0-9!$%&*/:<=>?^_~+\-.@]*\Z")
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_WRITE_SYMBOL_RE = re.compile(r"[a-z][a-z0-9\-]*\Z")
_DELIMITERS = frozenset(" \t\n\r\f()\";")
_SIMPLE_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r",
                   "a": "\a", "f": "\f", "v": "\v", "b": "\b", "0": "\0"}
_HEX_WIDTH = {"x": 2, "u": 4, "U": 6}


class _Reader:
    """A one-shot tokenizer + parser over a decoded text."""

    def __init__(self, text: str, source: str | None) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.source = source
        self.tokens = 0

    def fail(self, message: str, line: int | None = None) -> MetadataError:
        return MetadataError(message, file=self.source, line=line or self.line)

    def skip_space(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            ch = text[self.pos]
            if ch == "\n":
                self.line += 1
                self.pos += 1
            elif ch in " \t\r\f":
                self.pos += 1
            elif ch == ";":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
            else:
                return

    def count(self) -> None:
        self.tokens += 1
        if self.tokens > MAX_TOKENS:
            raise self.fail(f"too many tokens (more than {MAX_TOKENS})")

    def read_all(self) -> list[Datum]:
        data: list[Datum] = []
        while True:
            self.skip_space()
            if self.pos >= len(self.text):
                return data
            data.append(self.read_datum(0))

    def read_datum(self, depth: int) -> Datum:
        self.skip_space()
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of input")
        self.count()
        ch = self.text[self.pos]
        if ch == "(":
            return self.read_list(depth)
        if ch == ")":
            raise self.fail("unbalanced ')'")
        if ch == '"':
            return self.read_string()
        if ch in "[]{}":
            raise self.fail(f"brackets are not accepted: {ch!r}")
        if ch in "'`,":
            raise self.fail(f"quotation syntax is not accepted: {ch!r}")
        if ch == "|":
            raise self.fail("|symbol| syntax is not accepted")
        return self.read_atom()

    def read_list(self, depth: int) -> SList:
        if depth >= MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels")
        start = self.line
        self.pos += 1
        items = SList(line=start)
        while True:
            self.skip_space()
            if self.pos >= len(self.text):
                raise self.fail(f"unbalanced '(' opened on line {start}")
            if self.text[self.pos] == ")":
                self.pos += 1
                return items
            item = self.read_datum(depth + 1)
            if isinstance(item, Symbol) and item.name == ".":
                raise self.fail("dotted pairs are not accepted")
            items.append(item)

    def read_string(self) -> str:
        text, n = self.text, len(self.text)
        start = self.line
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= n:
                raise self.fail(f"unterminated string opened on line {start}")
            ch = text[self.pos]
            self.pos += 1
            if ch == '"':
                return "".join(out)
            if ch == "\n":
                self.line += 1
                out.append(ch)
            elif ch == "\\":
                out.append(self.read_escape())
            else:
                out.append(ch)

    def read_escape(self) -> str:
        if self.pos >= len(self.text):
            raise self.fail("unterminated string escape")
        ch = self.text[self.pos]
        self.pos += 1
        if ch in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[ch]
        if ch in _HEX_WIDTH:
            width = _HEX_WIDTH[ch]
            digits = self.text[self.pos:self.pos + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise self.fail(f"bad \\{ch} escape: expected {width} hex digits")
            self.pos += width
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise self.fail(f"bad \\{ch} escape: not a Unicode scalar value")
            return chr(code)
        if ch == "\n":
            # Guile 3's line continuation (ice-9/read.scm, read-string): the newline is
            # dropped and the blanks after it are kept, unlike R7RS.
            self.line += 1
            return ""
        raise self.fail(f"unknown string escape \\{ch}")

    def read_atom(self) -> Datum:
        text, n = self.text, len(self.text)
        start = self.pos
        while self.pos < n and text[self.pos] not in _DELIMITERS:
            self.pos += 1
        token = text[start:self.pos]
        if token.startswith("#"):
            if token in ("#t", "#true"):
                return True
            if token in ("#f", "#false"):
                return False
            raise self.fail(f"reader syntax {token[:12]!r} is not accepted")
        if _INT_RE.match(token):
            if len(token.lstrip("+-")) > _MAX_INT_DIGITS:
                raise self.fail(f"integer too long: {token[:24]}...")
            return int(token)
        if token[:1].isdigit() or (token[:1] in "+-" and token[1:2].isdigit()):
            raise self.fail(f"only decimal integers are accepted: {token[:24]!r}")
        if not _SYMBOL_RE.match(token):
            raise self.fail(f"invalid symbol {token[:24]!r}")
        return Symbol(token)


def _decode(data: bytes | str, source: str | None) -> str:
    if isinstance(data, str):
        if len(data.encode("utf-8", "surrogatepass")) > MAX_INPUT_BYTES:
            raise MetadataError(f"input larger than {MAX_INPUT_BYTES} bytes", file=source)
        return data
    if len(data) > MAX_INPUT_BYTES:
        raise MetadataError(f"input larger than {MAX_INPUT_BYTES} bytes", file=source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise MetadataError("input is not valid UTF-8", file=source, line=line) from None


def loads(data: bytes | str, *, source: str | Path | None = None) -> list[Datum]:
    """Read every datum in ``data``; never evaluates anything.

    :param data: the text (``bytes`` are decoded as strict UTF-8).
    :param source: file name used in error messages.
    :returns: the top-level data, in order.
    :raises MetadataError: on any syntax outside the accepted subset.
    """
    name = str(source) if source is not None else None
    return _Reader(_decode(data, name), name).read_all()


def read_file(path: str | Path) -> list[Datum]:
    """Read every datum of the file at ``path`` (bounded; see :data:`MAX_INPUT_BYTES`).

    :raises MetadataError: when the file cannot be read or is malformed.
    """
    from fruix_core.promotion.safeio import read_regular

    try:
        data = read_regular(path, limit=MAX_INPUT_BYTES)
    except OSError as err:
        raise MetadataError(f"cannot read: {err.strerror or err}", file=path) from None
    return loads(data, source=path)


# -- writer ----------------------------------------------------------------


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch == "\\":
        return "\\\\"
    if ch == '"':
        return '\\"'
    if 0x20 <= code < 0x7F:
        return ch
    if 0xD800 <= code <= 0xDFFF:
        raise ValueError("cannot write a surrogate code point")
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:06x}"


def _write_string(value: str) -> str:
    return '"' + "".join(_escape_char(ch) for ch in value) + '"'


def _write_atom(value: Datum) -> str:
    if value is True:
        return "#t"
    if value is False:
        return "#f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _write_string(value)
    if isinstance(value, Symbol):
        if not _WRITE_SYMBOL_RE.match(value.name):
            raise ValueError(f"refusing to write unusual symbol {value.name!r}")
        return value.name
    raise TypeError(f"cannot write {type(value).__name__} as a datum")


def dumps_compact(value: Datum) -> str:
    """One-line canonical form: lists as ``(a b c)`` with single spaces."""
    if isinstance(value, (list, tuple)):
        return "(" + " ".join(dumps_compact(item) for item in value) + ")"
    return _write_atom(value)


def _pretty(value: Datum, indent: int, width: int, out: list[str]) -> None:
    compact = dumps_compact(value)
    if not isinstance(value, (list, tuple)) or indent + len(compact) <= width or len(value) < 2:
        out.append(compact)
        return
    head: Sequence[Datum] = value[:1]
    rest: Sequence[Datum] = value[1:]
    # Keep a symbol head (and a following atom) on the opening line.
    if (isinstance(value[0], Symbol) and not isinstance(value[1], (list, tuple))
            and any(isinstance(item, (list, tuple)) for item in value[2:])):
        head, rest = value[:2], value[2:]
    out.append("(" + " ".join(dumps_compact(item) for item in head))
    for item in rest:
        out.append("\n" + " " * (indent + 2))
        _pretty(item, indent + 2, width, out)
    out.append(")")


def dumps(value: Datum, *, width: int = 100) -> str:
    """Deterministic, indented form of ``value`` ending in a newline.

    A list is written on one line when it fits in ``width`` columns; otherwise
    its head stays on the opening line and each further item goes on its own
    line, indented two more spaces. Output is ASCII and depends only on
    ``value``.
    """
    out: list[str] = []
    _pretty(value, 0, width, out)
    return "".join(out) + "\n"
