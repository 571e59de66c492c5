"""HTTP ↔ proxy: parse the request, call the proxy, write the headers clients need.

No caching decisions here. Header rules (distribution-spec; docs/protocol.md §2.2):
``Docker-Content-Digest`` on every manifest and blob answer; manifest ``Content-Type``
exactly as upstream sent it; HEAD answers carry ``Content-Length`` and no body.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from urllib.parse import urlencode

import structlog
from aiohttp import web
from multidict import CIMultiDict

from ..cache.fill import FillFailed
from ..errors import Denied, NameUnknown, PaginationInvalid, Unsupported
from ..oci import OCI_INDEX, Digest, parse_accept, referrers_index
from ..proxy import BlobAnswer
from ..gate.policy import ANONYMOUS
from ..gate.routing import Target, resolve
from . import ranges
from .keys import EXCHANGE, METRICS, POLICY, PROXY, PULLS, ROUTES, SENDFILE, core_of
from .middleware import API_VERSION
from .sendfile import ClientStalled

log = structlog.get_logger("pullcache.routes")
BLOB_TYPE = "application/octet-stream"


def setup(app: web.Application) -> None:
    r = app.router
    for base in ("/v2", "/{prefix}/v2"):
        r.add_route("*", base, ping)
        r.add_route("*", base + "/", ping)
        r.add_route("*", base + "/{tail:.+}", pull)


async def ping(request: web.Request) -> web.Response:
    """``GET /v2/``: the API version check (distribution-spec end-1).

    Under a prefix naming no upstream it is a 404, so the client moves on to its next mirror.
    """
    _pull_method(request)
    # (The query is parsed only when there is one: most pings have none.)
    ns = request.query.get("ns") if request.query_string else None
    for host in (request.match_info.get("prefix"), ns):
        if host and request.app[ROUTES].lookup(host) is None:
            raise NameUnknown(host, message=f"no upstream configured for {host!r}")
    # The answer never changes: body and headers built once (no json.dumps per request).
    return web.Response(body=b"{}", headers=_PING_HEADERS)


_PING_HEADERS = {**API_VERSION, "Content-Type": "application/json; charset=utf-8"}


async def pull(request: web.Request) -> web.StreamResponse:
    _pull_method(request)
    target = resolve(request.app[ROUTES], request.match_info["tail"],
                     prefix=request.match_info.get("prefix"),
                     ns=request.query.get("ns") if request.query_string else None)
    request[EXCHANGE].upstream = target.route.upstream
    authorize(request, target)   # before the proxy: a refusal reveals nothing cached
    return await _HANDLERS[target.kind](request, target)


KINDS = {"manifests": "manifest", "blobs": "blob", "tags": "tags", "referrers": "referrers"}


def authorize(request: web.Request, target: Target) -> None:
    """Raise Denied unless the request's identity may pull ``target`` (``gate.policy``)."""
    exchange = request[EXCHANGE]
    user = exchange.identity.user if exchange.identity is not None else ANONYMOUS
    decision = request.app[POLICY].decide(user, target.route.upstream, target.route.repo)
    if not decision.allowed:
        exchange.outcome = "denied"
        request.app[METRICS].requests.inc(KINDS[target.kind], "denied")
        raise Denied(message=decision.reason)


def _headers(target: Target) -> dict[str, str]:
    """Headers of every pull answer; routed ones echo the namespace (distribution-spec
    "Registry Proxying": a proxy SHOULD answer ``OCI-Namespace``)."""
    if target.route.namespace:
        return {**API_VERSION, "OCI-Namespace": target.route.namespace}
    return dict(API_VERSION)


def _pull_method(request: web.Request) -> None:
    if request.method not in ("GET", "HEAD"):
        # A pull-through cache accepts no pushes or deletes: 405 UNSUPPORTED (code-13), which
        # end-9/end-10 list for disabled deletes; RFC 9110 §15.5.6 wants the Allow header.
        raise Unsupported(f"{request.method} is not supported by a pull-through cache",
                          headers={"Allow": "GET, HEAD"})


# -- manifests ---------------------------------------------------------------------------------

async def manifest(request: web.Request, target: Target) -> web.Response:
    accept = parse_accept(request.headers.getall("Accept", []))
    proxy = request.app[PROXY]
    answer = proxy.manifest_hit(target.route, target.reference, accept)
    if answer is None:
        answer = await proxy.manifest(target.route, target.reference, accept)
    request[EXCHANGE].cache = answer.cache
    if request.method == "GET":   # the status page's top images, by pulls
        request.app[PULLS].count(target.route.upstream, target.route.repo)
    # aiohttp sends no body for HEAD but keeps our Content-Length.
    return web.Response(body=answer.body, headers=_manifest_headers(
        answer.digest, answer.media_type, len(answer.body), target.route.namespace,
        answer.warning).copy())


@functools.lru_cache(maxsize=1024)   # hot manifests are answered again and again
def _manifest_headers(digest: Digest, media_type: str, length: int, namespace: str | None,
                      warning: str | None) -> CIMultiDict[str]:
    """A manifest answer's headers, kept: each response takes a ``copy()`` (aiohttp uses a
    ``CIMultiDict`` as it is, and a copy of one costs a tenth of building one from a dict)."""
    headers = {**API_VERSION, "Docker-Content-Digest": str(digest), "Content-Type": media_type,
               "Content-Length": str(length), "ETag": f'"{digest}"'}
    if namespace:
        headers["OCI-Namespace"] = namespace
    if warning:
        headers["Warning"] = warning
    return CIMultiDict(headers)


# -- blobs ---------------------------------------------------------------------------------------

async def blob(request: web.Request, target: Target) -> web.StreamResponse:
    digest = Digest.parse(target.reference)
    proxy = request.app[PROXY]
    etag = f'"{digest}"'
    headers = {**_headers(target), "Docker-Content-Digest": str(digest), "Content-Type": BLOB_TYPE,
               "Accept-Ranges": "bytes", "ETag": etag}
    if request.method == "HEAD":
        size, cache = await proxy.blob_size(target.route, digest)
        request[EXCHANGE].cache = cache
        if size is not None:
            headers["Content-Length"] = str(size)
        return web.Response(headers=headers)
    answer = await proxy.blob(target.route, digest)
    request[EXCHANGE].cache = answer.cache
    try:
        return await _send_blob(request, answer, headers)
    finally:
        await answer.body.aclose()


async def _send_blob(request: web.Request, answer: BlobAnswer, headers) -> web.StreamResponse:
    """Any blob, hit or fill alike: one Range policy (``ranges``), one ETag (the digest).

    Once ``prepare()`` has sent the headers, an error can only cut the connection: a second
    response written into a started body would look like blob bytes (and an unverified
    blob must look broken, never complete).
    """
    size = answer.size
    start, end, status = 0, size, 200
    wanted = ranges.wanted(request.headers, size, headers["ETag"])  # may raise 416: no body yet
    if wanted is not None:
        (start, end), status = wanted, 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    resp = web.StreamResponse(status=status, headers=headers)
    if end is not None:
        resp.content_length = end - start
    core = core_of(request)   # the public app, or the peer app's core (server/peers.py)
    sender = core[SENDFILE].sender(request, resp)
    try:
        writer = await resp.prepare(request)
        async with contextlib.aclosing(answer.body.spans(start, end, pusher=sender)) as spans:
            await sender.send(writer, spans, cork=answer.cache == "hit")
        await resp.write_eof()
    except asyncio.CancelledError:
        _cut(request, "cancelled")
        raise
    except FillFailed as exc:
        log.warning("response_aborted", digest=str(answer.digest), sent=sender.sent,
                    error=str(exc))
        _cut(request, "aborted")
    except ClientStalled:
        _cut(request, "client_stalled")
    except ConnectionError:
        _cut(request, "client_gone")   # a fill carries on without this reader
    except Exception as exc:  # noqa: BLE001 - after prepare() nothing may reach the envelope
        log.exception("response_failed", digest=str(answer.digest), sent=sender.sent,
                      error=repr(exc))
        _cut(request, "failed")
    finally:
        core[METRICS].bytes_served.labels(
            "cache" if answer.cache == "hit" else "fill").inc(sender.sent)
        core[METRICS].bytes_ridden.inc(sender.ridden)
    return resp


def _cut(request: web.Request, outcome: str) -> None:
    """Break the connection: the client sees a short body, never a complete-looking one."""
    request[EXCHANGE].outcome = outcome
    if request.transport is not None:
        request.transport.abort()


# -- tags/list and referrers -------------------------------------------------------------------

async def tags(request: web.Request, target: Target) -> web.Response:
    """``n``/``last`` pagination with an RFC 8288 ``Link`` (distribution-spec end-8b)."""
    n = parse_n(request.query.get("n"))   # before asking upstream: bad input costs nothing
    listing = await request.app[PROXY].tag_list(target.route)
    request[EXCHANGE].cache = "stale" if listing.warning else "pass"
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
    """Always a 200 image index (end-12a), filtered here by ``artifactType`` (end-12b).

    A malformed digest is a 400 DIGEST_INVALID: the spec's "If the request is invalid, such
    as a <digest> with an invalid syntax, a 400 Bad Request MUST be returned".
    """
    subject = Digest.parse(target.reference)
    answer = await request.app[PROXY].referrers(target.route, subject)
    request[EXCHANGE].cache = answer.cache
    artifact_type = request.query.get("artifactType") or None
    headers = {**_headers(target), "Content-Type": OCI_INDEX}
    if artifact_type:
        headers["OCI-Filters-Applied"] = "artifactType"
    if answer.warning:
        headers["Warning"] = answer.warning
    return web.Response(body=referrers_index(answer.descriptors, artifact_type),
                        headers=headers)


_HANDLERS = {"manifests": manifest, "blobs": blob, "tags": tags, "referrers": referrers}


__all__ = ["setup", "paginate"]
