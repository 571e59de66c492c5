"""A counting, fault-injecting HTTP reverse proxy for tests (aiohttp, background thread).

``FaultProxy(upstream_url)`` forwards every request to the upstream unchanged
(except Host and hop-by-hop headers), streams the response back, rewrites
``Location`` headers that point at the upstream, and records ``(method, path_qs)``
of every request. One fault at a time can be armed from the test thread::

    proxy.set_fault("truncate", match="/blobs/sha256:", at_byte=1000, times=1)

Kinds: corrupt, truncate, stall, status, blackhole, reset (see :meth:`FaultProxy.set_fault`).
For a soak, ``proxy.chaos = Chaos(seed, rate)`` (tests/support/chaos.py) faults requests at
random, whenever no armed fault applies; ``proxy.chaos.counts`` counts them by kind.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.support._aiothread import ThreadedApp
from tests.support.chaos import BodyFault, Chaos, Draw, abort_with_rst

FAULT_KINDS = ("corrupt", "truncate", "stall", "status", "blackhole", "reset", "redirect")
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
))
# aiohttp's client adds these when absent; the upstream must see exactly what the client sent.
CLIENT_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
CHUNK = 64 * 1024
ERROR_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND", 429: "TOOMANYREQUESTS"}


@dataclass
class Fault:
    kind: str
    match: str
    method: str | None
    status: int
    retry_after: int | float | str | None
    at_byte: int
    remaining: int | None  # None: unlimited

    def matches(self, method: str, path: str) -> bool:
        return self.match in path and (self.method is None or self.method.upper() == method.upper())


CDN_PREFIX = "/__cdn__"


class FaultProxy(ThreadedApp):
    """Reverse proxy to ``upstream_url`` on 127.0.0.1 (``.url``, ``.host``; ``start()``/``stop()``).

    Counting: ``requests`` (snapshot list of ``(method, path_qs)``), ``count()``,
    ``ranges()`` (their ``Range`` headers), ``reset_counts()``. Faults: ``set_fault()``, ``clear_fault()``, ``release()``,
    ``stalled`` (threading.Event), ``fault_hits`` (requests a fault was applied to).
    """

    thread_name = "fault-proxy"
    shutdown_timeout = 1.0

    def __init__(self, upstream_url: str, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.upstream_url = upstream_url.rstrip("/")
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        self._ranges: list[tuple[str, str, str | None]] = []   # (method, path_qs, Range)
        self._fault: Fault | None = None
        self.fault_hits = 0
        #: set (from the proxy thread) whenever a "stall" fault reaches its stall point
        self.stalled = threading.Event()
        self._release: asyncio.Event | None = None  # current stall generation (loop-owned)
        self._unblock: asyncio.Event | None = None  # blackhole generation (loop-owned)
        self._session: aiohttp.ClientSession | None = None
        #: headers added to every forwarded response (e.g. Docker Hub's ``ratelimit-*``)
        self.extra_headers: dict[str, str] = {}
        #: ``redirect`` faults send clients to ``http://localhost:<port>/__cdn__/…``, another
        #: host name for this proxy (a stand-in for Docker Hub's CDN or ECR's S3). What
        #: arrives there is recorded here, Authorization included, and forwarded upstream
        #: with ``cdn_authorization`` (the CDN's own credentials: a presigned URL's stand-in).
        self.cdn_requests: list[dict[str, str]] = []
        self.cdn_authorization: str | None = None
        #: random faults for a soak (see tests/support/chaos.py); None: only armed faults
        self.chaos: Chaos | None = None
        #: responses to paths containing this go out with no Content-Length, in chunked
        #: framing (an upstream that streams a body of unknown length); None: as upstream
        self.unknown_length: str | None = None

    # -- counting -----------------------------------------------------------------
    @property
    def requests(self) -> list[tuple[str, str]]:
        """Snapshot of ``(method, path_qs)`` for every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    def count(self, method: str | None = None, substring: str = "") -> int:
        """Requests whose method equals ``method`` (any if None) and whose path_qs contains ``substring``."""
        with self._lock:
            return sum(1 for m, p in self._requests
                       if (method is None or m == method.upper()) and substring in p)

    def ranges(self, method: str, substring: str = "") -> list[str | None]:
        """The ``Range`` header (None: none) of each ``method`` request whose path_qs
        contains ``substring``, oldest first."""
        with self._lock:
            return [r for m, p, r in self._ranges if m == method.upper() and substring in p]

    def reset_counts(self) -> None:
        with self._lock:
            self._requests.clear()
            self._ranges.clear()
            self.fault_hits = 0

    # -- faults -------------------------------------------------------------------
    def set_fault(self, kind: str, *, match: str = "/blobs/", status: int = 500,
                  retry_after: int | float | str | None = None, at_byte: int = 0,
                  times: int | None = None, method: str | None = None) -> None:
        """Arm a fault for requests whose path contains ``match`` (and method equals ``method``).

        * ``corrupt``: flip (xor 0xFF) the body byte at offset ``at_byte``; length unchanged.
        * ``truncate``: send the headers (upstream Content-Length) and ``at_byte`` body bytes, then close.
        * ``stall``: send the headers and ``at_byte`` body bytes, set ``stalled``, wait for
          ``release()`` (or ``clear_fault()``/``stop()``), then send the rest normally.
        * ``status``: answer ``status`` with an OCI error body (plus ``Retry-After`` if
          ``retry_after`` is given) without contacting upstream.
        * ``blackhole``: never answer; ``clear_fault()``/``stop()`` drop the connection.
        * ``reset``: abort the connection at once (TCP RST), nothing sent.

        ``times=N`` faults the next N matching requests only, then passes through.
        Replaces any armed fault (requests already stalled/blackholed stay so).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}, not {kind!r}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 (or None for always)")
        with self._lock:
            self._fault = Fault(kind, match, method, status, retry_after, at_byte, times)

    def clear_fault(self) -> None:
        """Disarm the fault; release stalled requests and drop blackholed ones."""
        with self._lock:
            self._fault = None
        self.release()
        if self._loop is not None and not self._loop.is_closed():
            self.call(self._new_blackhole_generation)

    def release(self) -> None:
        """Let every currently stalled response continue; clears ``stalled``.

        Requests that reach a stall point afterwards stall again (and set ``stalled``).
        """
        if self._loop is not None and not self._loop.is_closed():
            self.call(self._new_stall_generation)

    def _new_stall_generation(self) -> None:
        self.stalled.clear()
        if self._release is not None:
            self._release.set()
        self._release = asyncio.Event()

    def _new_blackhole_generation(self) -> None:
        if self._unblock is not None:
            self._unblock.set()
        self._unblock = asyncio.Event()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        """Record the request; return the fault to apply to it (consuming one of ``times``)."""
        with self._lock:
            fault = self._fault
            if fault is None or not fault.matches(method, path):
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._fault = None
            self.fault_hits += 1
            return fault

    # -- server -------------------------------------------------------------------
    async def make_app(self) -> web.Application:
        self._release = asyncio.Event()
        self._unblock = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def on_stop(self) -> None:
        # Wake stalled/blackholed handlers so shutdown does not wait on them.
        self._new_stall_generation()
        self._new_blackhole_generation()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._requests.append((request.method, request.path_qs))
            self._ranges.append((request.method, request.path_qs,
                                 request.headers.get("Range")))
        fault = self._take_fault(request.method, request.path)
        kind = fault.kind if fault else None
        chaos = self.chaos
        draw = chaos.draw(request.method, request.path) if fault is None and chaos else None
        if draw is not None and draw.kind.startswith("status_"):
            chaos.count(draw.kind)
            return self._status_response(Fault("status", "", None, draw.status,
                                               draw.retry_after, 0, None))
        if request.path.startswith(CDN_PREFIX):
            return await self._cdn(request)
        if kind == "redirect":
            return web.Response(status=307, headers={
                "Location": f"http://localhost:{self.port}{CDN_PREFIX}{request.path_qs}"})
        if kind == "reset":
            return self._reset(request)
        if kind == "status":
            return self._status_response(fault)
        if kind == "blackhole":
            assert self._unblock is not None
            await self._unblock.wait()
            return self._reset(request)
        try:
            return await self._forward(request, fault, draw)
        except aiohttp.ClientError as exc:  # upstream unreachable before any byte was sent
            return web.json_response(
                {"errors": [{"code": "UNAVAILABLE", "message": f"fault proxy: upstream error: {exc}"}]},
                status=502)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.cdn_requests.append({"host": request.host, **dict(request.headers)})
        target = request.rel_url.path_qs[len(CDN_PREFIX):]
        headers = {"Authorization": self.cdn_authorization} if self.cdn_authorization else {}
        assert self._session is not None
        async with self._session.get(self.upstream_url + target, headers=headers,
                                     allow_redirects=True) as upstream:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body,
                                headers={"Content-Type": "application/octet-stream"})

    @staticmethod
    def _reset(request: web.Request) -> web.Response:
        """Abort the connection with a TCP RST; aiohttp then ignores the returned response."""
        if request.transport is not None:
            abort_with_rst(request.transport)
        return web.Response(status=500)

    @staticmethod
    def _status_response(fault: Fault) -> web.Response:
        code = ERROR_CODES.get(fault.status, "UNAVAILABLE" if fault.status >= 500 else "UNKNOWN")
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        body = {"errors": [{"code": code, "message": f"injected by fault proxy: HTTP {fault.status}",
                            "detail": None}]}
        return web.json_response(body, status=fault.status, headers=headers)

    def _upstream_headers(self, request: web.Request) -> tuple[CIMultiDict, set[str]]:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        if "Content-Length" in request.headers:
            headers["Content-Length"] = request.headers["Content-Length"]
        skip = {h for h in CLIENT_AUTO_HEADERS if h not in request.headers}
        return headers, skip

    def _rewrite_location(self, value: str) -> str:
        if value.startswith(self.upstream_url):
            return self.url + value[len(self.upstream_url):]
        return value

    async def _forward(self, request: web.Request, fault: Fault | None,
                       draw: Draw | None = None) -> web.StreamResponse:
        assert self._session is not None
        headers, skip = self._upstream_headers(request)
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        # raw_path is the request target as sent (path and query, still percent-encoded).
        target = URL(self.upstream_url + request.raw_path, encoded=True)
        async with self._session.request(
            request.method, target, headers=headers, data=body,
            skip_auto_headers=skip, allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                lname = name.lower()
                if lname in HOP_BY_HOP:
                    continue
                response.headers.add(name, self._rewrite_location(value) if lname == "location" else value)
            for name, value in self.extra_headers.items():
                response.headers[name] = value
            if upstream.content_length is not None and not (
                    self.unknown_length and self.unknown_length in request.path):
                response.content_length = upstream.content_length
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            try:
                if draw is not None and self.chaos is not None:
                    return await self._stream_chaos(request, response, upstream, draw)
                return await self._stream_body(request, response, upstream, fault)
            except aiohttp.ClientError:
                # Upstream died mid-body: headers are out, so the only honest signal is to
                # drop the client connection too.
                if request.transport is not None:
                    request.transport.close()
                return response

    async def _stream_body(self, request: web.Request, response: web.StreamResponse,
                           upstream: aiohttp.ClientResponse, fault: Fault | None) -> web.StreamResponse:
        kind = fault.kind if fault else None
        at = fault.at_byte if fault else 0
        sent = 0
        if kind in ("stall", "truncate") and at == 0:
            await self._hit_cut_point(request, response, kind)
            if kind == "truncate":
                return response
        async for chunk in upstream.content.iter_chunked(CHUNK):
            end = sent + len(chunk)
            if kind == "corrupt" and sent <= at < end:
                buf = bytearray(chunk)
                buf[at - sent] ^= 0xFF
                chunk = bytes(buf)
            if kind in ("stall", "truncate") and sent < at <= end:
                await response.write(chunk[: at - sent])
                await self._hit_cut_point(request, response, kind)
                if kind == "truncate":
                    return response
                chunk = chunk[at - sent:]
                kind = None
            if chunk:
                await response.write(chunk)
            sent = end
        await response.write_eof()
        return response

    async def _stream_chaos(self, request: web.Request, response: web.StreamResponse,
                            upstream: aiohttp.ClientResponse, draw: Draw) -> web.StreamResponse:
        assert self.chaos is not None
        body = BodyFault(draw, self.chaos, upstream.content_length, request.transport)
        async for chunk in upstream.content.iter_chunked(CHUNK):
            if not await body.write(response, chunk):
                return response
        await response.write_eof()
        return response

    async def _hit_cut_point(self, request: web.Request, response: web.StreamResponse, kind: str) -> None:
        """At the fault offset: truncate closes the connection, stall waits for release()."""
        if kind == "truncate":
            # close() (not abort) flushes what was written, then FIN: the client sees a
            # short body against the announced Content-Length.
            if request.transport is not None:
                request.transport.close()
            return
        assert self._release is not None
        gate = self._release
        self.stalled.set()
        await gate.wait()
