"""One upstream registry: requests with auth, redirects, timeouts, and typed errors.

``RegistryClient`` turns every aiohttp exception and upstream status into a domain error
from ``errors.py``; nothing above it sees aiohttp's client types.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Mapping
from urllib.parse import urljoin

import aiohttp
import structlog

from .. import errors
from ..oci import DEFAULT_ACCEPT, MAX_MANIFEST_SIZE, OCI_INDEX, Digest
from .auth import scope_for
from .authenticator import Authenticator
from .receiver import BlobStream
from .breaker import Breaker
from .quota import Quota
from .credentials import Credentials, StaticCredentials, UpstreamObserver
from .realm import RealmTrust
from .failures import error_for, read_limited
from .headers import (accept_header, location_of, next_link, origin_of, range_start,
                      with_query)

log = structlog.get_logger("pullcache.upstream")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_ERROR_BODY = 64 * 1024
USER_AGENT = "pullcache/0.1"


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamSettings:
    """What a client needs of its ``[[upstream]]`` config section.

    No defaults here: they live once, in ``config.upstream.UpstreamConfig``.
    """
    name: str
    url: str
    username: str | None
    password: str | None
    connect_timeout: float
    header_timeout: float
    revalidate_timeout: float
    read_timeout: float
    max_redirects: int
    breaker_failures: int
    breaker_cooldown: float
    trusted_realms: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg) -> "UpstreamSettings":
        """From an ``UpstreamConfig`` (duck-typed: the adapter does not import config)."""
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__ if f != "name"},
                   name=cfg.host)


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
class Relayed:
    status: int
    body: bytes
    headers: dict[str, str]
    next: str | None = None   # the RFC 8288 ``rel="next"`` link, absolute


class RegistryClient:
    """Speaks the distribution API of one registry, over the app's shared session.

    Pull for upstreams; push too, for the ECR backing tier's write-behind.
    """

    def __init__(self, settings: UpstreamSettings, session: aiohttp.ClientSession, *,
                 observer: "UpstreamObserver | None" = None,
                 credentials: Credentials | None = None, basic_first: bool = False,
                 upload_rate: float | None = None) -> None:
        self.settings = settings
        # A request with a body (an upload) may take header_timeout plus its body at this
        # rate (bytes/s): an 8 MiB PATCH is not held to a manifest GET's timeout.
        self._upload_rate = upload_rate
        self.name = settings.name
        self._base = settings.url.rstrip("/")
        self._session = session
        self._origin = origin_of(self._base)
        self._observer = observer or UpstreamObserver()
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                              sock_read=settings.read_timeout)
        self._auth = Authenticator(
            self.name, session,
            credentials or StaticCredentials(settings.username, settings.password),
            RealmTrust(settings.url, settings.trusted_realms), timeout=self._timeout,
            header_timeout=settings.header_timeout, user_agent=USER_AGENT,
            on_token=lambda: self._observer.token_refreshed(self.name),
            basic_first=basic_first)
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown,
                               name=settings.name)
        self._observer.breaker_watched(self.name, lambda: self.breaker.state)
        self.quota = Quota()

    # -- the pull API -------------------------------------------------------------------------

    async def head_manifest(self, repo: str, reference: str, accept: tuple[str, ...], *,
                            revalidating: bool = False) -> ManifestHead:
        """HEAD a manifest; ``revalidating`` (a cached copy exists) waits only briefly."""
        resp = await self._send("HEAD", repo, f"manifests/{reference}",
                                {"Accept": accept_header(accept)}, not_found=errors.ManifestUnknown,
                                revalidating=revalidating)
        resp.release()
        return ManifestHead(resp.headers.get("Docker-Content-Digest"),
                            resp.headers.get("Content-Type"), resp.content_length)

    async def get_manifest(self, repo: str, reference: str,
                           accept: tuple[str, ...]) -> Manifest:
        resp = await self._send("GET", repo, f"manifests/{reference}",
                                {"Accept": accept_header(accept)}, not_found=errors.ManifestUnknown)
        try:
            if (resp.content_length or 0) > MAX_MANIFEST_SIZE:
                raise errors.UpstreamError(f"manifest larger than {MAX_MANIFEST_SIZE} bytes")
            body = await read_limited(resp, MAX_MANIFEST_SIZE)
        finally:
            resp.release()
        return Manifest(body, resp.headers.get("Content-Type"),
                        resp.headers.get("Docker-Content-Digest"))

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        resp = await self._send("HEAD", repo, f"blobs/{digest}", {},
                                not_found=errors.BlobUnknown)
        resp.release()
        return resp.content_length

    async def open_blob(self, repo: str, digest: Digest, offset: int = 0) -> BlobStream:
        """The blob's body; from ``offset`` on with a ``Range`` request (RFC 9110 §14.2),
        ``errors.UpstreamError`` if the registry does not answer with that range."""
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = await self._send("GET", repo, f"blobs/{digest}", headers,
                                not_found=errors.BlobUnknown)
        if offset and (resp.status != 206 or range_start(resp) != offset):
            resp.release()
            raise errors.UpstreamError(f"{self.name}: no range from byte {offset} "
                                       f"(answered {resp.status})")
        return BlobStream(resp, lambda n: self._observer.fetched(self.name, n),
                          self.settings.read_timeout)

    async def passthrough(self, repo: str, tail: str, query: Mapping[str, str], *,
                          accept: str = "application/json") -> Relayed:
        """GET a read-only JSON endpoint (tags/list, referrers) and hand back its answer."""
        resp = await self._send("GET", repo, tail, {"Accept": accept},
                                query=query, not_found=errors.NameUnknown)
        try:
            body = await read_limited(resp, MAX_MANIFEST_SIZE)
        finally:
            resp.release()
        keep = {k: v for k, v in resp.headers.items()
                if k.lower() in ("content-type", "link", "oci-filters-applied")}
        return Relayed(resp.status, body, keep, next_link(resp))

    async def referrers(self, repo: str, subject: Digest,
                        query: Mapping[str, str] | None = None) -> Relayed:
        """One page of the referrers API (distribution-spec end-12a).

        Raises ``errors.Unsupported`` when the upstream lacks the API: a 404 (the spec's own
        signal, "Unavailable Referrers API"), a 405, or an ``UNSUPPORTED`` error.
        """
        try:
            return await self.passthrough(repo, f"referrers/{subject}", query or {},
                                          accept=f"{OCI_INDEX}, application/json")
        except (errors.NameUnknown, errors.ManifestUnknown) as exc:
            raise errors.Unsupported(exc.detail) from exc

    # -- the push API (the ECR tier's write-behind) ---------------------------------------------

    async def exists(self, repo: str, kind: str, digest: Digest | str) -> bool:
        """HEAD a blob or a manifest by digest (a manifest also by tag): present or not."""
        not_found = errors.BlobUnknown if kind == "blobs" else errors.ManifestUnknown
        # Distribution answers 404 for an OCI manifest's tag a client did not Accept.
        headers = {"Accept": accept_header(DEFAULT_ACCEPT)} if kind == "manifests" else {}
        try:
            resp = await self._send("HEAD", repo, f"{kind}/{digest}", headers,
                                    not_found=not_found)
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
        location, offset = location_of(resp), 0
        async for chunk in chunks:
            resp = await self._send(
                "PATCH", repo, "", {"Content-Type": "application/octet-stream",
                                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
                url=location, data=chunk, not_found=errors.BlobUnknown, push=True)
            resp.release()
            location, offset = location_of(resp), offset + len(chunk)
        resp = await self._send("PUT", repo, "", {"Content-Length": "0"},
                                url=with_query(location, "digest", str(digest)),
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
                    query: Mapping[str, str] | None = None, url: str | None = None,
                    data: bytes | None = None, push: bool = False,
                    revalidating: bool = False) -> aiohttp.ClientResponse:
        """One request through the breaker.

        ``revalidating``: a cached copy can be served instead, so wait only
        ``revalidate_timeout``; running out of it is one failure, not a trip (a slow
        answer is not a dead upstream, and one must not fail every uncached pull).
        """
        if tail.startswith("manifests/") and not push \
                and (wait := self.quota.wait()) is not None:
            # Manifests only: blobs are not counted. HEADs too, although free: the GET a
            # HEAD leads to would be refused, and a cached tag is served stale without it.
            raise errors.QuotaSpent(f"{self.name}: pull quota spent, retry in {wait}s",
                                    headers={"Retry-After": str(wait)})
        ticket = self.breaker.check()
        # Every outcome reaches the breaker (finally), or a probe that ended any other way
        # would leave it half-open, failing every request, for good.
        verdict: Callable[[], None] = lambda: self.breaker.release(ticket)
        timeout = self.settings.revalidate_timeout if revalidating \
            else self.settings.header_timeout
        if data and self._upload_rate:
            timeout += len(data) / self._upload_rate
        url = urljoin(self._base + "/", url) if url else f"{self._base}/v2/{repo}/{tail}"
        scope = scope_for(repo) + (",push" if push else "")
        headers = {"User-Agent": USER_AGENT, **headers}
        began = time.monotonic()
        try:
            try:
                async with asyncio.timeout(timeout):
                    resp = await self._authorized(method, url, headers, scope, query, data)
            except TimeoutError as exc:
                connect = isinstance(exc, aiohttp.ConnectionTimeoutError)
                verdict = self.breaker.failure if revalidating and not connect \
                    else self.breaker.trip
                self._observer.requested(self.name, method, "timeout", time.monotonic() - began)
                raise errors.UpstreamTimeout(
                    f"{self.name}: no answer within {timeout:g}s") from exc
            except aiohttp.ClientError as exc:
                verdict = self.breaker.failure
                self._observer.requested(self.name, method, "error", time.monotonic() - began)
                raise errors.UpstreamUnavailable(
                    f"{self.name}: {exc.__class__.__name__}") from exc
            except errors.UPSTREAM_FAILURES:
                # The token realm down, the redirect cap, the ECR API failing: no usable
                # answer, as good as none.
                verdict = self.breaker.failure
                raise
            except errors.PullcacheError:
                # Refused (the realm, the ECR API): an answer, not an outage; failing fast
                # would not spare anyone a wait.
                verdict = self.breaker.success
                raise
            bad = resp.status >= 500 or resp.status == 429
            verdict = self.breaker.failure if bad else self.breaker.success
        finally:
            verdict()
        self._observer.requested(self.name, method, str(resp.status), time.monotonic() - began)
        remaining = self._observer.rate_limit(self.name, resp.headers)
        self.quota.observe(resp.status, resp.headers)
        if remaining is not None:
            # Nearly spent is the operator's to hear of: past it, pulls of new tags fail.
            (log.warning if self.quota.low else log.info)(
                "ratelimit_changed", upstream=self.name, remaining=remaining,
                limit=resp.headers.get("ratelimit-limit"), low=self.quota.low,
                retry_after=self.quota.wait())
        if resp.status < 400:
            return resp
        body = b""
        if method != "HEAD":
            try:
                body = await read_limited(resp, MAX_ERROR_BODY, truncate=True)
            except (errors.UpstreamError, errors.UpstreamTimeout):
                body = b""
        resp.release()
        raise error_for(resp.status, resp.headers, body, not_found, self.name)

    async def _authorized(self, method: str, url: str, headers: dict[str, str], scope: str,
                          query, data: bytes | None = None) -> aiohttp.ClientResponse:
        auth = await self._auth.header(scope)
        sent = time.monotonic()
        resp = await self._follow(method, url, headers, auth, query, data)
        if resp.status != 401 or origin_of(str(resp.url)) != self._origin:
            return resp
        try:
            answer = await self._auth.answer(resp.headers.get("WWW-Authenticate", ""), scope,
                                             stale=auth, sent=sent)
        except BaseException:
            resp.release()   # answering failed (realm down, cancelled): free the connection
            raise
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
            if auth and origin_of(url) == self._origin:
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

