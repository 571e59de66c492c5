"""The public app's one middleware (``front``), the error envelope, and the access line.

``front`` does, for every request: its id, who is asking (``gate.identity.AccessControl``), the
OCI error envelope, and its count. One middleware rather than a chain of three: each layer
of aiohttp's chain is a coroutine frame and a wrapper per request, and a ``GET /v2/`` is
little else.

The envelope (``answer_error``) is the one place domain errors become HTTP
(distribution-spec "Error Codes"): ``{"errors":[{"code","message","detail"}]}`` with the
error's status. Nothing becomes a 500 with a traceback, and no error text naming a path (an
``OSError``'s) reaches the client: the detail goes to the log only. The admin app uses it
alone (``oci_errors``).

Every request pays for this module, so it is kept cheap: a counter-based request id, one
``ContextVar`` set and reset, one ``Exchange`` for what the access line reports, a count in
a plain dict (``metrics.Tally``).
"""

from __future__ import annotations

import itertools
import json
import os
import re

import structlog
from aiohttp import web, web_response
from aiohttp.abc import AbstractAccessLogger

from .. import logs
from ..errors import NotFound, PullcacheError, StorageError, Unsupported
from ..metrics import Metrics
from ..gate.identity import AccessControl
from .keys import EXCHANGE, Exchange

log = structlog.get_logger("pullcache.access")
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
PEER_PREFIX = "/_cluster/"

# aiohttp would announce ``Server: Python/x aiohttp/y``; name no versions. aiohttp fills in
# its module's default on every response it prepares (``setdefault``), its own 400s for a
# malformed request line included, which no app signal sees; replacing that default once per
# process covers every answer, and costs nothing per response.
SERVER = "pullcache"
web_response.SERVER_SOFTWARE = SERVER


def error_response(error: PullcacheError, method: str) -> web.Response:
    body = json.dumps(error.envelope()).encode()
    headers = {**API_VERSION, **error.headers}
    resp = web.Response(status=error.status, body=body, content_type="application/json",
                        headers=headers)
    if method == "HEAD":
        resp.headers["Content-Length"] = str(len(body))
    return resp


# A client's X-Request-Id is kept (and echoed) only when it is short and plain: anything
# else could forge log lines or smuggle bytes into our answer, so it gets a fresh one.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ID_PREFIX = os.urandom(4).hex()      # unique across restarts; the counter within one
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids) & 0xFFFFFFFF:08x}"


def front(access: AccessControl, metrics: Metrics):
    """The public app's middleware: request id, identity, error envelope, count."""
    responses = metrics.http_responses

    @web.middleware
    async def front_door(request: web.Request, handler):
        request_id = request.headers.get("X-Request-Id")
        if request_id is None or _CLIENT_ID.fullmatch(request_id) is None:
            request_id = new_request_id()
        request[EXCHANGE] = exchange = Exchange(request_id)
        token = logs.REQUEST_ID.set(request_id)
        status = 500
        try:
            try:
                # A peer's request (cluster mode) is no client's: its handler asks for the
                # peer's proof instead (server/peers.py).
                if not request.path.startswith(PEER_PREFIX):
                    identity = access.known(request.remote,
                                            request.headers.get("Authorization"))
                    if identity is None:     # a password to check: bcrypt, in a thread
                        identity = await access.identify(request.remote,
                                                         request.headers.get("Authorization"))
                    exchange.identity = identity
                resp = await handler(request)
            except Exception as exc:  # noqa: BLE001 - answer_error re-raises what it must
                resp = answer_error(request, exc)
                if exchange.outcome == "ok" and isinstance(exc, PullcacheError) \
                        and not isinstance(exc, StorageError):
                    exchange.outcome = exc.code.lower()    # unavailable, manifest_unknown…
            status = resp.status
            if status >= 400 and exchange.outcome == "ok":
                # The access line's outcome never contradicts its status.
                exchange.outcome = "failed" if status >= 500 else "refused"
            resp.headers.setdefault("X-Request-Id", request_id)
            return resp
        finally:
            responses.inc(request.method, status)
            logs.REQUEST_ID.reset(token)
    return front_door


@web.middleware
async def oci_errors(request: web.Request, handler):
    """The envelope alone (the admin app: its requests carry no identity)."""
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 - answer_error re-raises what it must
        return answer_error(request, exc)


def answer_error(request: web.Request, exc: Exception) -> web.Response:
    """The OCI error envelope for ``exc``; re-raises what must not be answered (a redirect,
    a client that went away)."""
    method = request.method
    if isinstance(exc, StorageError):
        # Its detail is an OSError's text, naming cache paths: for the log only.
        log.warning("request_failed", error=str(exc))
        return error_response(StorageError(), method)
    if isinstance(exc, PullcacheError):
        return error_response(exc, method)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return error_response(Unsupported(method), method)
    if isinstance(exc, web.HTTPNotFound):
        return error_response(NotFound(request.path), method)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        err = PullcacheError(exc.reason)
        err.status, err.code, err.message = exc.status, "UNKNOWN", exc.reason
        return error_response(err, method)
    if isinstance(exc, (ConnectionError, OSError)):
        if request.transport is None or request.transport.is_closing():
            raise exc  # the client went away; nothing to answer
        # The text names cache paths: the log gets it, the client a generic message.
        log.error("request_failed", error=str(exc), exc_info=exc)
        return error_response(StorageError(), method)
    # The one place an unexpected error is answered.
    log.error("request_failed", error=repr(exc), exc_info=exc)
    return error_response(PullcacheError("internal error"), method)


class AccessLogger(AbstractAccessLogger):
    """One line per request, written once the response has been sent (or cut)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        ex = request.get(EXCHANGE)   # None: aiohttp answered before any handler (a bad request)
        if ex is None:
            ex = _NOBODY
        identity = ex.identity
        logs.access(request_id=ex.request_id, method=request.method,
                    path=request.path, status=response.status, bytes=_sent(response),
                    seconds=round(time, 4), cache=ex.cache, upstream=ex.upstream,
                    user=identity.user if identity is not None else None,
                    outcome=ex.outcome, user_agent=request.headers.get("User-Agent"))


_NOBODY = Exchange(None)  # type: ignore[arg-type]


def _sent(resp: web.StreamResponse) -> int | None:
    """Body bytes: the Content-Length we answered with (sendfile bypasses aiohttp's byte
    count, and ``body_length`` counts the headers too)."""
    if resp.content_length is not None:
        return resp.content_length
    return resp.body_length
