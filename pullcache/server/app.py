"""The composition root: every object is built here, and every lifetime is owned here.

How a request flows through what this module builds:

1. ``middleware.front`` tags the request (``AccessLogger`` writes its line), asks
   ``gate.identity.AccessControl`` who is asking (``[access]``; or answers 401/403/429), and turns
   any domain error into the OCI error envelope.
2. ``routes.pull`` asks ``gate.routing.resolve`` for the upstream and repository, and
   ``gate.policy.Policy`` whether this identity may pull it, else 403.
3. ``Proxy`` applies the pull-through policy: the ``BlobStore`` (disk + LRU index) first,
   else the upstream's ``RegistryClient``, through one ``Fill`` per blob digest.
4. ``routes`` writes the answer; a blob's body (a committed file or a fill's tail) goes out
   by non-blocking sendfile from the event loop (``sendfile.Sendfile``).

Lifetimes (``cleanup_ctx``, in order; torn down in reverse): the cache-dir lock, the HTTP
client session (and the ECR API clients of ``auth = "ecr"`` upstreams), the cache (store, tag
records, fills, the backing tier (ECR or S3) and its write-behind workers, drained with a deadline),
the housekeeping and recency-flush tasks (the hot layer's buffered uses are flushed to the
index once more as they end), and the operator's objects (``admin/objects.py``: jobs, pins, status
samples). Each background task ends when its context is torn down.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from ..backing.ecr import EcrApi, EcrCredentials
from ..backing.journal import JOURNAL_DIR, Journal
from ..backing.repositories import RepositorySettings
from ..backing.s3.client import S3Api
from ..backing.s3.tier import S3Tier
from ..backing.tier import EcrTier
from ..backing.writebehind import WriteBehind
from ..cache.disk import Disk
from ..cache.fill import Fills
from ..cache.hot import FLUSH_INTERVAL, HotLayer
from ..cache.store import BlobStore, Budget
from ..cache.tags import TagStore
from ..cluster import Cluster, DnsMembers
from ..cluster.members import peer_address
from ..cluster.tls import client_context
from ..config import Config, UpstreamConfig, split_listen
from ..gate.bearer import AdminToken
from ..gate.identity import AccessControl
from ..gate.policy import Policy
from ..gate.routing import UpstreamTable
from ..metrics import Metrics
from ..ops.samples import Pulls
from ..proxy import Proxy, Upstream
from ..proxy.fleet import FleetContent
from ..tasks import Loops
from ..upstream.client import RegistryClient, UpstreamSettings
from ..upstream.credentials import StaticCredentials
from . import admin, routes
from .keys import (ACCESS, ADMIN_TOKEN, CLUSTER, CREDENTIALS, DISK, DRAINING, LOOPS, METRICS,
                   POLICY, PROXY, PULLS, ROUTES, SENDFILE, SESSION, STORE, TIER, UPSTREAMS)
from .peers import CLUSTER_TOKEN, setup_peer_routes
from .sendfile import Sendfile
from .middleware import front
from .admin.objects import lock_context, operations_context

log = structlog.get_logger("pullcache.app")
HOUSEKEEPING_INTERVAL = 30.0


def build_app(config: Config) -> web.Application:
    access, metrics = AccessControl(config.access), Metrics()
    app = web.Application(middlewares=[front(access, metrics)],
                          handler_args={"max_field_size": 16 * 1024})
    app[DRAINING] = asyncio.Event()
    app[LOOPS] = Loops()
    app[ADMIN_TOKEN] = AdminToken(config.server.admin_token)
    app[ACCESS] = access
    app[POLICY] = Policy.from_config(config.upstreams)
    # Upstreams' static credentials, by host: SIGHUP replaces them (lifecycle.reload).
    app[CREDENTIALS] = {u.host: StaticCredentials(u.username, u.password)
                        for u in config.upstreams if u.auth != "ecr"}
    app[METRICS] = metrics
    app[PULLS] = Pulls()
    app[ROUTES] = UpstreamTable(((u.host, u.aliases) for u in config.upstreams),
                                config.default_upstream.host)
    hot = HotLayer(config.cache.memory)
    metrics.hot_bytes.set_function(lambda: hot.nbytes)
    metrics.hot_items.set_function(lambda: len(hot))
    store = BlobStore(config.cache.dir, Budget(config.cache.max_size,
                                               config.cache.high_watermark,
                                               config.cache.low_watermark),
                      on_evict=lambda n, nbytes: (metrics.evictions.inc(n),
                                                  metrics.evicted_bytes.inc(nbytes)),
                      hot=hot)
    app[STORE] = store
    app[SENDFILE] = Sendfile(config.server.send_timeout)
    metrics.cache_budget.set(config.cache.max_size)
    # Read now, so that a bad lifecycle_policy file stops the start with its key path.
    settings = RepositorySettings.from_config(config.backing_ecr) \
        if config.backing_ecr.enabled else None

    async def http_session(app: web.Application) -> AsyncIterator[None]:
        # One session for every upstream; per-request timeouts are set by each client.
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300)
        async with contextlib.AsyncExitStack() as stack:
            # read_bufsize: a response may buffer 2x this before aiohttp pauses reading; the
            # 64 KiB default pauses a fast blob download every 128 KiB, and far larger buffers
            # are slower (every chunk is fresh memory to fault in).
            session = await stack.enter_async_context(aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False,
                read_bufsize=256 << 10))
            app[SESSION] = session
            loop = asyncio.get_running_loop()
            metrics.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
            upstreams = {}
            for u in config.upstreams:
                credentials = app[CREDENTIALS].get(u.host)
                if u.auth == "ecr":
                    api = await stack.enter_async_context(EcrApi(
                        u.ecr_region, registry_id=u.ecr_registry_id, profile=u.profile,
                        endpoint_url=u.aws_endpoint_url))
                    credentials = EcrCredentials(api.token, min_refresh=u.token_min_refresh)
                client = RegistryClient(UpstreamSettings.from_config(u), session,
                                        observer=metrics, credentials=credentials,
                                        basic_first=u.auth == "ecr")
                upstreams[u.host] = Upstream(client, u.tag_ttl, u.serve_stale,
                                             u.stale_while_revalidate,
                                             referrers_ttl=u.referrers_ttl)
            app[UPSTREAMS] = upstreams
            yield

    async def cluster(app: web.Application) -> AsyncIterator[None]:
        """Cluster mode's members and peer clients; ``peers_dns`` is resolved again every
        ``refresh`` by a supervised loop, which ends with this context."""
        cfg = config.cluster
        if not cfg.enabled:
            yield
            return
        members = Cluster(
            advertised(config), app[SESSION], token=cfg.token,
            ssl_context=(client_context(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
                         if cfg.mtls else None),
            timeout=cfg.peer_timeout, read_timeout=cfg.peer_read_timeout,
            on_bytes=lambda n: metrics.fetched("peers", n), watch=metrics.peer_watched)
        app[CLUSTER] = members
        task = None
        if cfg.peers_dns:
            host, port = split_listen(cfg.peers_dns)
            members.dns = DnsMembers(host, port)
            await members.refresh()
            task = app[LOOPS].every("cluster_peers", cfg.refresh, members.refresh,
                                    wait_first=True)
        else:
            members.update(peer_address(*split_listen(p)) for p in cfg.peers)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def cache(app: web.Application) -> AsyncIterator[None]:
        tags = TagStore(config.cache.dir, hot)
        app[DISK] = disk = Disk(store, tags, max_size=config.cache.max_size,
                                min_free=config.cache.min_free)
        await disk.open(reconcile=config.cache.reconcile_on_start)
        await disk.refresh()
        fills = Fills(store, deadline=config.cache.fill_deadline, on_event=metrics.fill_event,
                      disk=disk, window=config.cache.passthrough_window)
        metrics.fills_in_flight.set_function(lambda: len(fills))
        async with contextlib.AsyncExitStack() as stack:
            tier = writes = None
            ecr, s3 = config.backing_ecr, config.backing_s3
            section = ecr if ecr.enabled else s3 if s3.enabled else None
            journal = Journal(config.cache.dir / JOURNAL_DIR)
            if ecr.enabled:
                api = await stack.enter_async_context(EcrApi(
                    ecr.region, registry_id=ecr.registry_id, profile=ecr.profile,
                    endpoint_url=ecr.endpoint_url))
                credentials = EcrCredentials(api.token, min_refresh=ecr.token_min_refresh)

                def tier_client(host: str, **rate) -> RegistryClient:
                    # Reads and writes each have a client, and so a breaker, of their own.
                    return RegistryClient(
                        UpstreamSettings.from_config(UpstreamConfig(
                            host=host, url=ecr.data_plane, connect_timeout=ecr.connect_timeout,
                            header_timeout=ecr.header_timeout, read_timeout=ecr.read_timeout,
                            breaker_failures=ecr.breaker_failures,
                            breaker_cooldown=ecr.breaker_cooldown)),
                        app[SESSION], observer=metrics, basic_first=True,
                        credentials=credentials, **rate)
                tier = EcrTier(api, tier_client("ecr-tier"), ecr.repository_prefix, settings,
                               writer=tier_client("ecr-tier-writes",
                                                  upload_rate=ecr.upload_rate),
                               metrics=metrics, record=journal)
            elif s3.enabled:
                tier = S3Tier(await stack.enter_async_context(S3Api(s3)), s3, metrics)
            if tier is not None:
                writes = WriteBehind(tier, FleetContent(store, app[UPSTREAMS], tags), journal,
                                     concurrency=section.write_concurrency,
                                     retries=section.write_retries,
                                     drain_timeout=section.drain_timeout, metrics=metrics)
                await writes.open()   # resumes what a crash left queued
                stack.push_async_callback(writes.close)
                # Jobs that failed for good, queued again once their cause cleared.
                resync = app[LOOPS].every("tier-resync", section.resync_interval,
                                          writes.resync, wait_first=True)
                stack.push_async_callback(_cancelled, resync)
                app[TIER] = writes
            app[PROXY] = Proxy(store, fills, tags, app[UPSTREAMS], metrics,
                               tier=tier, writes=writes, disk=disk, cluster=app.get(CLUSTER))
            try:
                yield
            finally:
                await app[PROXY].close()
                await fills.close()
        await tags.close()
        await store.close()
        await disk.close()

    async def bcrypt_threads(app: web.Application) -> None:
        access.close()

    async def housekeeping(app: web.Application) -> AsyncIterator[None]:
        loops = app[LOOPS]
        # Evicted files whose readers are done are unlinked; the cache kept within budget.
        tasks = [loops.every("housekeeping", HOUSEKEEPING_INTERVAL, lambda: _housekeep(store),
                             wait_first=True),
                 # The hot layer's buffered uses reach the index in one transaction (a crash
                 # loses at most this interval of recency, never an entry).
                 loops.every("recency", FLUSH_INTERVAL, store.flush_recency, wait_first=True)]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The last uses reach the index before it closes (the cache context, torn down next).
        await store.flush_recency()

    # The cache-dir lock first (a second daemon stops before touching anything); the
    # operator's jobs and tasks last (they use everything else, and end first).
    app.cleanup_ctx.extend([lock_context(config), http_session, cluster, cache, housekeeping,
                            operations_context(config)])
    if config.cluster.enabled:
        app[CLUSTER_TOKEN] = config.cluster.token or ""
        if not config.cluster.listen:   # else on a listener of their own (cli/serve.py)
            setup_peer_routes(app)
    app.on_cleanup.append(bcrypt_threads)
    if not config.server.admin_listen:
        admin.setup_ops(app)
    routes.setup(app)
    return app


def advertised(config: Config) -> str:
    """This node's name in the ring: ``[cluster] advertise``, else the address it takes
    peer requests on (checked by the config to be no wildcard)."""
    if config.cluster.advertise:
        return peer_address(*split_listen(config.cluster.advertise))
    return peer_address(*split_listen(config.cluster.listen or config.server.listen))


async def _housekeep(store: BlobStore) -> None:
    await store.release()
    await store.make_room()


async def _cancelled(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
