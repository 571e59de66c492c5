"""Request middlewares (request id, OCI error envelope) and the access line.

The envelope middleware is the one place domain errors become HTTP (distribution-spec
"Error Codes"): ``{"errors":[{"code","message","detail"}]}`` with the error's status.
Nothing becomes a 500 with a traceback.
"""

from __future__ import annotations

import json
import uuid

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..errors import NotFound, PullcacheError, Unsupported
from .keys import METRICS

log = structlog.get_logger("pullcache.access")
RESPONSE_STARTED = "response_started"
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


def error_response(error: PullcacheError, method: str) -> web.Response:
    body = json.dumps(error.envelope()).encode()
    headers = {**API_VERSION, **error.headers}
    resp = web.Response(status=error.status, body=body, content_type="application/json",
                        headers=headers)
    if method == "HEAD":
        resp.headers["Content-Length"] = str(len(body))
    return resp


@web.middleware
async def request_context(request: web.Request, handler):
    """Tag the request (and every log line it causes) with a request id; count it."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    request["request_id"] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        resp.headers.setdefault("X-Request-Id", request_id)
        return resp
    finally:
        request.app[METRICS].http_responses.labels(request.method, str(status)).inc()
        structlog.contextvars.unbind_contextvars("request_id")


class AccessLogger(AbstractAccessLogger):
    """One line per request, written once the response has been sent (or cut)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.info("request", request_id=request.get("request_id"), method=request.method,
                 path=request.path, status=response.status, bytes=_sent(response),
                 seconds=round(time, 4), cache=request.get("cache"),
                 upstream=request.get("upstream"), outcome=request.get("outcome", "ok"),
                 user_agent=request.headers.get("User-Agent"))


async def mark_started(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the status line and headers are on their way."""
    request[RESPONSE_STARTED] = True


@web.middleware
async def oci_errors(request: web.Request, handler):
    try:
        return await _cut_if_started(request, handler)
    except PullcacheError as exc:
        return error_response(exc, request.method)
    except web.HTTPMethodNotAllowed:
        return error_response(Unsupported(request.method), request.method)
    except web.HTTPNotFound:
        return error_response(NotFound(request.path), request.method)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = PullcacheError(exc.reason)
        err.status, err.code, err.message = exc.status, "UNKNOWN", exc.reason
        return error_response(err, request.method)
    except (ConnectionError, OSError) as exc:
        if request.transport is None or request.transport.is_closing():
            raise  # the client went away; nothing to answer
        log.exception("request_failed", error=str(exc))
        return error_response(PullcacheError(str(exc)), request.method)
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected error is answered
        log.exception("request_failed", error=repr(exc))
        return error_response(PullcacheError("internal error"), request.method)


async def _cut_if_started(request: web.Request, handler):
    """An error after the response started cannot become an error response: it would be
    written into the body the client is reading (and a client reading up to Content-Length
    would take it for blob bytes). The only honest signal left is a cut connection."""
    try:
        return await handler(request)
    except Exception as exc:
        if not request.get(RESPONSE_STARTED):
            raise
        log.warning("response_cut", error=repr(exc))
        request["outcome"] = "aborted"
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("response cut after it started") from exc


def _sent(resp: web.StreamResponse) -> int | None:
    """Body bytes: the Content-Length we answered with (sendfile bypasses aiohttp's byte
    count, and ``body_length`` counts the headers too)."""
    if resp.content_length is not None:
        return resp.content_length
    return resp.body_length
