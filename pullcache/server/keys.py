"""``web.AppKey``s for the objects the composition root puts on the app."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from ..backing.writebehind import WriteBehind
    from ..cluster import Cluster
    from ..cache.disk import Disk
    from ..cache.store import BlobStore
    from ..metrics import Metrics
    from ..ops.samples import Pulls
    from ..proxy import Proxy, Upstream
    from ..gate.identity import AccessControl
    from ..gate.policy import Policy
    from ..gate.routing import UpstreamTable
    from ..upstream.credentials import StaticCredentials
    from ..gate.identity import Identity
    from ..tasks import Loops
    from ..gate.bearer import AdminToken
    from .sendfile import Sendfile

PROXY: web.AppKey["Proxy"] = web.AppKey("proxy")
STORE: web.AppKey["BlobStore"] = web.AppKey("store")
DISK: web.AppKey["Disk"] = web.AppKey("disk")
METRICS: web.AppKey["Metrics"] = web.AppKey("metrics")
ROUTES: web.AppKey["UpstreamTable"] = web.AppKey("routes")
#: who is asking (``gate.identity``); SIGHUP replaces it
ACCESS: web.AppKey["AccessControl"] = web.AppKey("access")
#: who may pull what through which upstream (``gate.policy``); SIGHUP replaces its rules
POLICY: web.AppKey["Policy"] = web.AppKey("policy")
UPSTREAMS: web.AppKey["dict[str, Upstream]"] = web.AppKey("upstreams")
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session")
SENDFILE: web.AppKey["Sendfile"] = web.AppKey("sendfile")
#: the ECR tier's write-behind, when ``[backing.ecr]`` is enabled (its ``status()`` is JSON)
TIER: web.AppKey["WriteBehind"] = web.AppKey("tier")
# Set on SIGTERM: /readyz answers 503 while the requests in flight finish.
DRAINING: web.AppKey[asyncio.Event] = web.AppKey("draining")
CREDENTIALS: web.AppKey["dict[str, StaticCredentials]"] = web.AppKey("credentials")
#: every background loop, supervised (``pullcache.tasks``); /readyz reports a failing one
LOOPS: web.AppKey["Loops"] = web.AppKey("loops")
#: ``server.admin_token``, which the admin API asks of every call when set; SIGHUP replaces it
ADMIN_TOKEN: web.AppKey["AdminToken"] = web.AppKey("admin_token")
# On the admin app: the public app, whose objects (store, proxy, metrics…) it reports on.
CORE: web.AppKey[web.Application] = web.AppKey("core")


def core_of(request: web.Request) -> web.Application:
    """The app whose objects this request reports on: the public app for the admin app's
    requests, the app itself on a single listener (``admin_listen = ""``)."""
    return request.app.get(CORE, request.app)
#: cluster mode's members and peer clients, when ``[cluster]`` is on
CLUSTER: web.AppKey["Cluster"] = web.AppKey("cluster")
# Answered manifest GETs by image, for the status page's top list (routes count them).
PULLS: web.AppKey["Pulls"] = web.AppKey("pulls")


class Exchange:
    """One request, as its access line reports it: filled in while it is answered."""

    __slots__ = ("request_id", "identity", "upstream", "cache", "outcome")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.identity: "Identity | None" = None
        self.upstream: str | None = None
        self.cache: str | None = None        # hit, miss, stale, pass…
        self.outcome = "ok"                  # or denied, cut, client_gone…


EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("exchange")
