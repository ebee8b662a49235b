"""Names from untrusted trees, made safe to print on a terminal or in a log line.

A file name may hold any byte but ``/`` and NUL: escape sequences that
retitle or clear a terminal, a newline that splits a one-line error, bytes
that are not UTF-8. :func:`shown` renders such a name as printable text:
control characters and undecodable bytes become ``\\xHH`` (the backslash
itself ``\\\\``); printable Unicode stays as it is. JSON output keeps the
escaped form too, so it stays valid and one line per value.
"""

from __future__ import annotations

import os
import re

__all__ = ["shown"]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\udc80-\udcff\u2028\u2029\u202a-\u202e"
                     r"\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def shown(name: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """``name`` with every control character and undecodable byte escaped."""
    text = os.fsdecode(name)
    return _UNSAFE.sub(_escape, text)
