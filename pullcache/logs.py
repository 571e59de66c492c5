"""structlog set-up: JSON lines when not on a TTY, credentials never logged; the access line.

The request id reaches every line a request causes through one ``ContextVar``
(``REQUEST_ID``, set by the request middleware) read by one processor, rather than
structlog's ``merge_contextvars``, which copies the whole context on every line.

The access line (one per request) is the hot path of logging: in JSON mode it is formatted
directly (the same keys the structlog chain would write, scrubbed the same way) instead of
going through the processor chain, which cost about a third of a cached manifest's time.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import json
import logging
import re
import sys
import time
from typing import Any, Callable

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
            event[key] = scrub(value)
    return event


REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                       default=None)
_SUSPECT = re.compile(r"://|bearer|basic", re.I)   # cheap test before the two scrubbers
TEXT_MEMO = 4096   # access-line field values kept scrubbed and quoted


def add_request_id(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


@functools.lru_cache(maxsize=1024)   # user agents and hot paths repeat on every request
def scrub(text: str) -> str:
    """Userinfo in URLs and Authorization values in free text, blanked (see ``redact``)."""
    if _SUSPECT.search(text) is None:
        return text
    return _BEARER.sub(r"\1 ***", _URL_USERINFO.sub("***@", text))


class _Iso:
    """structlog's ``TimeStamper(fmt="iso", utc=True)`` format, its date part cached."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"


def _json_access_writer(file) -> Callable[..., None]:
    """Lines written in the same event-loop iteration go out in one write, at its end (one
    syscall for a burst of requests instead of one per request); outside a loop, at once."""
    quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
    stamp = _Iso()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            text = "".join(pending)
            pending.clear()
            file.write(text)
            file.flush()
    atexit.register(flush)

    def emit(line: str) -> None:
        pending.append(line)
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(flush)
            except RuntimeError:
                flush()

    # Field values repeat (methods, hot paths, user agents, users): each is scrubbed and
    # quoted once, then looked up; the memo is bounded, and cleared when full.
    texts: dict[str | None, str] = {None: "null"}

    def text(value: str) -> str:
        quoted = quote(scrub(value))
        if len(texts) >= TEXT_MEMO:
            texts.clear()
            texts[None] = "null"
        texts[value] = quoted
        return quoted

    def write(*, request_id, method, path, status, bytes, seconds, cache, upstream, user,
              outcome, user_agent) -> None:
        t = texts.get
        emit(
            # Request ids are new on each request: not memoised (and plain, or replaced).
            f'{{"request_id": {"null" if request_id is None else quote(request_id)}, '
            f'"method": {t(method) or text(method)}, '
            f'"path": {t(path) or text(path)}, "status": {int(status)}, '
            f'"bytes": {"null" if bytes is None else int(bytes)}, "seconds": {seconds!r}, '
            f'"cache": {t(cache) or text(cache)}, "upstream": {t(upstream) or text(upstream)}, '
            f'"user": {t(user) or text(user)}, "outcome": {t(outcome) or text(outcome)}, '
            f'"user_agent": {t(user_agent) or text(user_agent)}, '
            f'"event": "request", "level": "info", "timestamp": "{stamp()}"}}\n')
    return write


def _structlog_access_writer() -> Callable[..., None]:
    log = structlog.get_logger("pullcache.access")

    def write(**fields: Any) -> None:
        log.info("request", **fields)
    return write


# What writes the access line: set by ``setup``; before it (tests), the structlog chain.
access: Callable[..., None] = _structlog_access_writer()


def setup(level: str = "info", fmt: str = "auto") -> None:
    numeric = logging.getLevelName(level.upper())
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer() if fmt == "console"
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            add_request_id,
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
    global access
    if numeric > logging.INFO:
        access = lambda **fields: None  # noqa: E731 - the level filters access lines out
    elif fmt == "json":
        access = _json_access_writer(sys.stderr)
    else:
        access = _structlog_access_writer()
