"""structlog, configured once from the CLI's ``main``.

Human console lines on stderr (colours only on a terminal), or JSON lines with
``--log-format json``. Secrets never reach the output: values of keys that
look like credentials are replaced before rendering.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from typing import TYPE_CHECKING, Any


def _import_structlog_without_rich() -> Any:
    """Import structlog without letting it import ``rich`` (≈ 50 ms of every command).

    structlog's ``dev`` module, which ``import structlog`` always loads, imports
    ``rich`` when it is installed, only to format tracebacks, which the CLI
    never shows an operator (an internal error is one line; details go to the
    debug log). The progress display imports ``rich`` itself when stderr is a
    terminal.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog as loaded

        return loaded
    sys.modules["rich"] = None  # type: ignore[assignment]  # "not installed", for structlog
    try:
        import structlog as loaded
    finally:
        del sys.modules["rich"]
    return loaded


if TYPE_CHECKING:
    import structlog
else:
    structlog = _import_structlog_without_rich()

__all__ = ["SECRET_KEYS", "configure_logging", "iso_now", "json_record", "redact_secrets"]

#: Event keys whose values are never rendered.
SECRET_KEYS = ("password", "passwd", "secret", "token", "credential", "private_key", "passphrase")

REDACTED = "<redacted>"


def redact_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: blank out credential-looking keys."""
    for key in list(event):
        lowered = key.lower()
        if any(marker in lowered for marker in SECRET_KEYS):
            event[key] = REDACTED
    return event


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    """A logger on the *current* ``sys.stderr``: while the live progress display owns the
    terminal it routes stderr lines above its live area."""
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """Configure structlog for this process (stderr only; stdout is for results)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        redact_secrets,
    ]
    if fmt == "json":
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=True),
        ]
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=True),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def iso_now() -> str:
    """Now in UTC, as the JSON log records write it (``2026-12-06T17:40:01.123456Z``)."""
    return _dt.datetime.now(_dt.UTC).isoformat().replace("+00:00", "Z")


def json_record(level: str, event: str, logger: str = "fruix", **fields: Any) -> str:
    """One JSON log line written outside structlog (the final error, progress events),
    shaped like structlog's own: ``timestamp``, ``level``, ``logger``, ``event``; fields
    that are ``None`` are left out, credential-looking ones redacted."""
    record = {"timestamp": iso_now(), "level": level, "logger": logger, "event": event,
              **{key: value for key, value in fields.items() if value is not None}}
    return json.dumps(redact_secrets(None, level, record), sort_keys=True, default=str)
