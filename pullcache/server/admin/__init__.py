"""The operator's listener (``server.admin_listen``): ``/metrics``, ``/healthz``, ``/readyz``
the ``/admin/…`` JSON API (``api.py``) and the status page at ``/`` (``page.py``).

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

from .api import setup_api
from .guard import same_site
from .page import setup_page
from ..keys import CORE, DISK, DRAINING, LOOPS, METRICS, STORE, TIER, UPSTREAMS, core_of
from ..middleware import oci_errors
from .objects import OPS


def build_admin_app(core: web.Application) -> web.Application:
    admin = web.Application(middlewares=[oci_errors, same_site])
    admin[CORE] = core
    setup_ops(admin)
    setup_api(admin)
    setup_page(admin)
    return admin


def setup_ops(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    core = core_of(request)
    if core[DRAINING].is_set():   # SIGTERM: take us out of the load balancer at once
        return web.json_response({"status": "draining", "problems": ["draining"]}, status=503)
    # A background loop that keeps failing (pullcache.tasks) makes the daemon unready even
    # when the disk is degraded: a failing loop is a fault, a full disk is a state.
    failing = core[LOOPS].failing()
    problems = await core[STORE].readiness() + failing
    ops = core.get(OPS)
    # Pins past the budget do not stop serving, but the operator must hear of it.
    detail = [ops.pinning.over_budget] if ops and ops.pinning and ops.pinning.over_budget \
        else []
    # A quota nearly spent still serves, but new tags will soon fail: say so.
    detail += [said for host, up in core[UPSTREAMS].items()
               if (said := up.client.quota.describe(host))]
    # The shared tier: a breaker open is no problem for readiness (pulls go to the origin),
    # but the operator must hear of it.
    tier = core[TIER].breakers() if TIER in core else None
    if tier is not None:
        detail += [f"tier {tier['name']}: {kind.replace('_', ' ')} {tier[kind]}"
                   for kind in ("read_breaker", "write_breaker") if tier[kind] != "closed"]
    extra = {"tier": tier} if tier is not None else {}
    disk = core[DISK].status() if DISK in core else None
    if disk is not None:
        # Degraded, still serving: fills pass through memory, nothing is cached.
        return web.json_response({"status": "degraded", **disk, "problems": problems,
                                  "detail": detail, **extra}, status=503 if failing else 200)
    return web.json_response({"status": "ok" if not problems else "unready",
                              "problems": problems, "detail": detail, **extra},
                             status=503 if problems else 200)


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
    if DISK in core:
        m.disk_degraded.set(core[DISK].status() is not None)
    body = generate_latest(m.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
