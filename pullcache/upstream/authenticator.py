"""One upstream's side of authentication: the scheme it asked for, the credentials for it,
and bearer tokens from its realm (distribution docs/spec/auth/token.md; RFC 6750, 7617).

``RegistryClient`` asks for a header before sending (``header``) and for an answer to a
401 (``answer``); everything else about auth stays in here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable

import aiohttp
import structlog

from .. import errors
from .auth import Challenge, TokenCache, basic_header, parse_challenges, parse_token_response
from .credentials import Credentials
from .realm import RealmTrust
from .failures import read_limited

log = structlog.get_logger("pullcache.upstream")
MAX_TOKEN_BODY = 64 * 1024


class Authenticator:
    def __init__(self, name: str, session: aiohttp.ClientSession, credentials: Credentials,
                 realms: RealmTrust, *, timeout: aiohttp.ClientTimeout, header_timeout: float,
                 user_agent: str, on_token: Callable[[], None] = lambda: None,
                 basic_first: bool = False) -> None:
        self.name = name
        self._session = session
        self._credentials = credentials
        self._realms = realms
        self._timeout = timeout
        self._header_timeout = header_timeout
        self._user_agent = user_agent
        # ECR always wants Basic: send it before being asked, saving a 401 round trip.
        self._challenge: Challenge | None = Challenge("basic") if basic_first else None
        self._tokens = TokenCache(self._fetch_token, on_refresh=on_token)

    async def header(self, scope: str) -> str | None:
        """Credentials to send before being asked, once we know the upstream's scheme."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return await self._basic()
        return "Bearer " + await self._tokens.get(challenge, scope)

    async def answer(self, www_authenticate: str, scope: str, stale: str | None,
                     sent: float) -> str | None:
        """The ``Authorization`` to retry a 401 with, or None if retrying is pointless.

        ``stale``: the header the refused request carried; ``sent``: when (monotonic).
        """
        # A 401 without a challenge (some proxies strip it) repeats the last one we know.
        challenges = parse_challenges(www_authenticate) or \
            ([self._challenge] if self._challenge is not None else [])
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.realm:
                self._challenge = Challenge("bearer", {k: v for k, v in challenge.params.items()
                                                       if k in ("realm", "service")})
                # A token we just sent and got a 401 for is stale (revoked, clock skew),
                # unless another request has replaced it meanwhile.
                refused = stale[len("Bearer "):] if stale and stale.startswith("Bearer ") \
                    else None
                return "Bearer " + await self._tokens.get(self._challenge, scope,
                                                          stale=refused)
            if challenge.scheme == "basic":
                header = await self._basic()
                if header is not None and header == stale:
                    # Refused: worth one more try only with freshly fetched credentials
                    # (an expired ECR token; the new one may even read the same).
                    if not await self._credentials.rejected(sent):
                        return None
                    header = await self._basic()
                if header is None:
                    return None
                self._challenge = Challenge("basic")
                return header
        return None

    async def _basic(self) -> str | None:
        pair = await self._credentials.get()
        return basic_header(*pair) if pair else None

    async def _fetch_token(self, challenge: Challenge, scope: str):
        realm = challenge.realm or ""
        params = {"scope": scope}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        headers = {"User-Agent": self._user_agent}
        basic = await self._basic()
        if basic and self._realms.allows(realm):
            headers["Authorization"] = basic
        elif basic:
            log.warning("realm_untrusted", upstream=self.name, realm=realm)
        try:
            async with asyncio.timeout(self._header_timeout):
                async with self._session.get(realm, params=params, headers=headers,
                                             allow_redirects=False,
                                             timeout=self._timeout) as resp:
                    body = await read_limited(resp, MAX_TOKEN_BODY, truncate=True)
                    status = resp.status
        except TimeoutError as exc:
            raise errors.UpstreamTimeout(f"{self.name}: token realm timed out") from exc
        except aiohttp.ClientError as exc:
            raise errors.UpstreamUnavailable(f"{self.name}: token realm unreachable") from exc
        if status in (401, 403):
            raise errors.Unauthorized(f"{self.name}: token realm refused the credentials")
        if status != 200:
            raise errors.UpstreamError(f"{self.name}: token realm answered {status}")
        try:
            return parse_token_response(json.loads(body))
        except ValueError as exc:
            raise errors.UpstreamError(f"{self.name}: bad token response") from exc
