"""The pull-through policy, in one place (DESIGN.md §1).

manifests: by digest → cache, else upstream GET by digest, verified; never revalidated.
           by tag → fresh record? serve : HEAD upstream (HEADs are free on Docker Hub) →
           digest cached? serve : GET by digest; upstream down / 429 → serve stale with
           ``Warning: 299``.
blobs:     cache → one fill per digest, tailed by every requester, from the backing tier
           (ECR, verified before shown) else the upstream; what the upstream gave is written
           back to the tier in the background.

This module decides; ``cache/`` stores, ``upstream/`` talks. It knows nothing of aiohttp.web.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import parse_qsl, urlsplit

import structlog

from . import errors
from .backing.tier import EcrTier, WriteBehind
from .cache.fill import Candidate, Fill, Fills
from .cache.index import Entry
from .cache.store import BlobStore
from .cache.tags import TagRecord, TagStore, accept_class
from .metrics import Metrics
from .oci import DEFAULT_ACCEPT, Digest, manifest_media_type, parse_reference
from .routing import Route
from .singleflight import SingleFlight
from .upstream.client import Passthrough, RegistryClient

log = structlog.get_logger("pullcache.proxy")
MAX_TAG_PAGES = 100
STALE_WARNING = '299 - "pullcache: upstream unavailable; served from cache"'


@dataclass(frozen=True, slots=True)
class Upstream:
    client: RegistryClient
    tag_ttl: float
    serve_stale: bool


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
    body: bytes
    media_type: str
    digest: Digest
    cache: str                 # hit | miss | joined | stale | revalidated
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class TagList:
    tags: list[str]
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class BlobAnswer:
    """A committed file (``entry``) or a fill in progress (``fill``), never both."""
    digest: Digest
    size: int | None
    cache: str                 # hit | miss | joined
    entry: Entry | None = None
    fill: Fill | None = None


class Proxy:
    def __init__(self, store: BlobStore, fills: Fills, tags: TagStore,
                 upstreams: Mapping[str, Upstream], metrics: Metrics, *,
                 tier: EcrTier | None = None, writes: WriteBehind | None = None) -> None:
        self.store = store
        self.fills = fills
        self.tags = tags
        self.upstreams = upstreams
        self.metrics = metrics
        self.tier = tier
        self.writes = writes
        self._manifest_flights: SingleFlight[ManifestAnswer] = SingleFlight()
        self._list_flights: SingleFlight[list[str]] = SingleFlight()

    # -- manifests ------------------------------------------------------------------------------

    async def manifest(self, route: Route, reference: str,
                       accept: tuple[str, ...]) -> ManifestAnswer:
        ref = parse_reference(reference)
        upstream = self.upstreams[route.upstream]
        if isinstance(ref, Digest):
            answer = await self._manifest_by_digest(upstream, route.repo, ref, accept)
        else:
            answer = await self._manifest_by_tag(upstream, route, ref, accept)
        self.metrics.requests.labels("manifest", answer.cache).inc()
        return answer

    async def _manifest_by_digest(self, upstream: Upstream, repo: str, digest: Digest,
                                  accept: tuple[str, ...]) -> ManifestAnswer:
        cached = await self._cached_manifest(digest)
        if cached is not None:
            return cached

        async def fetch() -> ManifestAnswer:
            # Content is fixed by the digest, so ask for every type we know besides the
            # client's: a registry refuses a manifest whose type is not in Accept.
            wanted = tuple(dict.fromkeys(accept + DEFAULT_ACCEPT))
            return await self._fetch_by_digest(upstream, repo, digest, wanted, None)
        answer, joined = await self._manifest_flights.do(("digest", str(digest)), fetch,
                                                         on_join=self._count_join)
        return _as(answer, "joined") if joined else answer

    async def _manifest_by_tag(self, upstream: Upstream, route: Route, tag: str,
                               accept: tuple[str, ...]) -> ManifestAnswer:
        aclass = accept_class(accept)
        record = await self.tags.get(route.upstream, route.repo, tag, aclass)
        if record is not None and record.age() < upstream.tag_ttl:
            cached = await self._cached_manifest(Digest.parse(record.digest))
            if cached is not None:
                return cached

        async def resolve() -> ManifestAnswer:
            try:
                return await self._resolve_tag(upstream, route, tag, accept, aclass, record)
            except errors.UPSTREAM_FAILURES as exc:
                stale = await self._stale(upstream, record)
                if stale is None:
                    raise
                log.warning("served_stale", upstream=route.upstream, repo=route.repo,
                            tag=tag, error=str(exc), age=round(record.age(), 1))
                return stale
        key = ("tag", route.upstream, route.repo, tag, aclass)
        answer, joined = await self._manifest_flights.do(key, resolve,
                                                         on_join=self._count_join)
        return _as(answer, "joined") if joined and answer.cache != "stale" else answer

    def _count_join(self) -> None:
        self.metrics.coalesced.labels("manifest").inc()

    async def _resolve_tag(self, upstream: Upstream, route: Route, tag: str,
                           accept: tuple[str, ...], aclass: str,
                           record: TagRecord | None) -> ManifestAnswer:
        client = upstream.client
        head = await client.head_manifest(route.repo, tag, accept,
                                          revalidating=record is not None)
        digest = _parse_digest(head.digest)
        if digest is not None:
            cached = await self._cached_manifest(digest)
            if cached is not None:
                outcome = "revalidated"
            else:
                cached = await self._fetch_by_digest(upstream, route.repo, digest, accept, tag)
                outcome = "miss"
        else:
            # No Docker-Content-Digest on HEAD: GET by tag and hash what we got.
            got = await client.get_manifest(route.repo, tag, accept)
            cached = await self._store_manifest(got.body, got.content_type, got.digest, None)
            self._write_back_manifest(upstream, route.repo, cached.digest, tag)
            outcome = "miss"
        await self.tags.put(route.upstream, route.repo, tag, aclass,
                            TagRecord(str(cached.digest), cached.media_type, time.time()))
        return _as(cached, outcome)

    async def _fetch_by_digest(self, upstream: Upstream, repo: str, digest: Digest,
                               accept: tuple[str, ...], tag: str | None) -> ManifestAnswer:
        """A manifest not in the local cache: from the backing tier, else the upstream (and
        then written back to the tier, with the tag that named it)."""
        if self.tier is not None:
            try:
                got = await self.tier.get_manifest(upstream.client.name, repo, digest)
                answer = await self._store_manifest(got.body, got.content_type, got.digest,
                                                    digest)
                self.metrics.tier_reads.labels("manifest", "hit").inc()
                return answer
            except errors.PullcacheError as exc:
                self.metrics.tier_reads.labels("manifest", _tier_outcome(exc)).inc()
        got = await upstream.client.get_manifest(repo, str(digest), accept)
        answer = await self._store_manifest(got.body, got.content_type, got.digest, digest)
        self._write_back_manifest(upstream, repo, digest, tag)
        return answer

    def _write_back_manifest(self, upstream: Upstream, repo: str, digest: Digest,
                             tag: str | None) -> None:
        if self.writes is not None:
            self.writes.manifest(upstream.client.name, repo, digest, tag)

    async def _stale(self, upstream: Upstream, record: TagRecord | None) -> ManifestAnswer | None:
        if record is None or not upstream.serve_stale:
            return None
        cached = await self._cached_manifest(Digest.parse(record.digest))
        if cached is None:
            return None
        return ManifestAnswer(cached.body, cached.media_type, cached.digest, "stale",
                              STALE_WARNING)

    async def _cached_manifest(self, digest: Digest) -> ManifestAnswer | None:
        entry = await self.store.stat("manifest", digest)
        if entry is None:
            return None
        try:
            body = await self.store.read_bytes(entry)
        except FileNotFoundError:
            return None  # evicted between stat and read: a miss
        return ManifestAnswer(body, entry.media_type or "", digest, "hit")

    async def _store_manifest(self, body: bytes, content_type: str | None,
                              header_digest: str | None,
                              expected: Digest | None) -> ManifestAnswer:
        """Verify upstream's manifest bytes and commit them under their digest."""
        digest = expected or _parse_digest(header_digest) or Digest.of(body)
        if not digest.matches(body):
            log.warning("digest_mismatch", digest=str(digest), kind="manifest",
                        got=str(Digest.of(body, digest.algorithm)))
            self.metrics.digest_mismatches.inc()
            raise errors.DigestMismatch(str(digest))
        media_type = manifest_media_type(body, content_type)
        await self.store.put_bytes("manifest", digest, body, media_type)
        return ManifestAnswer(body, media_type, digest, "miss")

    # -- blobs ------------------------------------------------------------------------------------

    async def blob(self, route: Route, digest: Digest) -> BlobAnswer:
        """A committed blob (pinned: the caller serves it, then calls ``store.unpin``), or
        the fill that is (now) fetching it."""
        entry = await self.store.stat("blob", digest, pin=True)
        if entry is not None:
            answer = BlobAnswer(digest, entry.size, "hit", entry=entry)
        else:
            fill, joined = self.fills.get_or_start("blob", digest, self._sources(route, digest))
            if not joined and self.writes is not None:
                fill.result.add_done_callback(
                    lambda done: self._write_back_blob(route, digest, fill, done))
            if joined:
                self.metrics.coalesced.labels("blob").inc()
            size = await fill.started()  # raises the upstream's error before any byte is sent
            answer = BlobAnswer(digest, size, "joined" if joined else "miss", fill=fill)
        self.metrics.requests.labels("blob", answer.cache).inc()
        return answer

    def _sources(self, route: Route, digest: Digest) -> list[Candidate]:
        client = self.upstreams[route.upstream].client
        origin = Candidate(route.upstream, lambda: client.open_blob(route.repo, digest))
        if self.tier is None:
            return [origin]
        tier = self.tier
        # The tier's copy is shown to no client until verified: a corrupt copy is dropped
        # and the origin asked, without any reader having seen a byte of it.
        return [Candidate("ecr", lambda: tier.open_blob(route.upstream, route.repo, digest),
                          stream=False), origin]

    def _write_back_blob(self, route: Route, digest: Digest, fill: Fill, done) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        self.metrics.tier_reads.labels("blob", "hit" if fill.source == "ecr" else "miss").inc()
        if fill.source != "ecr":
            self.writes.blob(route.upstream, route.repo, digest)

    async def blob_size(self, route: Route, digest: Digest) -> tuple[int | None, str]:
        """For HEAD: the blob's size and where it came from, without starting a fill."""
        entry = await self.store.stat("blob", digest)
        if entry is not None:
            return entry.size, "hit"
        fill = self.fills.running("blob", digest)
        if fill is not None and fill.promised_size is not None:
            return fill.promised_size, "joined"
        client = self.upstreams[route.upstream].client
        return await client.head_blob(route.repo, digest), "miss"

    # -- tags/list and referrers ------------------------------------------------------------------

    async def tag_list(self, route: Route) -> TagList:
        """Every tag of the repository, in lexical order (distribution-spec end-8a).

        Fetched whole (following upstream's own pagination) so that ``n``/``last`` work the
        same whatever the upstream supports; Distribution 2.8 ignores them. The last answer
        is kept, to be served stale when the upstream is down.
        """
        upstream = self.upstreams[route.upstream]
        key = ("tags/list", route.upstream, route.repo)
        try:
            tags, _ = await self._list_flights.do(key, lambda: self._fetch_tags(upstream, route))
        except errors.UPSTREAM_FAILURES:
            saved = await self.tags.get_list(route.upstream, route.repo)
            if saved is None or not upstream.serve_stale:
                raise
            return TagList(saved, STALE_WARNING)
        await self.tags.put_list(route.upstream, route.repo, tags)
        return TagList(tags)

    async def _fetch_tags(self, upstream: Upstream, route: Route) -> list[str]:
        found: set[str] = set()
        query: dict[str, str] = {}
        for _ in range(MAX_TAG_PAGES):
            page = await upstream.client.passthrough(route.repo, "tags/list", query)
            try:
                found.update(t for t in (json.loads(page.body).get("tags") or [])
                             if isinstance(t, str))
            except (ValueError, AttributeError) as exc:
                raise errors.UpstreamError("malformed tags/list answer") from exc
            query = _next_page(page.headers.get("Link"))
            if not query:
                break
        return sorted(found)

    async def referrers(self, route: Route, digest: Digest,
                        query: Mapping[str, str]) -> Passthrough:
        """Referrers (distribution-spec end-12a): answered by the upstream as it is now."""
        return await self.upstreams[route.upstream].client.passthrough(
            route.repo, f"referrers/{digest}", query)


def _tier_outcome(exc: errors.PullcacheError) -> str:
    return "miss" if isinstance(exc, (errors.ManifestUnknown, errors.BlobUnknown,
                                      errors.NameUnknown)) else "error"


class LocalContent:
    """The local cache as the write-behind reads it (``backing.tier.LocalContent``)."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    async def blob_path(self, digest: Digest):
        entry = await self.store.stat("blob", digest)
        return self.store.path(entry) if entry else None

    async def manifest(self, digest: Digest) -> tuple[bytes, str] | None:
        entry = await self.store.stat("manifest", digest)
        if entry is None:
            return None
        try:
            return await self.store.read_bytes(entry), entry.media_type or ""
        except FileNotFoundError:
            return None


def _next_page(link: str | None) -> dict[str, str]:
    """The query of an RFC 8288 ``Link: <…?last=x&n=y>; rel="next"``, or {}."""
    if not link or 'rel="next"' not in link or "<" not in link:
        return {}
    target = link[link.index("<") + 1:link.index(">")]
    return dict(parse_qsl(urlsplit(target).query))


def _as(answer: ManifestAnswer, cache: str) -> ManifestAnswer:
    return ManifestAnswer(answer.body, answer.media_type, answer.digest, cache, answer.warning)


def _parse_digest(text: str | None) -> Digest | None:
    if not text:
        return None
    try:
        return Digest.parse(text)
    except errors.DigestInvalid:
        return None
