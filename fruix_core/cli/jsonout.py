"""The ``--json`` documents on stdout: one per command, success or failure.

Every document starts with ``"schema"`` (its shape and version, a file in
:mod:`fruix_core.schemas`) and ``"ok"``. A command that ran to its end prints
its own schema; ``ok`` is false when what it found is a failure (``store
verify`` found a difference, ``executors check`` a failed check). A command
that raised prints ``fruix.error/1`` instead: :func:`failure_document`, called
once, from ``main``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fruix_core.errors import ExitCode, FruixError

__all__ = ["ERROR_SCHEMA", "add_failure_fields", "emit", "failure_document"]

ERROR_SCHEMA = "fruix.error/1"


def emit(schema: str, body: Mapping[str, Any], *, ok: bool = True) -> None:
    """Print the document ``schema`` with ``body``'s keys after ``schema`` and ``ok``."""
    print(json.dumps({"schema": schema, "ok": ok, **body}, indent=2), flush=True)


def add_failure_fields(exc: BaseException, **fields: Any) -> None:
    """Attach keys for ``exc``'s ``fruix.error/1`` document (``run`` adds its executor, ...)."""
    extra = exc.__dict__.setdefault("json_fields", {})
    extra.update(fields)


def failure_document(exc: BaseException, command: str) -> dict[str, Any]:
    """The ``fruix.error/1`` document of ``exc``, which ended ``command``.

    Our own bugs (any other exception) and interrupts get one too, with the
    exit code ``main`` returns for them.
    """
    if isinstance(exc, FruixError):
        error, code = str(exc), int(exc.exit_code)
    elif isinstance(exc, KeyboardInterrupt):
        error, code = "interrupted", int(ExitCode.INTERRUPTED)
    else:
        error = f"internal error: {type(exc).__name__}: {exc}"
        code = int(ExitCode.INFRASTRUCTURE)
    document: dict[str, Any] = {
        "schema": ERROR_SCHEMA, "ok": False, "command": command, "error": error,
        "exit_code": code, "run_id": getattr(exc, "run_id", None),
        "result_root": getattr(exc, "result_root", None),
    }
    stage = getattr(exc, "stage", None) or getattr(exc, "phase", None)
    if isinstance(stage, str):
        document["phase"] = stage
    document.update(getattr(exc, "json_fields", {}))
    return document
