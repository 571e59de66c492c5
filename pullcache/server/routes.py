"""HTTP ↔ proxy: parse the request, call the proxy, write the headers clients need.

No caching decisions here. Header rules (distribution-spec, PROTOCOL §2.3):
``Docker-Content-Digest`` on every manifest and blob answer; manifest ``Content-Type``
exactly as upstream sent it; HEAD answers carry ``Content-Length`` and no body.
"""

from __future__ import annotations

import contextlib
import functools
import re
from types import MappingProxyType
from typing import Callable, Mapping
from urllib.parse import urlencode

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..cache.fill import FillFailed
from ..errors import NameUnknown, PaginationInvalid, RangeInvalid, Unsupported
from ..oci import Digest, parse_accept
from ..proxy import BlobAnswer
from ..routing import Target, resolve
from .keys import METRICS, PROXY, ROUTES, SENDFILE, STORE
from .middleware import API_VERSION
from .sendfile import SendfilePool

log = structlog.get_logger("pullcache.routes")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
BLOB_TYPE = "application/octet-stream"


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    for base in ("/v2", "/{prefix}/v2"):
        r.add_route("*", base, ping)
        r.add_route("*", base + "/", ping)
        r.add_route("*", base + "/{tail:.+}", pull)


async def ping(request: web.Request) -> web.Response:
    """``GET /v2/``: the API version check (distribution-spec end-1).

    Under a prefix naming no upstream it is a 404, so the client moves on to its next mirror.
    """
    _pull_method(request)
    for host in (request.match_info.get("prefix"), request.query.get("ns")):
        if host and request.app[ROUTES].lookup(host) is None:
            raise NameUnknown(host, message=f"no upstream configured for {host!r}")
    # The answer never changes: body and headers built once (no json.dumps per request).
    return web.Response(body=b"{}", headers=_PING_HEADERS)


_PING_HEADERS = {**API_VERSION, "Content-Type": "application/json; charset=utf-8"}


async def pull(request: web.Request) -> web.StreamResponse:
    _pull_method(request)
    target = resolve(request.app[ROUTES], request.match_info["tail"],
                     prefix=request.match_info.get("prefix"),
                     ns=request.query.get("ns"))
    request["upstream"] = target.route.upstream
    return await _HANDLERS[target.kind](request, target)


def _headers(target: Target) -> dict[str, str]:
    """Headers of every pull answer; routed ones echo the namespace (distribution-spec
    "Registry Proxying": a proxy SHOULD answer ``OCI-Namespace``)."""
    if target.route.namespace:
        return {**API_VERSION, "OCI-Namespace": target.route.namespace}
    return dict(API_VERSION)


def _pull_method(request: web.Request) -> None:
    if request.method not in ("GET", "HEAD"):
        # A pull-through cache accepts no pushes or deletes (distribution-spec code-13).
        raise Unsupported(f"{request.method} is not supported by a pull-through cache")


# -- manifests ---------------------------------------------------------------------------------

async def manifest(request: web.Request, target: Target) -> web.Response:
    accept = parse_accept(request.headers.getall("Accept", []))
    answer = await request.app[PROXY].manifest(target.route, target.reference, accept)
    request["cache"] = answer.cache
    # aiohttp sends no body for HEAD but keeps our Content-Length.
    return web.Response(body=answer.body, headers=_manifest_headers(
        answer.digest, answer.media_type, len(answer.body), target.route.namespace,
        answer.warning))


@functools.lru_cache(maxsize=1024)   # hot manifests are answered again and again
def _manifest_headers(digest: Digest, media_type: str, length: int, namespace: str | None,
                      warning: str | None) -> Mapping[str, str]:
    """A manifest answer's headers (aiohttp copies them into each response)."""
    headers = {**API_VERSION, "Docker-Content-Digest": str(digest), "Content-Type": media_type,
               "Content-Length": str(length), "ETag": f'"{digest}"'}
    if namespace:
        headers["OCI-Namespace"] = namespace
    if warning:
        headers["Warning"] = warning
    return MappingProxyType(headers)


# -- blobs ---------------------------------------------------------------------------------------

async def blob(request: web.Request, target: Target) -> web.StreamResponse:
    digest = Digest.parse(target.reference)
    proxy = request.app[PROXY]
    headers = {**_headers(target), "Docker-Content-Digest": str(digest), "Content-Type": BLOB_TYPE,
               "Accept-Ranges": "bytes", "ETag": f'"{digest}"'}
    if request.method == "HEAD":
        size, cache = await proxy.blob_size(target.route, digest)
        request["cache"] = cache
        if size is not None:
            headers["Content-Length"] = str(size)
        return web.Response(headers=headers)
    answer = await proxy.blob(target.route, digest)
    request["cache"] = answer.cache
    if answer.entry is not None:
        return await _send_file(request, answer, headers)
    return await _send_fill(request, answer, headers)


async def _send_file(request: web.Request, answer: BlobAnswer, headers) -> web.StreamResponse:
    """A committed blob: sendfile, with Range → 206 handled by FileResponse (RFC 9110 §14)."""
    store = request.app[STORE]
    entry = answer.entry
    return _PinnedFile(store.path(entry), lambda: store.unpin(entry),
                       request.app[METRICS].bytes_served.labels("cache"),
                       request.app[SENDFILE], headers=headers)


class _PinnedFile(web.FileResponse):
    """A FileResponse for a blob the proxy pinned (safe from eviction): unpinned once sent;
    sent with sendfile(2) under uvloop too.

    aiohttp prepares a returned response itself, after the handler; the pin spans that.
    aiohttp's zero-copy path is ``loop.sendfile``, which uvloop does not implement: aiohttp
    then silently copies the file through Python in 256 KiB reads. We flush the headers and
    hand the socket to ``os.sendfile`` in a thread of the app's sendfile pool.
    """

    def __init__(self, path, unpin: Callable[[], None], served, pool: SendfilePool,
                 **kwargs) -> None:
        super().__init__(path, **kwargs)
        self._unpin: Callable[[], None] | None = unpin   # the proxy pinned it for us
        self._served = served
        self._pool = pool

    async def prepare(self, request):
        try:
            return await super().prepare(request)
        finally:
            if self._unpin is not None:
                self._unpin()
                self._unpin = None
                self._served.inc(self.content_length or 0)

    async def _sendfile(self, request, fobj, offset: int, count: int):
        writer = await web.StreamResponse.prepare(self, request)
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or self.compression or not self._pool.available:
            return await self._sendfile_fallback(writer, fobj, offset, count)
        await _flushed(transport, writer)
        await self._pool.send(sock.fileno(), fobj.fileno(), offset, count)
        await web.StreamResponse.write_eof(self)
        return writer


async def _flushed(transport, writer) -> None:
    """Wait until the transport has written everything it holds (our headers)."""
    if transport.get_write_buffer_size() == 0:
        return
    high, low = transport.get_write_buffer_limits()[::-1]
    transport.set_write_buffer_limits(high=0)   # paused until empty; drain() waits for that
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


async def _send_fill(request: web.Request, answer: BlobAnswer, headers) -> web.StreamResponse:
    """A blob still arriving: tail the fill, cut the connection if it fails."""
    start, end = 0, answer.size
    status = 200
    wanted = parse_range(request.headers.get("Range"), answer.size)
    if wanted is not None:
        start, end = wanted
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{answer.size}"
    resp = web.StreamResponse(status=status, headers=headers)
    if end is not None:
        resp.content_length = end - start
    writer = await resp.prepare(request)
    served = 0
    pool = request.app[SENDFILE]
    sock = request.transport.get_extra_info("socket") if request.transport else None
    zero_copy = pool.available and sock is not None and end is not None
    try:
        if zero_copy:
            # The bytes are in the fill's temp file already: sendfile them from there.
            await _flushed(request.transport, writer)
            async with contextlib.aclosing(answer.fill.spans(start, end)) as spans:
                async for fd, offset, length in spans:
                    await pool.send(sock.fileno(), fd, offset, length)
                    served += length
        else:
            async with contextlib.aclosing(answer.fill.read(start, end)) as chunks:
                async for chunk in chunks:
                    await resp.write(chunk)
                    served += len(chunk)
    except FillFailed as exc:
        # Headers are gone; the only honest signal left is a broken transfer.
        log.warning("response_aborted", digest=str(answer.digest), sent=served, error=str(exc))
        request["outcome"] = "aborted"
        if request.transport is not None:
            request.transport.abort()
        return resp
    except ConnectionError:
        request["outcome"] = "client_gone"   # the fill carries on without this reader
        return resp
    finally:
        request.app[METRICS].bytes_served.labels("fill").inc(served)
    await resp.write_eof()
    return resp


def parse_range(header: str | None, size: int | None) -> tuple[int, int] | None:
    """One ``bytes=`` range → ``(start, end_exclusive)``; None to send the whole blob.

    Multiple ranges are answered with the whole blob, which RFC 9110 §14.2 allows.
    """
    if not header or size is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:                       # suffix range: the last N bytes
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None
    if start >= size:
        raise RangeInvalid(header, headers={"Content-Range": f"bytes */{size}"})
    return start, end


# -- tags/list and referrers -------------------------------------------------------------------

async def tags(request: web.Request, target: Target) -> web.Response:
    """``n``/``last`` pagination with an RFC 8288 ``Link`` (distribution-spec end-8b)."""
    n = parse_n(request.query.get("n"))   # before asking upstream: bad input costs nothing
    listing = await request.app[PROXY].tag_list(target.route)
    request["cache"] = "stale" if listing.warning else "pass"
    page, more = paginate(listing.tags, n, request.query.get("last"))
    headers = _headers(target)
    if listing.warning:
        headers["Warning"] = listing.warning
    if more and page:
        query = urlencode({"n": n, "last": page[-1]})
        headers["Link"] = f'<{request.path}?{query}>; rel="next"'
    name = request.match_info["tail"].rsplit("/tags/list", 1)[0]
    return web.json_response({"name": name, "tags": page}, headers=headers)


def parse_n(n: str | None) -> int | None:
    if n is None or n == "":
        return None
    if not (n.isascii() and n.isdigit()):
        raise PaginationInvalid(n)
    return int(n)


def paginate(tags: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """Tags after ``last``, at most ``n`` of them; and whether more follow."""
    if last:
        tags = [t for t in tags if t > last]
    if n is None:
        return tags, False
    return tags[:n], len(tags) > n


async def referrers(request: web.Request, target: Target) -> web.Response:
    query = {k: v for k, v in request.query.items() if k == "artifactType"}
    answer = await request.app[PROXY].referrers(target.route, Digest.parse(target.reference),
                                                query)
    request["cache"] = "pass"
    return web.Response(status=answer.status, body=answer.body,
                        headers={**_headers(target), **answer.headers})


_HANDLERS = {"manifests": manifest, "blobs": blob, "tags": tags, "referrers": referrers}


# -- operations ----------------------------------------------------------------------------------

async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[STORE].readiness()
    return web.json_response({"status": "ok" if not problems else "unready",
                              "problems": problems}, status=503 if problems else 200)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    usage = await request.app[STORE].usage()
    m.cache_bytes.set(usage["bytes"])
    m.cache_budget.set(usage["max_size"])
    body = generate_latest(m.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


__all__ = ["setup", "parse_range", "paginate"]
