"""The operator's listener (``server.admin_listen``): ``/metrics``, ``/healthz``, ``/readyz``
and the ``/admin/…`` JSON API.

It is a second ``web.Application`` on its own address, so the probes and the metrics are never
on the public port (where clients of the mirror could read them). It owns no objects: every
handler reads the public app's (``core``), which the composition root builds and whose
``cleanup_ctx`` runs them. With ``admin_listen = ""`` the ops routes are served by the public
app itself (``setup_ops``).
"""

from __future__ import annotations

import sqlite3

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .keys import CORE, DISK, METRICS, STORE
from .middleware import oci_errors


def build_admin_app(core: web.Application) -> web.Application:
    admin = web.Application(middlewares=[oci_errors])
    admin[CORE] = core
    setup_ops(admin)
    return admin


def core_of(request: web.Request) -> web.Application:
    """The app whose objects this request reports on (itself on a single listener)."""
    return request.app.get(CORE, request.app)


def setup_ops(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    core = core_of(request)
    problems = await core[STORE].readiness()
    disk = core[DISK].status() if DISK in core else None
    if disk is not None:
        # Degraded, still serving: fills pass through memory, nothing is cached.
        return web.json_response({"status": "degraded", **disk, "problems": problems})
    return web.json_response({"status": "ok" if not problems else "unready",
                              "problems": problems}, status=503 if problems else 200)


async def metrics(request: web.Request) -> web.Response:
    core = core_of(request)
    m = core[METRICS]
    try:
        usage = await core[STORE].usage()
    except (OSError, sqlite3.Error):   # a removed index, repaired by the next failing pull
        usage = None
    if usage is not None:
        m.cache_bytes.set(usage["bytes"])
        m.cache_budget.set(usage["max_size"])
    body = generate_latest(m.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
