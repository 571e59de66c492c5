"""Request middlewares: request id + one access line, and the OCI error envelope.

The envelope middleware is the one place domain errors become HTTP (distribution-spec
"Error Codes"): ``{"errors":[{"code","message","detail"}]}`` with the error's status.
Nothing becomes a 500 with a traceback.
"""

from __future__ import annotations

import json
import time
import uuid

import structlog
from aiohttp import web

from ..errors import NotFound, PullcacheError, Unsupported
from .keys import ACCESS_LOG, METRICS

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


@web.middleware
async def access_log(request: web.Request, handler):
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
    structlog.contextvars.bind_contextvars(request_id=request_id)
    began = time.monotonic()
    resp: web.StreamResponse | None = None
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        resp.headers.setdefault("X-Request-Id", request_id)
        return resp
    except BaseException:
        status = 499 if request.transport is None or request.transport.is_closing() else 500
        raise
    finally:
        request.app[METRICS].http_responses.labels(request.method, str(status)).inc()
        if request.app.get(ACCESS_LOG, True):
            log.info("request", method=request.method, path=request.path, status=status,
                     bytes=_sent(resp), seconds=round(time.monotonic() - began, 4),
                     cache=request.get("cache"), upstream=request.get("upstream"),
                     user_agent=request.headers.get("User-Agent"))
        structlog.contextvars.unbind_contextvars("request_id")


@web.middleware
async def oci_errors(request: web.Request, handler):
    try:
        return await handler(request)
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


def _sent(resp: web.StreamResponse | None) -> int | None:
    if resp is None:
        return None
    try:
        return resp.body_length
    except Exception:  # noqa: BLE001 - not prepared yet
        return None
