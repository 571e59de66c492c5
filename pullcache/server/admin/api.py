"""The admin JSON API under ``/admin/…`` (on ``server.admin_listen``), which every
``pullcache`` command that needs the daemon talks to (``cli/client.py``).

    GET  /admin/stats              usage, budget, hit ratio, evictions, pinned bytes
    GET  /admin/ls?repo=GLOB       cached images (tag → digest, size, last used, pinned)
    POST /admin/rm    {"refs": […]}
    POST /admin/gc
    POST /admin/warm  {"images": […], "platforms": […], "all_platforms": bool} → 202 job
                      (429 TOOMANYREQUESTS while ops.warm.MAX_WARM_JOBS run)
    POST /admin/verify {"repair": bool, "rate": bytes/s}                       → 202 job
    GET  /admin/jobs, /admin/jobs/{id}
    GET  /admin/pins
    GET  /admin/status             everything the status page shows
    GET  /admin/tier               the ECR tier's write-behind: pending, in flight, failed
                                   (with the last error) per repository; repositories
                                   (the shape: ``backing/report.py``)
    POST /admin/tier/sync          queue the jobs that failed for good again → {"queued": n}
    GET  /admin/cluster            cluster mode: members, each peer's breaker and last
                                   error; blob requests and bytes by source
"""

from __future__ import annotations

import time

from aiohttp import web

from ... import errors
from ...backing.report import report
from ...build import build_info
from ...ops.refs import Platform
from ...ops.samples import (counter_total, gauge_value, hit_ratio, request_counts,
                            source_counts)
from ...ops.summary import summary as summary_of
from ...ops.verify import Verifier, VerifyProgress
from ...ops.warm import start_warm
from ..keys import core_of, CLUSTER, METRICS, PROXY, ROUTES, STORE, TIER, UPSTREAMS
from .objects import OPS


class AdminRequestInvalid(errors.PullcacheError):
    status, code, message = 400, "INVALID_REQUEST", "invalid admin request"


def setup_api(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/stats", stats)
    r.add_get("/admin/ls", ls)
    r.add_post("/admin/rm", rm)
    r.add_post("/admin/gc", gc)
    r.add_post("/admin/warm", warm)
    r.add_post("/admin/verify", verify)
    r.add_get("/admin/jobs", jobs)
    r.add_get("/admin/jobs/{id}", job)
    r.add_get("/admin/pins", pins)
    r.add_get("/admin/status", status)
    r.add_get("/admin/tier", tier)
    r.add_post("/admin/tier/sync", tier_sync)
    r.add_get("/admin/cluster", cluster)


async def _body(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise AdminRequestInvalid(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise AdminRequestInvalid("body must be a JSON object")
    return body


def _strings(body: dict, key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdminRequestInvalid(f"{key} must be an array of strings")
    return value


async def summary(core: web.Application) -> dict:
    """The figures ``cache stats`` prints and ``cache ls`` totals (``ops/summary.py``)."""
    m = core[METRICS]
    hits, misses = request_counts(m)
    ops = core[OPS]
    usage = await core[STORE].usage()
    return summary_of(ops.config.cache.dir, usage, ops.pins.pinned_bytes(), {
        "hits": hits, "misses": misses, "hit_ratio": hit_ratio(m),
        "evicted_files": counter_total(m.evictions),
        "evicted_bytes": counter_total(m.evicted_bytes),
        "served_from_cache_bytes": counter_total(m.bytes_served, source="cache"),
        "fetched_upstream_bytes": counter_total(m.bytes_fetched),
        "fills_in_flight": len(core[PROXY].fills)})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await summary(core_of(request)))


async def ls(request: web.Request) -> web.Response:
    core = core_of(request)
    rows = await core[OPS].catalog.ls(request.query.get("repo") or None)
    return web.json_response({"images": rows, "totals": await summary(core)})


async def rm(request: web.Request) -> web.Response:
    core = core_of(request)
    refs = _strings(await _body(request), "refs")
    if not refs:
        raise AdminRequestInvalid("refs: name at least one image")
    result = await core[OPS].catalog.rm(core[ROUTES], refs)
    return web.json_response(result)


async def gc(request: web.Request) -> web.Response:
    store = core_of(request)[STORE]
    freed = await store.make_room()
    await store.release()
    return web.json_response({"freed_bytes": freed, **await store.usage()})


async def warm(request: web.Request) -> web.Response:
    core = core_of(request)
    ops = core[OPS]
    body = await _body(request)
    images = _strings(body, "images")
    if not images:
        raise AdminRequestInvalid("images: name at least one image")
    try:
        platforms = [Platform.parse(p) for p in _strings(body, "platforms")] or None
    except errors.PullcacheError as exc:
        raise AdminRequestInvalid(str(exc)) from None
    job = start_warm(ops.jobs, ops.warmer, images, platforms=platforms,
                     all_platforms=bool(body.get("all_platforms")))
    return web.json_response(job.snapshot(), status=202)


async def verify(request: web.Request) -> web.Response:
    core = core_of(request)
    ops = core[OPS]
    body = await _body(request)
    if ops.jobs.running("verify"):
        return web.json_response(ops.jobs.running("verify")[0].snapshot(), status=202)
    rate = body.get("rate")
    if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
        raise AdminRequestInvalid("rate must be a positive number of bytes per second")
    progress = VerifyProgress(repair=bool(body.get("repair")))
    verifier = Verifier(core[STORE], rate=rate)
    job = ops.jobs.start("verify", lambda: verifier.run(progress), progress.snapshot)
    return web.json_response(job.snapshot(), status=202)


async def jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": [j.snapshot() for j in core_of(request)[OPS].jobs.all()]})


async def job(request: web.Request) -> web.Response:
    found = core_of(request)[OPS].jobs.get(request.match_info["id"])
    if found is None:
        raise errors.NotFound(request.match_info["id"], message="no such job")
    return web.json_response(found.snapshot())


async def pins(request: web.Request) -> web.Response:
    ops = core_of(request)[OPS]
    return web.json_response({
        "pins": ops.pinning.snapshot() if ops.pinning else [],
        "pinned_bytes": ops.pins.pinned_bytes(), "max_size": ops.config.cache.max_size,
        "over_budget": ops.pinning.over_budget if ops.pinning else None})


async def status(request: web.Request) -> web.Response:
    core = core_of(request)
    ops, m = core[OPS], core[METRICS]
    fills = [{"digest": str(f.digest), "kind": f.kind, "bytes": f.written, "size": f.size,
              "readers": f.readers, "origin": f.origin,
              "passthrough": f.window is not None}   # the disk refused it: not cached
             for f in core[PROXY].fills.in_flight()]
    upstreams = []
    for host, up in core[UPSTREAMS].items():
        breaker = up.client.breaker
        last = m.last_errors.get(host)
        upstreams.append({
            "host": host, "breaker": breaker.state.name.lower().replace("_", "-"),
            "ratelimit_remaining": m.remaining(host),
            "last_error": {"age": round(time.time() - last[0], 1), "method": last[1],
                           "status": last[2]} if last else None})
    return web.json_response({
        "now": time.time(), "version": build_info()["version"],
        "summary": await summary(core), "fills": fills,
        "upstreams": upstreams, "write_queue": gauge_value(m.tier_queue),
        "tier": core[TIER].breakers() if TIER in core else None,
        "top_images": ops.pulls.top(10),
        "pins": ops.pinning.snapshot() if ops.pinning else [],
        "series": ops.samples.series(), "sample_interval": ops.samples.interval,
        "jobs": [j.snapshot() for j in ops.jobs.all() if j.state == "running"],
        "cluster": cluster_status(core)})


async def tier(request: web.Request) -> web.Response:
    writes = core_of(request).get(TIER)
    if writes is None:
        return web.json_response(report(enabled=False, name=lambda u, r: f"{u}/{r}",
                                        jobs=(), failed=(), repositories={}))
    return web.json_response(writes.status())


async def tier_sync(request: web.Request) -> web.Response:
    writes = core_of(request).get(TIER)
    if writes is None:
        raise AdminRequestInvalid("the backing tier is not enabled")
    return web.json_response({"queued": await writes.resync(now=True)})


def cluster_status(core: web.Application) -> dict:
    members = core.get(CLUSTER)
    state = {"enabled": members is not None, "sources": source_counts(core[METRICS])}
    return {**state, **members.status()} if members is not None else state


async def cluster(request: web.Request) -> web.Response:
    return web.json_response(cluster_status(core_of(request)))
