"""Upstream authentication: challenges, credentials and the bearer-token cache.

Docker token auth (distribution docs/spec/auth/token.md): a 401 carries
``WWW-Authenticate: Bearer realm="…",service="…",scope="…"`` (RFC 6750 §3); the client
fetches a token from the realm for that scope and retries. Basic challenges (RFC 7617) are
answered with the configured credentials directly.
"""

from __future__ import annotations

import base64
import math
import re
import time
from datetime import datetime
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import structlog

from ..singleflight import SingleFlight

log = structlog.get_logger("pullcache.auth")
DEFAULT_EXPIRES_IN = 60.0   # token.md: "defaults to 60 seconds" when expires_in is absent
REFRESH_AT = 0.8            # refresh a token once 80 % of its lifetime has passed

_SCHEME = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)")
_PARAM = re.compile(r'\s*([a-zA-Z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str                      # "bearer" or "basic", lower-cased
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value that may hold several challenges (RFC 9110 §11.6.1)."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME.match(header, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            pm = _PARAM.match(header, pos)
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = pm.end()
        challenges.append(Challenge(scheme, params))
    return challenges


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float   # monotonic
    refresh_at: float   # monotonic


TokenFetcher = Callable[[Challenge, str], Awaitable[tuple[str, float, float | None]]]
"""(challenge, scope) → (token, expires_in, issued_at_epoch or None)."""


class TokenCache:
    """Bearer tokens per (realm, service, scope); one fetch at a time per key."""

    def __init__(self, fetch: TokenFetcher, *, clock: Callable[[], float] = time.monotonic,
                 on_refresh: Callable[[], None] | None = None) -> None:
        self._fetch = fetch
        self._clock = clock
        self._tokens: dict[tuple[str, str, str], Token] = {}
        self._flights: SingleFlight[Token] = SingleFlight()
        self._on_refresh = on_refresh or (lambda: None)

    def cached(self, challenge: Challenge, scope: str) -> str | None:
        token = self._tokens.get(_token_key(challenge, scope))
        if token is not None and self._clock() < token.refresh_at:
            return token.value
        return None

    async def get(self, challenge: Challenge, scope: str, *, stale: str | None = None) -> str:
        """A token for ``scope``. ``stale``: the token a request was just refused with
        (revoked, clock skew). It is replaced by a fetch, unless the cache already holds a
        different one: then a concurrent request refreshed it, and fetching again would
        cost one realm round trip per refused request."""
        key = _token_key(challenge, scope)
        token = self._tokens.get(key)
        if token is not None:
            if stale is None and self._clock() < token.refresh_at:
                return token.value
            if stale is not None and token.value != stale and \
                    self._clock() < token.expires_at:
                return token.value
        token, _ = await self._flights.do(key, lambda: self._refresh(key, challenge, scope))
        return token.value

    async def _refresh(self, key, challenge: Challenge, scope: str) -> Token:
        value, expires_in, issued_at = await self._fetch(challenge, scope)
        now = self._clock()
        age = time.time() - issued_at if issued_at is not None else 0.0
        if 0.0 < age < expires_in:
            # token.md: expiry counts from issued_at. An age outside (0, expires_in) can only
            # be clock skew between us and the realm: then count from arrival instead.
            lifetime = expires_in - age
        else:
            lifetime = expires_in
        token = Token(value, now + lifetime, now + lifetime * REFRESH_AT)
        self._tokens[key] = token
        log.info("token_refreshed", realm=challenge.realm, scope=scope,
                 expires_in=round(lifetime, 1))
        self._on_refresh()
        return token


def _token_key(challenge: Challenge, scope: str) -> tuple[str, str, str]:
    return (challenge.realm or "", challenge.params.get("service", ""), scope)


def scope_for(repo: str) -> str:
    return f"repository:{repo}:pull"


def parse_token_response(body: dict) -> tuple[str, float, float | None]:
    """``{"token"|"access_token", "expires_in"?, "issued_at"?}`` → (token, ttl, issued)."""
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token response has no token")
    expires_in = body.get("expires_in")
    try:
        ttl = float(expires_in) if expires_in is not None else DEFAULT_EXPIRES_IN
    except (TypeError, ValueError):
        ttl = DEFAULT_EXPIRES_IN
    if not math.isfinite(ttl) or ttl <= 0:
        ttl = DEFAULT_EXPIRES_IN
    issued = None
    if isinstance(body.get("issued_at"), str):
        issued = _parse_rfc3339(body["issued_at"])
    return token, ttl, issued


def _parse_rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


__all__ = ["Challenge", "TokenCache", "basic_header", "parse_challenges", "scope_for",
           "parse_token_response"]
