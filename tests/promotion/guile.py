"""Read files with Guile 3's own ``read`` and describe the datum portably.

The description is itself printed by Guile as plain ASCII: strings become
``(str c1 c2 ...)`` with code points, symbols ``(sym "name")``, so it can be
compared exactly with what our reader returns.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fruix_core.promotion.sexp import Datum, Symbol

GUILE = shutil.which("guile")

_DESCRIBE = r"""
(define (describe d)
  (cond ((string? d) (cons 'str (map char->integer (string->list d))))
        ((symbol? d) (list 'sym (map char->integer (string->list (symbol->string d)))))
        ((eq? d #t) 'true)
        ((eq? d #f) 'false)
        ((integer? d) (list 'int d))
        ((null? d) '(list))
        ((pair? d) (cons 'list (map describe d)))
        (else (list 'other))))
(define port (open-input-file (cadr (command-line))))
(let loop ((d (read port)) (acc '()))
  (if (eof-object? d)
      (begin (write (reverse acc)) (newline))
      (loop (read port) (cons (describe d) acc))))
"""

#: Marks a test that reads our output with Guile's reader: it fails, never skips,
#: without guile (the ``guile_installed`` fixture lives in conftest.py).
needs_guile = pytest.mark.usefixtures("guile_installed")


def guile_describe(path: Path) -> str:
    """What Guile's ``read`` sees in ``path``, as the ASCII description above."""
    assert GUILE is not None
    result = subprocess.run([GUILE, "--no-auto-compile", "-c", _DESCRIBE, str(path)],
                            capture_output=True, text=True, timeout=60,
                            env={"LANG": "C", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _codes(text: str) -> str:
    return " ".join(str(ord(ch)) for ch in text)


def describe(datum: Datum) -> str:
    """The same description, computed from our reader's datum."""
    if datum is True:
        return "true"
    if datum is False:
        return "false"
    if isinstance(datum, int):
        return f"(int {datum})"
    if isinstance(datum, str):
        codes = _codes(datum)
        return f"(str {codes})" if codes else "(str)"
    if isinstance(datum, Symbol):
        return f"(sym ({_codes(datum.name)}))"
    items = " ".join(describe(item) for item in datum)
    return f"(list {items})" if items else "(list)"


def describe_all(data: list[Datum]) -> str:
    return "(" + " ".join(describe(d) for d in data) + ")"
