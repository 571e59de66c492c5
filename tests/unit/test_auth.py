"""pullcache.upstream.auth: challenges, token responses, the token cache (realm trust: test_realm)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest

from pullcache.upstream.auth import (
    Challenge, TokenCache, basic_header, parse_challenges, parse_token_response, scope_for)

# --- parse_challenges -------------------------------------------------------------------------


def test_docker_hub_bearer_challenge():
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/alpine:pull"')
    assert parse_challenges(header) == [Challenge("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull"})]


def test_ecr_basic_challenge():
    header = ('Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",'
              'service="ecr.amazonaws.com"')
    [challenge] = parse_challenges(header)
    assert challenge.scheme == "basic"
    assert challenge.realm == "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/"
    assert challenge.params["service"] == "ecr.amazonaws.com"


def test_several_challenges_in_one_header():
    header = ('Bearer realm="https://a.example/token", service="reg", '
              'scope="repository:x/y:pull,push", Basic realm="registry"')
    assert parse_challenges(header) == [
        Challenge("bearer", {"realm": "https://a.example/token", "service": "reg",
                             "scope": "repository:x/y:pull,push"}),
        Challenge("basic", {"realm": "registry"}),
    ]


def test_challenge_without_params_followed_by_another():
    assert parse_challenges('Negotiate, Basic realm="r"') == [
        Challenge("negotiate", {}), Challenge("basic", {"realm": "r"})]


def test_escaped_quotes_and_backslashes():
    [challenge] = parse_challenges(
        r'Bearer realm="https://r.example/t",error="say \"hi\"",path="a\\b"')
    assert challenge.params["error"] == 'say "hi"'
    assert challenge.params["path"] == "a\\b"


def test_unquoted_values():
    [challenge] = parse_challenges("Bearer realm=https://r.example/token,service=reg , scope=s")
    assert challenge.params == {"realm": "https://r.example/token", "service": "reg",
                                "scope": "s"}


def test_scheme_and_param_names_are_case_insensitive():
    [challenge] = parse_challenges('BEARER Realm="https://r.example/t", SERVICE="S"')
    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://r.example/t", "service": "S"}  # values kept


@pytest.mark.parametrize("header", ["", "   ", "123", ","])
def test_nothing_to_parse(header):
    assert parse_challenges(header) == []


def test_challenge_without_realm():
    assert Challenge("bearer").realm is None


# --- parse_token_response -----------------------------------------------------------------------

def test_token_response_docker_hub():
    body = {"token": "t", "access_token": "a", "expires_in": 300,
            "issued_at": "2024-05-01T12:00:00.123456789Z"}
    token, ttl, issued = parse_token_response(body)
    assert (token, ttl) == ("t", 300.0)
    expected = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc).timestamp()
    assert issued == pytest.approx(expected, abs=1e-6)


def test_token_response_access_token_only_defaults_to_60_seconds():
    assert parse_token_response({"access_token": "a"}) == ("a", 60.0, None)


def test_token_response_empty_token_falls_back_to_access_token():
    assert parse_token_response({"token": "", "access_token": "a"})[0] == "a"


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 5}, {"access_token": None},
                                  {"expires_in": 300}])
def test_token_response_without_a_token_is_refused(body):
    with pytest.raises(ValueError):
        parse_token_response(body)


@pytest.mark.parametrize("expires_in, ttl", [
    (None, 60.0), (0, 60.0), (-5, 60.0), ("300", 300.0), (120.5, 120.5), ("soon", 60.0),
    ([], 60.0),
])
def test_token_response_expires_in(expires_in, ttl):
    body = {"token": "t"} if expires_in is None else {"token": "t", "expires_in": expires_in}
    assert parse_token_response(body)[1] == ttl


@pytest.mark.parametrize("issued_at, expected", [
    ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=timezone.utc).timestamp()),
    ("2024-05-01T14:00:00.5+02:00",
     datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=timezone.utc).timestamp()),
    ("yesterday", None),
    (1714564800, None),         # not RFC 3339 text
])
def test_token_response_issued_at(issued_at, expected):
    issued = parse_token_response({"token": "t", "issued_at": issued_at})[2]
    assert issued == (pytest.approx(expected) if expected is not None else None)


# --- small helpers --------------------------------------------------------------------------------

def test_basic_header_and_scope():
    assert basic_header("AWS", "pw") == "Basic QVdTOnB3"
    assert scope_for("library/alpine") == "repository:library/alpine:pull"


# --- TokenCache -----------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    """A token realm: numbered tokens, an optional gate to hold answers, an optional error."""

    def __init__(self, expires_in: float = 100.0, issued_at: float | None = None) -> None:
        self.calls: list[tuple[str | None, str]] = []
        self.expires_in = expires_in
        self.issued_at = issued_at
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None
        self.entered = asyncio.Event()

    async def __call__(self, challenge: Challenge, scope: str):
        self.calls.append((challenge.realm, scope))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return f"token-{len(self.calls)}", self.expires_in, self.issued_at


HUB = Challenge("bearer", {"realm": "https://auth.docker.io/token",
                           "service": "registry.docker.io"})
ALPINE = scope_for("library/alpine")


@pytest.fixture
def clock():
    return Clock()


async def test_token_is_cached_per_realm_service_and_scope(clock):
    fetch = Fetcher()
    tokens = TokenCache(fetch, clock=clock)
    assert await tokens.get(HUB, ALPINE) == "token-1"
    assert await tokens.get(HUB, ALPINE) == "token-1"
    assert tokens.cached(HUB, ALPINE) == "token-1"
    assert await tokens.get(HUB, scope_for("library/busybox")) == "token-2"
    other_service = Challenge("bearer", {**HUB.params, "service": "other"})
    assert await tokens.get(other_service, ALPINE) == "token-3"
    other_realm = Challenge("bearer", {**HUB.params, "realm": "https://x.docker.io/token"})
    assert await tokens.get(other_realm, ALPINE) == "token-4"
    assert await tokens.get(HUB, ALPINE) == "token-1"
    assert len(fetch.calls) == 4


async def test_token_refreshes_after_80_percent_of_its_lifetime(clock):
    fetch = Fetcher(expires_in=100)
    refreshed = []
    tokens = TokenCache(fetch, clock=clock, on_refresh=lambda: refreshed.append(1))
    assert await tokens.get(HUB, ALPINE) == "token-1"
    start = clock.now
    clock.now = start + 79.9
    assert await tokens.get(HUB, ALPINE) == "token-1"
    clock.now = start + 80
    assert tokens.cached(HUB, ALPINE) is None
    assert await tokens.get(HUB, ALPINE) == "token-2"
    assert len(refreshed) == 2


async def test_issued_at_in_the_past_shortens_the_lifetime(clock):
    # issued_at is wall-clock time (token.md); 50 s of a 100 s token are already gone.
    fetch = Fetcher(expires_in=100, issued_at=time.time() - 50)
    tokens = TokenCache(fetch, clock=clock)
    await tokens.get(HUB, ALPINE)
    clock.now += 38          # 80 % of ~50 s is ~40 s
    assert tokens.cached(HUB, ALPINE) == "token-1"
    clock.now += 3
    assert tokens.cached(HUB, ALPINE) is None


async def test_issued_at_in_the_future_does_not_lengthen_the_lifetime(clock):
    fetch = Fetcher(expires_in=100, issued_at=time.time() + 3600)
    tokens = TokenCache(fetch, clock=clock)
    await tokens.get(HUB, ALPINE)
    clock.now += 79
    assert tokens.cached(HUB, ALPINE) == "token-1"
    clock.now += 1
    assert tokens.cached(HUB, ALPINE) is None


async def test_a_refused_token_is_refetched(clock):
    fetch = Fetcher()
    tokens = TokenCache(fetch, clock=clock)
    await tokens.get(HUB, ALPINE)
    assert await tokens.get(HUB, ALPINE, stale="token-1") == "token-2"
    assert await tokens.get(HUB, ALPINE) == "token-2"


async def test_a_token_refreshed_since_the_refusal_is_used_without_a_fetch(clock):
    """Two requests sent with token-1 and both refused: the first refetches, the second
    finds token-2 already there (issue #8: every 401 used to refetch)."""
    fetch = Fetcher()
    tokens = TokenCache(fetch, clock=clock)
    await tokens.get(HUB, ALPINE)
    assert await tokens.get(HUB, ALPINE, stale="token-1") == "token-2"
    assert await tokens.get(HUB, ALPINE, stale="token-1") == "token-2"
    assert len(fetch.calls) == 2


async def test_concurrent_gets_for_one_key_cause_one_fetch(clock):
    fetch = Fetcher()
    fetch.gate = asyncio.Event()
    tokens = TokenCache(fetch, clock=clock)
    waiters = asyncio.gather(*(tokens.get(HUB, ALPINE) for _ in range(20)))
    await fetch.entered.wait()
    fetch.gate.set()
    assert await waiters == ["token-1"] * 20
    assert len(fetch.calls) == 1


async def test_failed_fetch_reaches_every_waiter_and_the_next_call_retries(clock):
    fetch = Fetcher()
    fetch.gate = asyncio.Event()
    fetch.error = ConnectionError("realm down")
    tokens = TokenCache(fetch, clock=clock)
    waiters = asyncio.gather(*(tokens.get(HUB, ALPINE) for _ in range(20)),
                             return_exceptions=True)
    await fetch.entered.wait()
    fetch.gate.set()
    results = await waiters
    assert all(isinstance(r, ConnectionError) for r in results)
    assert len(fetch.calls) == 1
    assert tokens.cached(HUB, ALPINE) is None

    fetch.error = None
    assert await tokens.get(HUB, ALPINE) == "token-2"
    assert len(fetch.calls) == 2
