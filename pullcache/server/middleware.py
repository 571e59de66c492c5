"""Request middlewares (request id, OCI error envelope) and the access line.

The envelope middleware is the one place domain errors become HTTP (distribution-spec
"Error Codes"): ``{"errors":[{"code","message","detail"}]}`` with the error's status.
Nothing becomes a 500 with a traceback, and no error text naming a path (an ``OSError``'s)
reaches the client: the detail goes to the log only.

Every request pays for this module, so it is kept cheap: a counter-based request id, one
``ContextVar`` set and reset, a metrics child looked up once (``metrics._Children``).
"""

from __future__ import annotations

import itertools
import json
import os
import re

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .. import logs
from ..errors import NotFound, PullcacheError, StorageError, Unsupported
from .keys import METRICS

log = structlog.get_logger("pullcache.access")
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


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


@web.middleware
async def request_context(request: web.Request, handler):
    """Tag the request (and every log line it causes) with a request id; count it."""
    request_id = request.headers.get("X-Request-Id")
    if request_id is None or _CLIENT_ID.fullmatch(request_id) is None:
        request_id = new_request_id()
    request["request_id"] = request_id
    token = logs.REQUEST_ID.set(request_id)
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        resp.headers.setdefault("X-Request-Id", request_id)
        return resp
    finally:
        request.app[METRICS].http_responses.labels(request.method, status).inc()
        logs.REQUEST_ID.reset(token)


class AccessLogger(AbstractAccessLogger):
    """One line per request, written once the response has been sent (or cut)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        logs.access(request_id=request.get("request_id"), method=request.method,
                    path=request.path, status=response.status, bytes=_sent(response),
                    seconds=round(time, 4), cache=request.get("cache"),
                    upstream=request.get("upstream"), user=request.get("user"),
                    outcome=request.get("outcome", "ok"),
                    user_agent=request.headers.get("User-Agent"))


@web.middleware
async def oci_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except StorageError as exc:
        # Its detail is an OSError's text, naming cache paths: for the log only.
        log.warning("request_failed", error=str(exc))
        return error_response(StorageError(), request.method)
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
        # The text names cache paths: the log gets it, the client a generic message.
        log.exception("request_failed", error=str(exc))
        return error_response(StorageError(), request.method)
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected error is answered
        log.exception("request_failed", error=repr(exc))
        return error_response(PullcacheError("internal error"), request.method)


def _sent(resp: web.StreamResponse) -> int | None:
    """Body bytes: the Content-Length we answered with (sendfile bypasses aiohttp's byte
    count, and ``body_length`` counts the headers too)."""
    if resp.content_length is not None:
        return resp.content_length
    return resp.body_length
