"""One upstream registry: requests with auth, redirects, timeouts, and typed errors.

``RegistryClient`` turns every aiohttp exception and upstream status into a domain error
from ``errors.py``; nothing above it sees aiohttp's client types.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Mapping
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp
import structlog

from .. import errors
from ..oci import DEFAULT_ACCEPT, MAX_MANIFEST_SIZE, Digest
from .auth import (Challenge, TokenCache, basic_header, parse_challenges,
                   parse_token_response, realm_trusted, scope_for)
from .breaker import Breaker
from .credentials import Credentials, StaticCredentials, UpstreamObserver
from .status import error_for

log = structlog.get_logger("pullcache.upstream")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_ERROR_BODY = 64 * 1024
USER_AGENT = "pullcache/0.1"


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """What a client needs of its ``[[upstream]]`` config section."""
    name: str
    url: str
    username: str | None = None
    password: str | None = None
    connect_timeout: float = 5.0
    header_timeout: float = 15.0
    revalidate_timeout: float = 3.0
    read_timeout: float = 30.0
    max_redirects: int = 5
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0

    @classmethod
    def from_config(cls, cfg) -> "UpstreamSettings":
        return cls(cfg.host, cfg.url, cfg.username, cfg.password, cfg.connect_timeout,
                   cfg.header_timeout, cfg.revalidate_timeout, cfg.read_timeout,
                   cfg.max_redirects, cfg.breaker_failures, cfg.breaker_cooldown)


@dataclass(frozen=True, slots=True)
class ManifestHead:
    digest: str | None
    media_type: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class Manifest:
    body: bytes
    content_type: str | None
    digest: str | None


@dataclass(frozen=True, slots=True)
class Passthrough:
    status: int
    body: bytes
    headers: dict[str, str]


class BlobStream:
    """An open upstream blob body; a ``Source`` for a fill."""

    def __init__(self, response: aiohttp.ClientResponse, on_bytes: Callable[[int], None]):
        self._response = response
        self._on_bytes = on_bytes
        self.size = response.content_length
        self.origin = urlsplit(str(response.url)).netloc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(1 << 20):
                self._on_bytes(len(chunk))
                yield chunk
        except asyncio.TimeoutError as exc:  # aiohttp's sock_read timeout
            raise errors.UpstreamTimeout("blob body stalled") from exc
        except aiohttp.ClientError as exc:
            raise errors.UpstreamError(f"blob body failed: {exc}") from exc

    async def close(self) -> None:
        self._response.release()


class RegistryClient:
    """Speaks the distribution API of one registry, over the app's shared session.

    Pull for upstreams; push too, for the ECR backing tier's write-behind.
    """

    def __init__(self, settings: UpstreamSettings, session: aiohttp.ClientSession, *,
                 observer: "UpstreamObserver | None" = None,
                 credentials: Credentials | None = None, basic_first: bool = False) -> None:
        self.settings = settings
        self.name = settings.name
        self._base = settings.url.rstrip("/")
        self._session = session
        self._origin = _origin(self._base)
        self._observer = observer or UpstreamObserver()
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                              sock_read=settings.read_timeout)
        self._credentials = credentials or StaticCredentials(settings.username,
                                                             settings.password)
        # ECR always wants Basic: send it before being asked, saving a 401 round trip.
        self._challenge: Challenge | None = Challenge("basic") if basic_first else None
        self._tokens = TokenCache(self._fetch_token,
                                  on_refresh=lambda: self._observer.token_refreshed(self.name))
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown,
                               name=settings.name)

    # -- the pull API -------------------------------------------------------------------------

    async def head_manifest(self, repo: str, reference: str, accept: tuple[str, ...], *,
                            revalidating: bool = False) -> ManifestHead:
        """HEAD a manifest; ``revalidating`` (a cached copy exists) waits only briefly."""
        resp = await self._send("HEAD", repo, f"manifests/{reference}",
                                {"Accept": _accept(accept)}, not_found=errors.ManifestUnknown,
                                timeout=self.settings.revalidate_timeout if revalidating
                                else None)
        resp.release()
        return ManifestHead(resp.headers.get("Docker-Content-Digest"),
                            resp.headers.get("Content-Type"), resp.content_length)

    async def get_manifest(self, repo: str, reference: str,
                           accept: tuple[str, ...]) -> Manifest:
        resp = await self._send("GET", repo, f"manifests/{reference}",
                                {"Accept": _accept(accept)}, not_found=errors.ManifestUnknown)
        try:
            if (resp.content_length or 0) > MAX_MANIFEST_SIZE:
                raise errors.UpstreamError(f"manifest larger than {MAX_MANIFEST_SIZE} bytes")
            body = await self._read_limited(resp, MAX_MANIFEST_SIZE)
        finally:
            resp.release()
        return Manifest(body, resp.headers.get("Content-Type"),
                        resp.headers.get("Docker-Content-Digest"))

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        resp = await self._send("HEAD", repo, f"blobs/{digest}", {},
                                not_found=errors.BlobUnknown)
        resp.release()
        return resp.content_length

    async def open_blob(self, repo: str, digest: Digest) -> BlobStream:
        resp = await self._send("GET", repo, f"blobs/{digest}", {"Accept-Encoding": "identity"},
                                not_found=errors.BlobUnknown)
        return BlobStream(resp, lambda n: self._observer.fetched(self.name, n))

    async def passthrough(self, repo: str, tail: str, query: Mapping[str, str]) -> Passthrough:
        """GET a read-only JSON endpoint (tags/list, referrers) and hand back its answer."""
        resp = await self._send("GET", repo, tail, {"Accept": "application/json"},
                                query=query, not_found=errors.NameUnknown)
        try:
            body = await self._read_limited(resp, MAX_MANIFEST_SIZE)
        finally:
            resp.release()
        keep = {k: v for k, v in resp.headers.items()
                if k.lower() in ("content-type", "link", "oci-filters-applied")}
        return Passthrough(resp.status, body, keep)

    # -- the push API (the ECR tier's write-behind) ---------------------------------------------

    async def exists(self, repo: str, kind: str, digest: Digest) -> bool:
        """HEAD a blob or a manifest by digest: present or not (404)."""
        not_found = errors.BlobUnknown if kind == "blobs" else errors.ManifestUnknown
        try:
            resp = await self._send("HEAD", repo, f"{kind}/{digest}", {}, not_found=not_found)
        except (errors.BlobUnknown, errors.ManifestUnknown, errors.NameUnknown):
            return False
        resp.release()
        return True

    async def push_blob(self, repo: str, digest: Digest,
                        chunks: AsyncIterator[bytes]) -> None:
        """OCI chunked upload (distribution-spec "Pushing a blob in chunks"): POST, PATCH
        each chunk with its Content-Range, then PUT ``?digest=``."""
        resp = await self._send("POST", repo, "blobs/uploads/", {"Content-Length": "0"},
                                not_found=errors.NameUnknown, push=True)
        resp.release()
        location, offset = _location(resp), 0
        async for chunk in chunks:
            resp = await self._send(
                "PATCH", repo, "", {"Content-Type": "application/octet-stream",
                                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
                url=location, data=chunk, not_found=errors.BlobUnknown, push=True)
            resp.release()
            location, offset = _location(resp), offset + len(chunk)
        resp = await self._send("PUT", repo, "", {"Content-Length": "0"},
                                url=_with_query(location, "digest", str(digest)),
                                not_found=errors.BlobUnknown, push=True)
        resp.release()

    async def push_manifest(self, repo: str, reference: str, body: bytes,
                            media_type: str) -> None:
        resp = await self._send("PUT", repo, f"manifests/{reference}",
                                {"Content-Type": media_type}, data=body,
                                not_found=errors.NameUnknown, push=True)
        resp.release()

    # -- one request: breaker, auth, redirects, status → error --------------------------------

    async def _send(self, method: str, repo: str, tail: str, headers: dict[str, str], *,
                    not_found: type[errors.PullcacheError],
                    query: Mapping[str, str] | None = None,
                    timeout: float | None = None, url: str | None = None,
                    data: bytes | None = None, push: bool = False) -> aiohttp.ClientResponse:
        self.breaker.check()
        timeout = timeout or self.settings.header_timeout
        url = urljoin(self._base + "/", url) if url else f"{self._base}/v2/{repo}/{tail}"
        scope = scope_for(repo) + (",push" if push else "")
        headers = {"User-Agent": USER_AGENT, **headers}
        began = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                resp = await self._authorized(method, url, headers, scope, query, data)
        except TimeoutError as exc:
            self.breaker.trip()
            self._observer.requested(self.name, method, "timeout", time.monotonic() - began)
            raise errors.UpstreamTimeout(f"{self.name}: no answer within {timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            self.breaker.failure()
            self._observer.requested(self.name, method, "error", time.monotonic() - began)
            raise errors.UpstreamUnavailable(f"{self.name}: {exc.__class__.__name__}") from exc
        self._observer.requested(self.name, method, str(resp.status), time.monotonic() - began)
        remaining = self._observer.rate_limit(self.name, resp.headers)
        if remaining is not None:
            log.info("ratelimit_changed", upstream=self.name, remaining=remaining,
                     limit=resp.headers.get("ratelimit-limit"))
        if resp.status >= 500 or resp.status == 429:
            self.breaker.failure()
        else:
            self.breaker.success()
        if resp.status < 400:
            return resp
        body = b""
        if method != "HEAD":
            try:
                body = await self._read_limited(resp, MAX_ERROR_BODY, truncate=True)
            except (errors.UpstreamError, errors.UpstreamTimeout):
                body = b""
        resp.release()
        raise error_for(resp.status, resp.headers, body, not_found, self.name)

    async def _authorized(self, method: str, url: str, headers: dict[str, str], scope: str,
                          query, data: bytes | None = None) -> aiohttp.ClientResponse:
        auth = await self._auth_header(scope)
        sent = time.monotonic()
        resp = await self._follow(method, url, headers, auth, query, data)
        if resp.status != 401 or _origin(str(resp.url)) != self._origin:
            return resp
        # A 401 without a challenge (some proxies strip it) repeats the last one we know.
        challenges = parse_challenges(resp.headers.get("WWW-Authenticate", "")) or \
            ([self._challenge] if self._challenge is not None else [])
        answer = await self._answer(challenges, scope, stale=auth, sent=sent)
        if answer is None:
            return resp
        resp.release()
        return await self._follow(method, url, headers, answer, query, data)

    async def _follow(self, method: str, url: str, headers: dict[str, str], auth: str | None,
                      query, data: bytes | None = None) -> aiohttp.ClientResponse:
        """Send, following redirects ourselves with a fresh header set each hop.

        distribution-spec: clients "MUST NOT forward Authorization headers across host
        boundaries"; Docker Hub (CDN) and ECR (S3) redirect blobs to presigned URLs.
        """
        for _ in range(self.settings.max_redirects + 1):
            hop_headers = dict(headers)
            if auth and _origin(url) == self._origin:
                hop_headers["Authorization"] = auth
            resp = await self._session.request(method, url, headers=hop_headers, params=query,
                                               data=data, allow_redirects=False,
                                               timeout=self._timeout)
            location = resp.headers.get("Location")
            if resp.status not in REDIRECTS or not location:
                return resp
            resp.release()
            url, query = urljoin(str(resp.url), location), None
            if resp.status == 303:
                method = "GET"
        raise errors.UpstreamError(f"{self.name}: more than "
                                   f"{self.settings.max_redirects} redirects")

    async def _auth_header(self, scope: str) -> str | None:
        """Credentials to send before being asked, once we know the upstream's scheme."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return await self._basic()
        return "Bearer " + await self._tokens.get(challenge, scope)

    async def _answer(self, challenges: list[Challenge], scope: str,
                      stale: str | None, sent: float) -> str | None:
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.realm:
                self._challenge = Challenge("bearer", {k: v for k, v in challenge.params.items()
                                                       if k in ("realm", "service")})
                # A token we just sent and got a 401 for is stale (revoked, clock skew).
                token = await self._tokens.get(self._challenge, scope, force=stale is not None)
                return "Bearer " + token
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
        headers = {"User-Agent": USER_AGENT}
        s = self.settings
        basic = await self._basic()
        if basic and realm_trusted(self._base, realm):
            headers["Authorization"] = basic
        elif basic:
            log.warning("realm_untrusted", upstream=self.name, realm=realm)
        try:
            async with asyncio.timeout(s.header_timeout):
                async with self._session.get(realm, params=params, headers=headers,
                                             allow_redirects=False,
                                             timeout=self._timeout) as resp:
                    body = await self._read_limited(resp, MAX_ERROR_BODY, truncate=True)
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

    @staticmethod
    async def _read_limited(resp: aiohttp.ClientResponse, limit: int,
                            truncate: bool = False) -> bytes:
        """A small body (manifest, error, token) in memory. A body cut or stalled midway
        is the upstream's failure (502/504), never ours."""
        chunks, total = [], 0
        try:
            async for chunk in resp.content.iter_chunked(64 * 1024):
                total += len(chunk)
                if total > limit:
                    if truncate:
                        break
                    raise errors.UpstreamError(f"response larger than {limit} bytes")
                chunks.append(chunk)
        except asyncio.TimeoutError as exc:  # aiohttp's sock_read timeout
            raise errors.UpstreamTimeout("response body stalled") from exc
        except aiohttp.ClientError as exc:
            raise errors.UpstreamError(f"response body failed: {exc}") from exc
        return b"".join(chunks)


def _location(resp: aiohttp.ClientResponse) -> str:
    location = resp.headers.get("Location")
    if not location:
        raise errors.UpstreamError("upload answered without a Location")
    return urljoin(str(resp.url), location)


def _with_query(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode({key: value})}"


def _accept(accept: tuple[str, ...]) -> str:
    # Forward what the client takes, so the upstream picks the representation it would have
    # given the client itself (PROTOCOL §2.4); a client that named nothing gets the modern set.
    return ", ".join(accept or DEFAULT_ACCEPT)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port
