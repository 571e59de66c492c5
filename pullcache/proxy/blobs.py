"""Blobs: cache → one fill per digest, tailed by every requester, from the backing tier
(ECR, verified before shown) else the upstream; what the upstream gave is written back to
the tier in the background."""

from __future__ import annotations

from ..backing.tier import EcrTier, WriteBehind
from ..cache.disk import Disk
from ..cache.fill import Candidate, Fill, Fills
from ..cache.store import BlobStore
from ..errors import StorageError
from ..metrics import Metrics
from ..oci import Digest
from ..routing import Route
from .answers import BlobAnswer, Upstream


class Blobs:
    def __init__(self, store: BlobStore, fills: Fills, metrics: Metrics, *,
                 tier: EcrTier | None = None, writes: WriteBehind | None = None,
                 disk: Disk | None = None) -> None:
        self.store = store
        self.disk = disk
        self.fills = fills
        self.metrics = metrics
        self.tier = tier
        self.writes = writes

    async def get(self, upstream: Upstream, route: Route, digest: Digest) -> BlobAnswer:
        """A committed blob (pinned: the caller serves it, then calls ``store.unpin``), or
        the fill that is (now) fetching it."""
        try:
            entry = await self.store.stat("blob", digest, pin=True)
        except StorageError as exc:
            if self.disk is not None:
                await self.disk.failed("reading the index", exc)
            entry = None    # a miss: the fill passes through or caches on a repaired tree
        if entry is not None:
            answer = BlobAnswer(digest, entry.size, "hit", entry=entry)
        else:
            fill, joined = self.fills.get_or_start("blob", digest,
                                                   self._sources(upstream, route, digest))
            if not joined and self.writes is not None:
                fill.result.add_done_callback(
                    lambda done: self._write_back(route, digest, fill, done))
            if joined:
                self.metrics.coalesced.labels("blob").inc()
            size = await fill.started()  # raises the upstream's error before any byte is sent
            answer = BlobAnswer(digest, size, "joined" if joined else "miss", fill=fill)
        self.metrics.requests.labels("blob", answer.cache).inc()
        return answer

    def _sources(self, upstream: Upstream, route: Route, digest: Digest) -> list[Candidate]:
        client = upstream.client
        origin = Candidate(route.upstream, lambda: client.open_blob(route.repo, digest))
        if self.tier is None:
            return [origin]
        tier = self.tier
        # The tier's copy is shown to no client until verified: a corrupt copy is dropped
        # and the origin asked, without any reader having seen a byte of it.
        return [Candidate("ecr", lambda: tier.open_blob(route.upstream, route.repo, digest),
                          stream=False), origin]

    def _write_back(self, route: Route, digest: Digest, fill: Fill, done) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        self.metrics.tier_reads.labels("blob", "hit" if fill.source == "ecr" else "miss").inc()
        if fill.source != "ecr":
            self.writes.blob(route.upstream, route.repo, digest)

    async def size(self, upstream: Upstream, route: Route,
                   digest: Digest) -> tuple[int | None, str]:
        """For HEAD: the blob's size and where it came from, without starting a fill."""
        entry = await self.store.stat("blob", digest)
        if entry is not None:
            return entry.size, "hit"
        fill = self.fills.running("blob", digest)
        if fill is not None and fill.promised_size is not None:
            return fill.promised_size, "joined"
        return await upstream.client.head_blob(route.repo, digest), "miss"


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
