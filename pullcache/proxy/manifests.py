"""Manifests: by digest from the cache, by tag through a fresh record or a revalidation.

by digest → cache, else the backing tier, else upstream GET by digest, verified; never
            revalidated (the digest fixes the content).
by tag    → fresh record? serve : HEAD upstream (HEADs are free on Docker Hub) → digest
            cached? serve : GET by digest; upstream down / 429 → serve stale with
            ``Warning: 299``.
"""

from __future__ import annotations

import time

import structlog

from .. import errors
from ..backing.tier import EcrTier, StoredManifest, WriteBehind
from ..cache.store import BlobStore
from ..cache.tags import TagRecord, TagStore, accept_class
from ..metrics import Metrics
from ..oci import DEFAULT_ACCEPT, Digest, manifest_media_type, parse_reference
from ..routing import Route
from ..singleflight import SingleFlight
from .answers import STALE_WARNING, ManifestAnswer, Upstream, parse_digest, tier_outcome

log = structlog.get_logger("pullcache.proxy")


class Manifests:
    def __init__(self, store: BlobStore, tags: TagStore, metrics: Metrics, *,
                 tier: EcrTier | None = None, writes: WriteBehind | None = None) -> None:
        self.store = store
        self.tags = tags
        self.metrics = metrics
        self.tier = tier
        self.writes = writes
        self._flights: SingleFlight[ManifestAnswer] = SingleFlight()

    async def get(self, upstream: Upstream, route: Route, reference: str,
                  accept: tuple[str, ...]) -> ManifestAnswer:
        ref = parse_reference(reference)
        if isinstance(ref, Digest):
            answer = await self._by_digest(upstream, route.repo, ref, accept)
        else:
            answer = await self._by_tag(upstream, route, ref, accept)
        self.metrics.requests.labels("manifest", answer.cache).inc()
        return answer

    async def _by_digest(self, upstream: Upstream, repo: str, digest: Digest,
                         accept: tuple[str, ...]) -> ManifestAnswer:
        cached = await self.cached(digest)
        if cached is not None:
            return cached

        async def fetch() -> ManifestAnswer:
            # Content is fixed by the digest, so ask for every type we know besides the
            # client's: a registry refuses a manifest whose type is not in Accept.
            wanted = tuple(dict.fromkeys(accept + DEFAULT_ACCEPT))
            return await self._fetch_by_digest(upstream, repo, digest, wanted, None)
        answer, joined = await self._flights.do(("digest", str(digest)), fetch,
                                                on_join=self._count_join)
        return answer.as_("joined") if joined else answer

    async def _by_tag(self, upstream: Upstream, route: Route, tag: str,
                      accept: tuple[str, ...]) -> ManifestAnswer:
        aclass = accept_class(accept)
        # The hot path: a fresh record and its manifest, both from memory.
        record = self.tags.cached(route.upstream, route.repo, tag, aclass)
        if record is None:
            record = await self.tags.get(route.upstream, route.repo, tag, aclass)
        if record is not None and record.age() < upstream.tag_ttl:
            cached = await self.cached(Digest.parse(record.digest))
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
        answer, joined = await self._flights.do(key, resolve, on_join=self._count_join)
        return answer.as_("joined") if joined and answer.cache != "stale" else answer

    def _count_join(self) -> None:
        self.metrics.coalesced.labels("manifest").inc()

    async def _resolve_tag(self, upstream: Upstream, route: Route, tag: str,
                           accept: tuple[str, ...], aclass: str,
                           record: TagRecord | None) -> ManifestAnswer:
        client = upstream.client
        head = await client.head_manifest(route.repo, tag, accept,
                                          revalidating=record is not None)
        digest = parse_digest(head.digest)
        if digest is not None:
            cached = await self.cached(digest)
            if cached is not None:
                outcome = "revalidated"
            else:
                cached = await self._fetch_by_digest(upstream, route.repo, digest, accept, tag)
                outcome = "miss"
        else:
            # No Docker-Content-Digest on HEAD: GET by tag and hash what we got.
            got = await client.get_manifest(route.repo, tag, accept)
            cached = await self._store(got.body, got.content_type, got.digest, None)
            self._write_back(upstream, route.repo, cached.digest, tag)
            outcome = "miss"
        await self.tags.put(route.upstream, route.repo, tag, aclass,
                            TagRecord(str(cached.digest), cached.media_type, time.time()))
        return cached.as_(outcome)

    async def _fetch_by_digest(self, upstream: Upstream, repo: str, digest: Digest,
                               accept: tuple[str, ...], tag: str | None) -> ManifestAnswer:
        """A manifest not in the local cache: from the backing tier, else the upstream (and
        then written back to the tier, with the tag that named it)."""
        if self.tier is not None:
            try:
                got = await self.tier.get_manifest(upstream.client.name, repo, digest)
                answer = await self._store(got.body, got.content_type, got.digest, digest)
                self.metrics.tier_reads.labels("manifest", "hit").inc()
                if isinstance(got, StoredManifest):   # only an artifact there: complete it
                    self._write_back(upstream, repo, digest, tag)
                return answer
            except errors.PullcacheError as exc:
                self.metrics.tier_reads.labels("manifest", tier_outcome(exc)).inc()
        got = await upstream.client.get_manifest(repo, str(digest), accept)
        answer = await self._store(got.body, got.content_type, got.digest, digest)
        self._write_back(upstream, repo, digest, tag)
        return answer

    def _write_back(self, upstream: Upstream, repo: str, digest: Digest,
                    tag: str | None) -> None:
        if self.writes is not None:
            self.writes.manifest(upstream.client.name, repo, digest, tag)

    async def _stale(self, upstream: Upstream, record: TagRecord | None) -> ManifestAnswer | None:
        if record is None or not upstream.serve_stale:
            return None
        cached = await self.cached(Digest.parse(record.digest))
        if cached is None:
            return None
        return ManifestAnswer(cached.body, cached.media_type, cached.digest, "stale",
                              STALE_WARNING)

    async def cached(self, digest: Digest) -> ManifestAnswer | None:
        """The manifest from the local cache (memory, else disk), or None."""
        found = self.store.cached_manifest(digest) or await self.store.manifest(digest)
        if found is None:
            return None
        entry, body = found
        return ManifestAnswer(body, entry.media_type or "", digest, "hit")

    async def _store(self, body: bytes, content_type: str | None, header_digest: str | None,
                     expected: Digest | None) -> ManifestAnswer:
        """Verify upstream's manifest bytes and commit them under their digest."""
        digest = expected or parse_digest(header_digest) or Digest.of(body)
        if not digest.matches(body):
            log.warning("digest_mismatch", digest=str(digest), kind="manifest",
                        got=str(Digest.of(body, digest.algorithm)))
            self.metrics.digest_mismatches.inc()
            raise errors.DigestMismatch(str(digest))
        media_type = manifest_media_type(body, content_type)
        await self.store.put_bytes("manifest", digest, body, media_type)
        return ManifestAnswer(body, media_type, digest, "miss")
