"""pullcache.upstream.client: one RegistryClient against a small registry served in-process on
127.0.0.1 (aiohttp), for what the real Distribution cannot be made to do on cue: a token realm
that is down or refuses, a redirect loop, credentials that fail, a handler that hangs until
cancelled, a 401 whose body never ends, a Link header without ``>``.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pullcache import errors
from pullcache.config import UpstreamConfig
from pullcache.metrics import Metrics
from pullcache.oci import Digest
from pullcache.proxy.answers import Upstream
from pullcache.proxy.discovery import Discovery
from pullcache.gate.routing import Route
from pullcache.upstream.breaker import Breaker, State
from pullcache.upstream.client import RegistryClient, UpstreamSettings
from tests.support.ports import free_port

DIGEST = Digest.parse("sha256:" + "a" * 64)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Registry:
    """Routes every request to ``handler``; counts requests; ``hold`` parks a handler until
    teardown (so no response is left half-sent when the server closes)."""
    handler: Handler | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.entered.set()
        assert self.handler is not None
        return await self.handler(request)

    async def forever(self, request: web.Request) -> web.StreamResponse:
        await self.hold.wait()
        return web.Response(status=503)


@pytest.fixture
async def registry():
    reg = Registry()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", reg.dispatch)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    reg.url = f"http://127.0.0.1:{server.port}"
    yield reg
    reg.hold.set()
    await server.close()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


def settings(url: str, **overrides) -> UpstreamSettings:
    return UpstreamSettings.from_config(UpstreamConfig(host="test.io", url=url, **overrides))


def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}/token"   # nothing listens there


def bearer(realm: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=401, headers={
            "WWW-Authenticate": f'Bearer realm="{realm}",service="test"'})
    return handler


class FailingCredentials:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def get(self):
        raise self.error

    async def rejected(self, since: float) -> bool:
        return False


# --- the breaker sees every outcome (issue #8, defect 1) -------------------------------------

def probing(client: RegistryClient, clock: Clock) -> None:
    """Open the client's breaker and let the cool-down pass: the next request is the probe."""
    client.breaker = Breaker(1, 30.0, name="test.io", clock=clock)
    client.breaker.trip()
    clock.now += 30


PROBE_FAILURES = [
    ("token realm down", errors.UpstreamUnavailable, State.OPEN),
    ("token realm refusing", errors.Unauthorized, State.CLOSED),   # it answered: it is up
    ("redirect cap", errors.UpstreamError, State.OPEN),
    ("ECR credentials denied", errors.Denied, State.CLOSED),
    ("ECR API unreachable", errors.UpstreamUnavailable, State.OPEN),
    ("unexpected exception", RuntimeError, State.OPEN),
]


@pytest.mark.parametrize("way, error, after", PROBE_FAILURES, ids=[p[0] for p in PROBE_FAILURES])
async def test_a_half_open_probe_failing_in_a_non_network_way_ends_the_probe(
        registry, session, way, error, after):
    clock = Clock()
    credentials = None
    if way == "token realm down":
        registry.handler = bearer(down_url())
    elif way == "token realm refusing":
        realm = registry.url + "/realm"

        async def handler(request):
            if request.path == "/realm":
                return web.json_response({"errors": [{"code": "DENIED"}]}, status=403)
            return await bearer(realm)(request)
        registry.handler = handler
    elif way == "redirect cap":
        async def handler(request):
            raise web.HTTPTemporaryRedirect(request.path)
        registry.handler = handler
    else:
        registry.handler = registry.forever   # never reached: credentials fail first
        credentials = FailingCredentials({
            "ECR credentials denied": errors.Denied("ECR get_authorization_token"),
            "ECR API unreachable": errors.UpstreamUnavailable("ECR API"),
            "unexpected exception": RuntimeError("a bug"),
        }[way])
    client = RegistryClient(settings(registry.url, max_redirects=2,
                                     username="u", password="p"),
                            session, credentials=credentials,
                            basic_first=credentials is not None)
    probing(client, clock)

    with pytest.raises(error):
        await client.head_manifest("r", "v1", ())
    assert client.breaker.state == after, way
    if after == State.OPEN:
        clock.now += 30
    client.breaker.check()      # not stuck failing with "circuit half-open, probing"


async def test_a_cancelled_probe_hands_the_probe_to_the_next_request(registry, session):
    clock = Clock()
    registry.handler = registry.forever
    client = RegistryClient(settings(registry.url), session)
    probing(client, clock)
    probe = asyncio.create_task(client.head_manifest("r", "v1", ()))
    await registry.entered.wait()
    assert client.breaker.state == State.HALF_OPEN
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert client.breaker.state == State.OPEN
    assert client.breaker.check() != 0          # the next request is the probe, at once


async def test_the_breaker_state_is_a_metric(registry, session):
    clock = Clock()
    metrics = Metrics()
    registry.handler = registry.forever
    client = RegistryClient(settings(registry.url), session, observer=metrics)

    def state() -> float | None:
        return metrics.registry.get_sample_value("pullcache_upstream_breaker_state",
                                                 {"upstream": "test.io"})
    assert state() == 0
    probing(client, clock)
    assert state() == 1
    probe = asyncio.create_task(client.head_manifest("r", "v1", ()))
    await registry.entered.wait()
    assert state() == 2                         # half-open: was invisible (is_open False)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert state() == 1


# --- a slow revalidation is one failure, not a trip (defect 5) -----------------------------

async def test_a_revalidation_timeout_counts_one_failure(registry, session):
    registry.handler = registry.forever
    client = RegistryClient(settings(registry.url, revalidate_timeout=0.2,
                                     header_timeout=30.0, breaker_failures=3), session)
    with pytest.raises(errors.UpstreamTimeout):
        await client.head_manifest("r", "v1", (), revalidating=True)
    assert client.breaker.state == State.CLOSED
    client.breaker.check()                      # the next pull still goes upstream
    for _ in range(2):
        with pytest.raises(errors.UpstreamTimeout):
            await client.head_manifest("r", "v1", (), revalidating=True)
    assert client.breaker.state == State.OPEN   # three of them are a pattern


async def test_a_header_timeout_still_trips(registry, session):
    registry.handler = registry.forever
    client = RegistryClient(settings(registry.url, header_timeout=0.2, breaker_failures=3),
                            session)
    with pytest.raises(errors.UpstreamTimeout):
        await client.head_manifest("r", "v1", ())
    assert client.breaker.state == State.OPEN


# --- auth ------------------------------------------------------------------------------------

async def test_token_realm_down(registry, session):
    registry.handler = bearer(down_url())
    client = RegistryClient(settings(registry.url, breaker_failures=2), session)
    with pytest.raises(errors.UpstreamUnavailable, match="token realm unreachable"):
        await client.get_manifest("r", "v1", ())
    assert client.breaker.state == State.CLOSED
    with pytest.raises(errors.UpstreamUnavailable, match="token realm unreachable"):
        await client.get_manifest("r", "v1", ())
    assert client.breaker.state == State.OPEN   # counted as failures like any outage


async def test_the_first_401_is_released_when_answering_it_fails(registry):
    """The 401's body is still arriving when the realm turns out to be down: unless it is
    released, its connection stays taken (one per host here, so the next request waits)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/v2/ok/"):
            return web.Response(headers={"Docker-Content-Digest": str(DIGEST)})
        resp = web.StreamResponse(status=401, headers={
            "WWW-Authenticate": f'Bearer realm="{down_url()}"'})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        await registry.hold.wait()                  # the rest never comes
        return resp
    registry.handler = handler
    connector = aiohttp.TCPConnector(limit_per_host=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = RegistryClient(settings(registry.url, header_timeout=5.0), session)
        with pytest.raises(errors.UpstreamUnavailable) as failed:
            await client.get_manifest("leak", "v1", ())
        # Another client (this one now asks the dead realm first), the same connection pool.
        other = RegistryClient(settings(registry.url, header_timeout=5.0), session)
        head = await other.head_manifest("ok", "v1", ())
        assert head.digest == str(DIGEST)
        del failed


class TokenRegistry:
    """A registry and its realm: tokens t1, t2, … ; only the newest is accepted once
    ``revoke()`` is called. After a revocation the first refused request is answered at
    once, the others only when a request with the new token got through, so they surely
    were refused with a token that another request has since replaced."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.numbers = itertools.count(1)
        self.fetches = 0
        self.valid: str | None = None
        self.refused = 0
        self.renewed = asyncio.Event()
        registry.handler = self.handle

    def revoke(self) -> None:
        self.valid, self.refused, self.fetches = None, 0, 0
        self.renewed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            self.fetches += 1
            self.valid = f"t{next(self.numbers)}"
            return web.json_response({"token": self.valid, "expires_in": 300})
        if request.headers.get("Authorization") == f"Bearer {self.valid}":
            self.renewed.set()
            return web.Response(headers={"Docker-Content-Digest": str(DIGEST)})
        self.refused += 1
        if self.refused > 1 and request.headers.get("Authorization"):
            await self.renewed.wait()
        return await bearer(self.registry.url + "/token")(request)


async def test_a_stale_token_401_refetches_once_for_concurrent_requests(registry, session):
    realm = TokenRegistry(registry)
    client = RegistryClient(settings(registry.url), session)
    await client.head_manifest("r", "v1", ())
    assert realm.fetches == 1
    realm.revoke()
    heads = await asyncio.gather(*(client.head_manifest("r", "v1", ()) for _ in range(5)))
    assert all(h.digest == str(DIGEST) for h in heads)
    assert realm.fetches == 1, "each refused request fetched its own token"


@pytest.mark.parametrize("trusted_realms, sent", [((), None), (("localhost",), "Basic")])
async def test_credentials_go_only_to_a_trusted_realm(registry, session, trusted_realms, sent):
    """The realm is served by the same process under another host name (localhost, not
    127.0.0.1): not the upstream's host, so it gets the credentials only when listed."""
    port = registry.url.rsplit(":", 1)[1]
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            seen.append(request.headers.get("Authorization"))
            return web.json_response({"token": "t"})
        if request.headers.get("Authorization") == "Bearer t":
            return web.Response(headers={"Docker-Content-Digest": str(DIGEST)})
        return await bearer(f"http://localhost:{port}/token")(request)
    registry.handler = handler
    client = RegistryClient(settings(registry.url, username="u", password="p",
                                     trusted_realms=trusted_realms), session)
    await client.head_manifest("r", "v1", ())
    assert len(seen) == 1 and (seen[0] or "").split(" ")[0] == (sent or "")


# --- redirects and links ---------------------------------------------------------------------

async def test_redirects_are_capped(registry, session):
    async def handler(request):
        raise web.HTTPFound(request.path)
    registry.handler = handler
    client = RegistryClient(settings(registry.url, max_redirects=2), session)
    with pytest.raises(errors.UpstreamError, match="more than 2 redirects"):
        await client.head_blob("r", DIGEST)
    assert len(registry.requests) == 3


@pytest.mark.parametrize("link, pages", [
    ('</v2/r/tags/list?last=b&n=2>; rel="next"', 2),
    ('</v2/r/tags/list?last=b&n=2; rel="next"', 1),        # no ">": no next page, no 500
    ('<http://[bad>; rel="next"', 1),
    ("garbage", 1),
])
async def test_tag_pages_follow_link_next(registry, session, link, pages):
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("last") == "b":
            return web.json_response({"tags": ["c"]})
        return web.json_response({"tags": ["a", "b"]}, headers={"Link": link})
    registry.handler = handler
    client = RegistryClient(settings(registry.url), session)
    tags = await Discovery(tags=None)._fetch_tags(Upstream(client, 0, True),
                                                  Route("test.io", "r"))
    assert tags == ["a", "b", "c"][:pages + 1]
    assert len(registry.requests) == pages


# --- settings --------------------------------------------------------------------------------

def test_client_settings_have_one_set_of_defaults():
    """``breaker_cooldown`` was 30 s here and 15 s in the config (issue #8): the client's
    settings now come from the config dataclass only."""
    import dataclasses
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(UpstreamSettings))
    config = UpstreamConfig(host="test.io", url="https://test.io")
    s = UpstreamSettings.from_config(config)
    for f in dataclasses.fields(UpstreamSettings):
        assert getattr(s, f.name) == getattr(config, "host" if f.name == "name" else f.name)


@pytest.mark.parametrize("honours_range", [True, False])
async def test_a_blob_from_an_offset_is_a_range_request(registry, session, honours_range):
    """``open_blob(…, offset)`` asks ``Range: bytes=<offset>-`` and takes only a 206 that
    starts there: a registry that ignores Range (a 200 with the whole blob) is an error,
    never bytes spliced at the wrong place."""
    body = bytes(range(256)) * 4
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Range"))
        if not honours_range:
            return web.Response(body=body)
        return web.Response(status=206, body=body[100:], headers={
            "Content-Range": f"bytes 100-{len(body) - 1}/{len(body)}"})
    registry.handler = handler
    client = RegistryClient(settings(registry.url), session)
    if honours_range:
        stream = await client.open_blob("r", DIGEST, 100)
        got = b"".join([bytes(c) async for c in stream.chunks()])
        await stream.close()
        assert (got, stream.size) == (body[100:], len(body) - 100)
    else:
        with pytest.raises(errors.UpstreamError, match="no range from byte 100"):
            await client.open_blob("r", DIGEST, 100)
    assert seen == ["bytes=100-"]
