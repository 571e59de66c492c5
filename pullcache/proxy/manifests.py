"""Manifests: by digest from the cache, by tag through a fresh record or a revalidation.

by digest → cache, else (cluster mode) the digest's owner among the peers, else the
            backing tier, else upstream GET by digest, verified; never revalidated (the
            digest fixes the content). A peer's own request never goes to the peers again.
by tag    → fresh record? serve : HEAD upstream (HEADs are free on Docker Hub) → digest
            cached? serve : GET by digest; upstream down / 429 → serve stale with
            ``Warning: 299`` (the record that answers the client first, else any cached
            record of the tag whose media type the client accepts).
            The record that answers a client is its own accept class's, or another
            class's that the upstream would answer it with alike (``cache.negotiation``):
            a mixed fleet of clients shares one record per tag, fresh or stale.
            Stale-while-revalidate (RFC 5861's idea): up to ``stale_while_revalidate`` past
            the TTL, serve the record at once and revalidate in the background, one flight
            per tag; a moved tag is seen one request later.
            With anything cached to fall back on, a revalidation waits for the upstream
            only ``revalidate_timeout``: no client waits out an outage.

Every cached answer obeys ``links``: by digest, cached content answers only a repository
it is linked to (else a HEAD to its upstream confirms it first); a tag's record names
content linked to its repository by definition, since its upstream resolved the tag there.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from .. import errors
from ..backing.contract import StoredManifest, Tier
from ..backing.writebehind import WriteBehind
from ..cache.disk import Disk
from ..cache.store import BlobStore
from ..cache.tags import TagRecord, TagStore, accept_class
from ..cluster import Cluster
from ..metrics import Metrics
from ..oci import DEFAULT_ACCEPT, MANIFEST_TYPES, Digest, accepts, parse_reference
from ..gate.routing import Route
from ..singleflight import SingleFlight
from .answers import STALE_WARNING, ManifestAnswer, Upstream, parse_digest, tier_outcome
from .links import Links
from .manifest_copies import ManifestCopies

log = structlog.get_logger("pullcache.proxy")


class Manifests:
    def __init__(self, store: BlobStore, tags: TagStore, metrics: Metrics, links: Links, *,
                 tier: Tier | None = None, writes: WriteBehind | None = None,
                 disk: Disk | None = None, cluster: Cluster | None = None) -> None:
        self.store = store
        self.cluster = cluster
        self.links = links
        self.disk = disk
        self.tags = tags
        self.metrics = metrics
        self.tier = tier
        self.writes = writes
        self.copies = ManifestCopies(store, metrics, disk)
        self._flights: SingleFlight[ManifestAnswer] = SingleFlight()
        self._fleet_flights: SingleFlight[ManifestAnswer | None] = SingleFlight()
        self._behind: set[asyncio.Task[None]] = set()   # background revalidations
        self._behind_keys: set[tuple] = set()             # ...by tag, until they land

    async def close(self) -> None:
        """Cancel background revalidations and flights in the air (at shutdown)."""
        for task in list(self._behind):
            task.cancel()
        await asyncio.gather(*self._behind, return_exceptions=True)
        await self._flights.close()
        await self._fleet_flights.close()

    def hit(self, upstream: Upstream, route: Route, reference: str,
            accept: tuple[str, ...]) -> ManifestAnswer | None:
        """The answer from memory alone, when it needs nothing else: a manifest by digest
        whose link to the repository memory knows, or a tag whose record is within
        ``tag_ttl``, held by the hot layer. None: ask ``get``.

        The hot path of a node rollout: no await, no thread, no I/O (a chain of coroutines
        costs more than the lookups)."""
        ref = parse_reference(reference)
        if isinstance(ref, Digest):
            if not self.links.known(route, "manifest", ref):
                return None
            answer = self.copies.remembered(ref)
        else:
            record = self.tags.cached(route.upstream, route.repo, ref, accept_class(accept))
            if record is None or record.age() >= upstream.tag_ttl:
                return None
            answer = self.copies.remembered(Digest.parse(record.digest))
        if answer is not None:
            self.metrics.requests.inc("manifest", "hit")
        return answer

    async def get(self, upstream: Upstream, route: Route, reference: str,
                  accept: tuple[str, ...], *, for_peer: bool = False) -> ManifestAnswer:
        """``for_peer``: a peer asks (by digest), so the peers are not asked again."""
        ref = parse_reference(reference)
        if isinstance(ref, Digest):
            answer = await self._by_digest(upstream, route, ref, accept, for_peer)
        else:
            answer = await self._by_tag(upstream, route, ref, accept)
        self.metrics.requests.inc("manifest", answer.cache)
        return answer

    async def _by_digest(self, upstream: Upstream, route: Route, digest: Digest,
                         accept: tuple[str, ...], for_peer: bool = False) -> ManifestAnswer:
        cached = await self.copies.cached(digest)
        if cached is not None:
            await self.links.confirm(upstream, route, "manifest", digest)
            return cached
        return await self._digest_flight(upstream, route, digest, accept, None, for_peer)

    async def _digest_flight(self, upstream: Upstream, route: Route, digest: Digest,
                             accept: tuple[str, ...], tag: str | None,
                             for_peer: bool = False) -> ManifestAnswer:
        """``_fetch_by_digest`` in one flight per (upstream, repository, digest), shared by
        requests by digest, tags resolving to it, and peers asking this node (cluster mode:
        on the owner, one GET for the whole cluster)."""
        async def fetch() -> ManifestAnswer:
            # Content is fixed by the digest, so ask for every type we know besides the
            # client's: a registry refuses a manifest whose type is not in Accept.
            wanted = tuple(dict.fromkeys(accept + DEFAULT_ACCEPT))
            return await self._fetch_by_digest(upstream, route, digest, wanted, tag, for_peer)
        # One flight per repository: a fetch for another repository answers nobody here.
        # (A peer's request joins a local one: on the owner, that one asks no peer.)
        key = ("digest", route.upstream, route.repo, str(digest))
        answer, joined = await self._flights.do(key, fetch, on_join=self._count_join)
        return answer.as_("joined") if joined else answer

    async def _by_tag(self, upstream: Upstream, route: Route, tag: str,
                      accept: tuple[str, ...]) -> ManifestAnswer:
        aclass = accept_class(accept)
        # The hot path: a record and its manifest, both from memory.
        record = self.tags.cached(route.upstream, route.repo, tag, aclass)
        if record is None:
            try:
                record = await self.tags.get(route.upstream, route.repo, tag, aclass)
            except errors.StorageError as exc:
                await self.copies.disk_refused("reading a tag record", exc)
                record = None   # revalidate: the upstream knows
        if record is None and self.tier is not None:
            # One look at the fleet's record per tag and class, whatever the herd.
            fleet, _ = await self._fleet_flights.do(
                ("fleet", route.upstream, route.repo, tag, aclass),
                lambda: self._fleet_record(upstream, route, tag, accept, aclass))
            if fleet is not None:
                return fleet
        age = record.age() if record is not None else None
        if age is not None and age < upstream.tag_ttl + upstream.stale_while_revalidate:
            cached = await self.copies.cached(Digest.parse(record.digest))
            if cached is not None:
                if age < upstream.tag_ttl:
                    return cached
                self._revalidate_behind(upstream, route, tag, accept, aclass, record)
                return cached.as_("swr")

        key = ("tag", route.upstream, route.repo, tag, aclass)
        answer, joined = await self._flights.do(
            key, lambda: self._resolve_or_stale(upstream, route, tag, accept, aclass, record),
            on_join=self._count_join)
        return answer.as_("joined") if joined and answer.cache != "stale" else answer

    async def _fleet_record(self, upstream: Upstream, route: Route, tag: str,
                            accept: tuple[str, ...], aclass: str) -> ManifestAnswer | None:
        """The tag as another node of the fleet saw it within ``tag_ttl`` (the tier's record
        of it), without asking the origin; None if the tier has no fresh record. The record
        is kept here with the time it was checked, so the tag is revalidated with a HEAD to
        the origin once that is ``tag_ttl`` old."""
        wanted = tuple(t for t in MANIFEST_TYPES if accepts(accept, t))
        try:
            found = await self.tier.tag_record(route.upstream, route.repo, tag, wanted)
        except errors.PullcacheError as exc:
            self.metrics.tier_reads.labels("tag", tier_outcome(exc)).inc()
            return None
        if found is None:
            return None     # none kept (ECR keeps none): not counted
        if time.time() - found[1] >= upstream.tag_ttl:
            self.metrics.tier_reads.labels("tag", "stale").inc()
            return None
        digest = parse_digest(found[0])
        if digest is None:
            return None
        cached = await self.copies.cached(digest)
        if cached is not None:
            # R's own tag names it (the fleet saw it so in R): linked by definition.
            await self.links.record(route, "manifest", digest)
            answer = cached
        else:   # from the tier, which serves it to R only through R's link
            answer = await self._by_digest(upstream, route, digest, accept)
        if not accepts(accept, answer.media_type):
            return None
        self.metrics.tier_reads.labels("tag", "hit").inc()
        try:
            await self.tags.put(route.upstream, route.repo, tag, aclass,
                                TagRecord(str(digest), answer.media_type, found[1]))
        except errors.StorageError as exc:
            await self.copies.disk_refused("saving a tag record", exc)
        return answer

    def _revalidate_behind(self, upstream: Upstream, route: Route, tag: str,
                           accept: tuple[str, ...], aclass: str, record: TagRecord) -> None:
        """Start the tag's revalidation in a task this object owns, unless one is in the
        air already (one flight per tag: requests meanwhile are answered from the cache)."""
        key = ("tag", route.upstream, route.repo, tag, aclass)
        if key in self._behind_keys or self._flights.in_flight(key):
            return
        self._behind_keys.add(key)

        async def revalidate() -> None:
            try:
                await self._flights.do(key, lambda: self._resolve_or_stale(
                    upstream, route, tag, accept, aclass, record))
            except errors.PullcacheError as exc:
                log.info("revalidation_failed", upstream=route.upstream, repo=route.repo,
                         tag=tag, error=str(exc))
        task = asyncio.create_task(revalidate(), name=f"revalidate {route.repo}:{tag}")
        self._behind.add(task)
        task.add_done_callback(self._behind.discard)
        task.add_done_callback(lambda _: self._behind_keys.discard(key))

    async def _resolve_or_stale(self, upstream: Upstream, route: Route, tag: str,
                                accept: tuple[str, ...], aclass: str,
                                record: TagRecord | None) -> ManifestAnswer:
        # The tag is cached (for this client or another class): the upstream answered it
        # lately, so it gets ``revalidate_timeout``, not the full wait, before the stale
        # answer (or, with nothing this client takes, the error it falls back on).
        cached = record is not None or bool(await self._records(route, tag))
        try:
            return await self._resolve_tag(upstream, route, tag, accept, aclass, record,
                                           revalidating=cached)
        except errors.UPSTREAM_FAILURES as exc:
            stale = await self._stale(upstream, route, tag, accept, record)
            if stale is None:
                raise
            answer, used = stale
            log.warning("served_stale", upstream=route.upstream, repo=route.repo,
                        tag=tag, error=str(exc), age=round(used.age(), 1),
                        other_class=used is not record)
            return answer

    def _count_join(self) -> None:
        self.metrics.coalesced.labels("manifest").inc()

    async def _resolve_tag(self, upstream: Upstream, route: Route, tag: str,
                           accept: tuple[str, ...], aclass: str, record: TagRecord | None,
                           *, revalidating: bool) -> ManifestAnswer:
        client = upstream.client
        head = await client.head_manifest(route.repo, tag, accept, revalidating=revalidating)
        digest = parse_digest(head.digest)
        if digest is not None:
            cached = await self.copies.cached(digest)
            if cached is not None:
                outcome = "revalidated"
                await self.links.record(route, "manifest", digest)   # U named it in R
            else:
                cached = await self._digest_flight(upstream, route, digest, accept, tag)
                outcome = "miss"
        else:
            # No Docker-Content-Digest on HEAD: GET by tag and hash what we got.
            got = await client.get_manifest(route.repo, tag, accept)
            cached = await self.copies.put(got.body, got.content_type, got.digest, None, route)
            self._write_back(upstream, route.repo, cached.digest, tag)
            outcome = "miss"
        try:
            await self.tags.put(route.upstream, route.repo, tag, aclass,
                                TagRecord(str(cached.digest), cached.media_type, time.time()))
        except errors.StorageError as exc:
            # Served all the same; the next request revalidates again.
            log.warning("tag_record_not_saved", repo=route.repo, tag=tag, error=str(exc))
            await self.copies.disk_refused("saving a tag record", exc)
        return cached.as_(outcome)

    async def _fetch_by_digest(self, upstream: Upstream, route: Route, digest: Digest,
                               accept: tuple[str, ...], tag: str | None,
                               for_peer: bool = False) -> ManifestAnswer:
        """A manifest not in the local cache: from its owner among the peers, else the
        backing tier, else the upstream (and then written back to the tier, with the tag
        that named it); linked to ``route``."""
        repo = route.repo
        if self.cluster is not None and not for_peer:
            answer = await self._from_peers(route, digest)
            if answer is not None:
                return answer
        if self.tier is not None:
            try:
                got = await self.tier.get_manifest(upstream.client.name, repo, digest)
                answer = await self.copies.put(got.body, got.content_type, got.digest, digest,
                                               route)
                self.metrics.tier_reads.labels("manifest", "hit").inc()
                if isinstance(got, StoredManifest):   # only an artifact there: complete it
                    self._write_back(upstream, repo, digest, tag)
                return answer
            except errors.PullcacheError as exc:
                self.metrics.tier_reads.labels("manifest", tier_outcome(exc)).inc()
        got = await upstream.client.get_manifest(repo, str(digest), accept)
        answer = await self.copies.put(got.body, got.content_type, got.digest, digest, route)
        self._write_back(upstream, repo, digest, tag)
        return answer

    async def _from_peers(self, route: Route, digest: Digest) -> ManifestAnswer | None:
        """The manifest from its owner (else its successor), who fetched or confirmed it for
        this same (upstream, repository): so it is linked here as a fetch from the origin
        would be. None: no peer could answer, and the caller goes on to the origin."""
        for peer in self.cluster.owners(str(digest)):
            try:
                got = await peer.get_manifest(route.upstream, route.repo, digest)
                return await self.copies.put(got.body, got.content_type, got.digest, digest, route)
            except errors.DigestMismatch as exc:
                peer.failed(exc)
            except errors.PullcacheError as exc:
                log.info("peer_skipped", peer=peer.address, digest=str(digest),
                         error=str(exc))
        return None

    def _write_back(self, upstream: Upstream, repo: str, digest: Digest,
                    tag: str | None) -> None:
        if self.writes is not None:
            self.writes.manifest(upstream.client.name, repo, digest, tag)

    async def _stale(self, upstream: Upstream, route: Route, tag: str,
                     accept: tuple[str, ...], record: TagRecord | None,
                     ) -> tuple[ManifestAnswer, TagRecord] | None:
        """A cached manifest of the tag to serve while upstream cannot answer: the record
        that answers the client first, else the newest record of another class whose media
        type the client accepts (a mixed fleet of clients shares one outage)."""
        if not upstream.serve_stale:
            return None
        others = await self._records(route, tag)
        candidates = ([record] if record is not None else []) + [
            r for r in others if r != record and accepts(accept, r.media_type)]
        for candidate in candidates:
            cached = await self.copies.cached(Digest.parse(candidate.digest))
            if cached is not None:
                return ManifestAnswer(cached.body, cached.media_type, cached.digest, "stale",
                                      STALE_WARNING), candidate
        return None

    async def _records(self, route: Route, tag: str) -> list[TagRecord]:
        """Every accept class's record of the tag, newest first ([]: the disk refused)."""
        try:
            return await self.tags.get_all(route.upstream, route.repo, tag)
        except errors.StorageError:
            return []
