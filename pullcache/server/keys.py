"""``web.AppKey``s for the objects the composition root puts on the app."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from ..cache.disk import Disk
    from ..cache.store import BlobStore
    from ..metrics import Metrics
    from ..proxy import Proxy, Upstream
    from ..routing import UpstreamTable
    from .sendfile import SendfilePool

PROXY: web.AppKey["Proxy"] = web.AppKey("proxy")
STORE: web.AppKey["BlobStore"] = web.AppKey("store")
DISK: web.AppKey["Disk"] = web.AppKey("disk")
METRICS: web.AppKey["Metrics"] = web.AppKey("metrics")
ROUTES: web.AppKey["UpstreamTable"] = web.AppKey("routes")
UPSTREAMS: web.AppKey["dict[str, Upstream]"] = web.AppKey("upstreams")
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session")
SENDFILE: web.AppKey["SendfilePool"] = web.AppKey("sendfile")
# On the admin app: the public app, whose objects (store, proxy, metrics…) it reports on.
CORE: web.AppKey[web.Application] = web.AppKey("core")
