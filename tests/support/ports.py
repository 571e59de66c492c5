"""Loopback port helpers: pick a free port, wait for a TCP port or an HTTP endpoint.

Waiting always polls against a deadline (short, growing intervals); nothing here
sleeps a fixed amount hoping a state has been reached.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import time
import urllib.parse
from typing import Callable

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0).

    There is an unavoidable race between closing the probe socket and the caller
    binding the port; callers that spawn servers should be ready to retry.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _backoff() -> "Callable[[], None]":
    """A sleeper whose delay grows from 5 ms to 100 ms: polling, not waiting blind."""
    delay = 0.005

    def pause() -> None:
        nonlocal delay
        time.sleep(delay)
        delay = min(delay * 2, 0.1)

    return pause


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until a TCP connect to ``host:port`` succeeds; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    pause = _backoff()
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s: {last}")
        pause()


def _http_status(url: str, timeout: float) -> int:
    """One GET of ``url``; return the status (redirects are not followed)."""
    parts = urllib.parse.urlsplit(url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_http(
    url: str,
    timeout: float = 10.0,
    ok_statuses: tuple[int, ...] = (200, 401),
    *,
    abort: Callable[[], str | None] | None = None,
) -> int:
    """Poll ``GET url`` until it answers one of ``ok_statuses``; return that status.

    ``abort`` (optional) is called between attempts; if it returns a string the wait
    stops early with RuntimeError(that string) -- e.g. "the server process exited".
    Raises TimeoutError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pause = _backoff()
    last: object = None
    while True:
        try:
            status = _http_status(url, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if status in ok_statuses:
                return status
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        if abort is not None and (reason := abort()):
            raise RuntimeError(f"gave up waiting for {url}: {reason}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer {ok_statuses} within {timeout}s (last: {last})")
        pause()


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate()`` until truthy; raise TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    pause = _backoff()
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        pause()


async def eventually(predicate: Callable[[], object], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """``wait_until`` inside an event loop: poll ``predicate()`` between loop turns (1 ms
    apart, so the code under test runs) until truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.001)


async def settle(turns: int = 20) -> None:
    """For a negative assertion (something must *not* happen), which has no state to poll:
    let every other ready task run ``turns`` event-loop iterations first. Counted in loop
    turns, not seconds, so it neither waits longer than it must nor depends on the machine."""
    for _ in range(turns):
        await asyncio.sleep(0)
