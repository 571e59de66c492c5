"""structlog set-up: JSON lines when not on a TTY, credentials never logged."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|credential", re.I)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.I)


def redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Blank secret-named fields; scrub userinfo in URLs and Authorization values in text."""
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and key != "event":
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = _BEARER.sub(r"\1 ***", _URL_USERINFO.sub("***@", value))
    return event


def setup(level: str = "info", fmt: str = "auto") -> None:
    numeric = logging.getLevelName(level.upper())
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer() if fmt == "console"
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp's own access log is replaced by ours (one line per request, in server/).
    logging.getLogger("aiohttp.access").disabled = True
