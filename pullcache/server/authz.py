"""The policy gate between routing and the proxy (DESIGN §6: access → routing → policy →
proxy): a refused pull is ``403 DENIED`` before the cache or an upstream is asked, so its
answer is the same whether or not the content is cached."""

from __future__ import annotations

from aiohttp import web

from ..errors import Denied
from ..policy import ANONYMOUS, Policy
from ..routing import Target
from .keys import EXCHANGE, METRICS

POLICY: web.AppKey[Policy] = web.AppKey("policy")
KINDS = {"manifests": "manifest", "blobs": "blob", "tags": "tags", "referrers": "referrers"}


def authorize(request: web.Request, target: Target) -> None:
    """Raise Denied unless the request's identity may pull ``target``."""
    exchange = request[EXCHANGE]
    user = exchange.identity.user if exchange.identity is not None else ANONYMOUS
    route = target.route
    decision = request.app[POLICY].decide(user, route.upstream, route.repo)
    if not decision.allowed:
        exchange.outcome = "denied"
        request.app[METRICS].requests.inc(KINDS[target.kind], "denied")
        raise Denied(message=decision.reason)
