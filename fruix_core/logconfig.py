"""structlog, configured once from the CLI's ``main``.

Human console lines on stderr (colours only on a terminal), or JSON lines with
``--log-format json``. Secrets never reach the output: values of keys that
look like credentials are replaced before rendering.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["SECRET_KEYS", "configure_logging", "redact_secrets"]

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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
