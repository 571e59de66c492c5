"""The operator's objects on the app (docs/operations.md): the cache-dir lock, jobs, warming,
pins, the catalog, verify and the status samples; built and torn down by ``cleanup_ctx``.

``lock_context`` runs first: a daemon refuses to start on a cache dir another daemon, or an
offline ``pullcache cache …`` command, holds. ``operations_context`` runs after the cache is
open; its tasks (pin refresh, status sampling, jobs) end when it is torn down.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import AsyncIterator

import structlog
from aiohttp import web

from ...cache.lock import CacheLock
from ...cache.passthrough import is_disk_error
from ...cache.pins import PinSet
from ...config import Config
from ...ops.catalog import Catalog
from ...ops.jobs import Jobs
from ...ops.pinning import Pinning
from ...ops.refs import Platform, parse_image
from ...ops.samples import Pulls, Samples
from ...ops.warm import Warmer
from ..keys import DISK, LOOPS, METRICS, PROXY, PULLS, ROUTES, STORE

log = structlog.get_logger("pullcache.ops")
SAMPLE_INTERVAL = 10.0


@dataclass
class Operations:
    config: Config
    jobs: Jobs
    warmer: Warmer
    pins: PinSet
    pinning: Pinning | None
    catalog: Catalog
    samples: Samples
    pulls: Pulls


OPS: web.AppKey[Operations] = web.AppKey("operations")


def lock_context(config: Config):
    async def cache_lock(app: web.Application) -> AsyncIterator[None]:
        lock = await asyncio.to_thread(CacheLock(config.cache.dir, "pullcache serve").acquire)
        try:
            yield
        finally:
            lock.release()
    return cache_lock


def operations_context(config: Config):
    async def operations(app: web.Application) -> AsyncIterator[None]:
        store, metrics = app[STORE], app[METRICS]
        pins = await asyncio.to_thread(PinSet(config.cache.dir).load)
        # Content of pins still configured stays held across the restart until re-warmed;
        # pins no longer configured are let go (and offline gc must see that too).
        pins.retain(set(config.cache.pin))
        try:
            await asyncio.to_thread(pins.save)
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            # A read-only (or full) cache filesystem: pass-through mode, nothing to pin.
            log.warning("pins_not_saved", error=str(exc))
        store.index.keeps = pins.keeps
        metrics.pinned_bytes.set(pins.pinned_bytes())
        warmer = Warmer(app[PROXY], app[ROUTES], store)
        catalog = Catalog(store, pins)
        await catalog.open(app[DISK].home if DISK in app else None)
        samples = Samples(metrics, interval=SAMPLE_INTERVAL)
        ops = Operations(config, Jobs(), warmer, pins, _pinning(config, app, pins, warmer),
                         catalog, samples, app[PULLS])
        app[OPS] = ops
        tasks = [app[LOOPS].every("status samples", samples.interval, samples.take)]
        if ops.pinning is not None:
            tasks.append(app[LOOPS].every("pin refresh", ops.pinning.interval,
                                          ops.pinning.refresh_all))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await ops.jobs.close()
            await catalog.close()
    return operations


def _pinning(config: Config, app: web.Application, pins: PinSet,
             warmer: Warmer) -> Pinning | None:
    if not config.cache.pin:
        return None
    ttls = {u.host: u.tag_ttl for u in config.upstreams}
    intervals = []
    for ref in config.cache.pin:
        try:
            intervals.append(ttls[parse_image(app[ROUTES], ref).route.upstream])
        except Exception as exc:  # noqa: BLE001 - reported; the pin's warm will say why
            log.error("pin_rejected", ref=ref, error=str(exc))
    wanted = config.cache.pin_platforms
    platforms = [Platform.parse(p) for p in wanted if p != "all"] or None
    return Pinning(pins, warmer, config.cache.pin, platforms=platforms,
                   all_platforms="all" in wanted, interval=min(intervals, default=300.0),
                   max_size=config.cache.max_size,
                   on_bytes=app[METRICS].pinned_bytes.set)


