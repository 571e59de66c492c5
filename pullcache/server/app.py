"""The composition root: every object is built here, and every lifetime is owned here.

How a request flows through what this module builds:

1. ``middleware.request_context`` tags the request (``AccessLogger`` writes its line);
   ``middleware.oci_errors`` turns any domain error into the OCI error envelope.
2. ``routes.pull`` asks ``routing.resolve`` for the upstream and repository.
3. ``Proxy`` applies the pull-through policy: the ``BlobStore`` (disk + LRU index) first,
   else the upstream's ``RegistryClient``, through one ``Fill`` per blob digest.
4. ``routes`` writes the answer: sendfile for committed blobs, a tail of the fill otherwise.

Lifetimes (``cleanup_ctx``, in order; torn down in reverse): the HTTP client session (and
the ECR API clients of ``auth = "ecr"`` upstreams), the cache (store, tag records, fills, the
ECR backing tier and its write-behind workers, drained with a deadline), and the
housekeeping task. Each background task ends when its context is torn down.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from ..backing.ecr import EcrApi, EcrCredentials
from ..backing.tier import EcrTier, WriteBehind
from ..cache.disk import Disk
from ..cache.fill import Fills
from ..cache.store import BlobStore, Budget
from ..cache.tags import TagStore
from ..config import Config
from ..metrics import Metrics
from ..proxy import LocalContent, Proxy, Upstream
from ..routing import UpstreamTable
from ..upstream.client import RegistryClient, UpstreamSettings
from . import admin, routes
from .keys import DISK, METRICS, PROXY, ROUTES, SENDFILE, SESSION, STORE, UPSTREAMS
from .sendfile import SendfilePool
from .middleware import mark_started, oci_errors, request_context

log = structlog.get_logger("pullcache.app")
HOUSEKEEPING_INTERVAL = 30.0


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[request_context, oci_errors],
                          handler_args={"max_field_size": 16 * 1024})
    app.on_response_prepare.append(mark_started)
    metrics = Metrics()
    app[METRICS] = metrics
    app[ROUTES] = UpstreamTable(((u.host, u.aliases) for u in config.upstreams),
                                config.default_upstream.host)
    store = BlobStore(config.cache.dir, Budget(config.cache.max_size,
                                               config.cache.high_watermark,
                                               config.cache.low_watermark),
                      on_evict=lambda n, nbytes: (metrics.evictions.inc(n),
                                                  metrics.evicted_bytes.inc(nbytes)))
    app[STORE] = store
    metrics.cache_budget.set(config.cache.max_size)

    async def http_session(app: web.Application) -> AsyncIterator[None]:
        # One session for every upstream; per-request timeouts are set by each client.
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300)
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False))
            app[SESSION] = session
            loop = asyncio.get_running_loop()
            metrics.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
            upstreams = {}
            for u in config.upstreams:
                credentials = None
                if u.auth == "ecr":
                    api = await stack.enter_async_context(_opened(EcrApi(
                        u.ecr_region, registry_id=u.ecr_registry_id, profile=u.profile,
                        endpoint_url=u.aws_endpoint_url)))
                    credentials = EcrCredentials(api.token, min_refresh=u.token_min_refresh)
                client = RegistryClient(UpstreamSettings.from_config(u), session,
                                        observer=metrics, credentials=credentials,
                                        basic_first=credentials is not None)
                upstreams[u.host] = Upstream(client, u.tag_ttl, u.serve_stale,
                                             u.stale_while_revalidate)
            app[UPSTREAMS] = upstreams
            yield

    async def cache(app: web.Application) -> AsyncIterator[None]:
        tags = TagStore(config.cache.dir)
        app[DISK] = disk = Disk(store, tags, max_size=config.cache.max_size,
                                min_free=config.cache.min_free)
        await disk.open(reconcile=config.cache.reconcile_on_start)
        await disk.refresh()
        fills = Fills(store, deadline=config.cache.fill_deadline, on_event=metrics.fill_event,
                      disk=disk, window=config.cache.passthrough_window)
        metrics.fills_in_flight.set_function(lambda: len(fills))
        async with contextlib.AsyncExitStack() as stack:
            tier = writes = None
            ecr = config.backing_ecr
            if ecr.enabled:
                api = await stack.enter_async_context(_opened(EcrApi(
                    ecr.region, registry_id=ecr.registry_id, profile=ecr.profile,
                    endpoint_url=ecr.endpoint_url)))
                client = RegistryClient(
                    UpstreamSettings("ecr-tier", ecr.data_plane,
                                     connect_timeout=ecr.connect_timeout,
                                     header_timeout=ecr.header_timeout,
                                     read_timeout=ecr.read_timeout),
                    app[SESSION], observer=metrics, basic_first=True,
                    credentials=EcrCredentials(api.token, min_refresh=ecr.token_min_refresh))
                tier = EcrTier(api, client, ecr.repository_prefix)
                writes = WriteBehind(tier, LocalContent(store),
                                     concurrency=ecr.write_concurrency,
                                     retries=ecr.write_retries,
                                     drain_timeout=ecr.drain_timeout, metrics=metrics)
                stack.push_async_callback(writes.close)
            app[PROXY] = Proxy(store, fills, tags, app[UPSTREAMS], metrics,
                               tier=tier, writes=writes, disk=disk)
            try:
                yield
            finally:
                await app[PROXY].close()
                await fills.close()
        await tags.close()
        await store.close()
        await disk.close()

    async def sendfile_pool(app: web.Application) -> AsyncIterator[None]:
        app[SENDFILE] = pool = SendfilePool()
        yield
        pool.close()

    async def housekeeping(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_housekeep(store), name="housekeeping")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.extend([http_session, cache, sendfile_pool, housekeeping])
    if not config.server.admin_listen:
        admin.setup_ops(app)
    routes.setup(app)
    return app


@contextlib.asynccontextmanager
async def _opened(api: EcrApi) -> AsyncIterator[EcrApi]:
    await api.open()
    try:
        yield api
    finally:
        await api.close()


async def _housekeep(store: BlobStore) -> None:
    """Periodically: unlink evicted files whose readers are done; keep within budget."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL)
        try:
            await store.release()
            await store.make_room()
        except Exception:  # noqa: BLE001 - the task's supervisor: log and carry on
            log.exception("housekeeping_failed")
