"""The peer routes of cluster mode: what a node answers when another node asks it, as owner,
for content (``cluster/peer.py`` is the asking side).

- ``GET /_cluster/blobs/<digest>?upstream=U&repo=R`` (Range honoured: a resumed fill);
- ``GET /_cluster/manifests/<digest>?upstream=U&repo=R``.

Why routes of their own rather than ``/v2/…`` with a header: a peer's request must not meet
client policy (access, users, allow rules: the asking node enforced them for its client),
must not be forwarded to the peers again, and must be told apart from a client's by its
path alone, so the proof is checked before anything else and a client can never reach the
unguarded path by forging a header. They are served on ``[cluster] listen`` when set (an
app of these routes alone, on the node's address), else on the public listener.

Proof: the shared ``token`` in ``Pullcache-Peer-Token`` (compared in constant time), or a
client certificate the peer listener's mTLS handshake verified against ``tls_ca``. Without
either: 401. The owner fetches for (U, R) with U's credentials, under its own link rule.
"""

from __future__ import annotations

import hmac
import ssl

from aiohttp import web

from ..cluster import PEER_HEADER
from ..errors import NameUnknown, Unauthorized
from ..oci import Digest, validate_name
from ..gate.routing import Route
from .keys import CORE, EXCHANGE, PROXY, UPSTREAMS, Exchange, core_of
from .middleware import API_VERSION, new_request_id, oci_errors
from .routes import BLOB_TYPE, _send_blob

CLUSTER_TLS: web.AppKey[ssl.SSLContext] = web.AppKey("cluster_tls")
CLUSTER_TOKEN: web.AppKey[str] = web.AppKey("cluster_token")


def setup_peer_routes(app: web.Application) -> None:
    app.router.add_get("/_cluster/{kind:blobs|manifests}/{digest}", answer_peer)


def build_peer_app(core: web.Application, tls: ssl.SSLContext | None) -> web.Application:
    """The ``[cluster] listen`` site's app: the peer routes alone."""
    app = web.Application(middlewares=[oci_errors])
    app[CORE] = core
    if tls is not None:
        app[CLUSTER_TLS] = tls
    setup_peer_routes(app)
    return app


def proven(request: web.Request) -> bool:
    """Whether the request carries a member's proof (see the module docstring)."""
    core = core_of(request)
    token = core.get(CLUSTER_TOKEN)
    given = request.headers.get(PEER_HEADER)
    if token and given and hmac.compare_digest(given.encode(), token.encode()):
        return True
    # The peer listener's handshake verifies a client certificate against tls_ca when one
    # is presented (cluster/tls.py): a request over that context with one has proven itself.
    tls = request.app.get(CLUSTER_TLS)
    transport = request.transport
    return (tls is not None and transport is not None
            and transport.get_extra_info("sslcontext") is tls
            and bool(transport.get_extra_info("peercert")))


async def answer_peer(request: web.Request) -> web.StreamResponse:
    if EXCHANGE not in request:   # the peer app has no front door
        request[EXCHANGE] = Exchange(new_request_id())
    if not proven(request):
        raise Unauthorized(message="peer proof required (cluster token or client certificate)")
    core = core_of(request)
    upstream = request.query.get("upstream", "")
    if upstream not in core[UPSTREAMS]:
        raise NameUnknown(upstream, message="no such upstream here")
    route = Route(upstream, validate_name(request.query.get("repo", "")))
    digest = Digest.parse(request.match_info["digest"])
    exchange = request[EXCHANGE]
    exchange.upstream = upstream
    proxy = core[PROXY]
    if request.match_info["kind"] == "manifests":
        got = await proxy.for_peer(route, "manifest", digest)
        exchange.cache = f"peer_{got.cache}"
        return web.Response(body=got.body, headers={
            **API_VERSION, "Content-Type": got.media_type,
            "Docker-Content-Digest": str(got.digest)})
    answer = await proxy.for_peer(route, "blob", digest)
    exchange.cache = f"peer_{answer.cache}"
    headers = {**API_VERSION, "Docker-Content-Digest": str(digest), "Content-Type": BLOB_TYPE,
               "Accept-Ranges": "bytes", "ETag": f'"{digest}"'}
    try:
        return await _send_blob(request, answer, headers)
    finally:
        await answer.body.aclose()
