"""Blobs: one ordered chain of sources, asked in turn by every GET:

1. this cache's disk: a committed file, pinned and open for the answer's lifetime;
2. one fill per digest, tailed by every requester, which itself tries the remotes in order:
   in cluster mode the digest's owner among the peers, then its successor (``cluster``;
   streamed like the origin's bytes, the final byte held back until the digest matches),
   the backing tier (ECR; its copy is shown to no client until verified), then the origin.
   A source cut midway hands over to the next with a ``Range`` from the cut. A peer's own
   request never goes to the peers again.

The remotes live inside the fill rather than beside it because a herd must share one
download whichever remote serves it. What the origin gave is written back to the tier in
the background.

Every step obeys ``links``: a file on disk answers only the (upstream, repository) it is
linked to, and a fill only those it was started or confirmed for; anyone else is confirmed
with a HEAD to their upstream first.
"""

from __future__ import annotations

from typing import Callable

from .. import errors
from ..backing.contract import Tier
from ..backing.writebehind import WriteBehind
from ..cache.body import FileBody, FillBody
from ..cache.disk import Disk
from ..cache.fill import Candidate, Fill, Fills
from ..cache.store import BlobStore
from ..cluster import Cluster
from ..cluster.peer import source_failed
from ..errors import StorageError
from ..metrics import Metrics
from ..oci import Digest
from ..gate.routing import Route
from .answers import BlobAnswer, Prefetched, Upstream, tier_outcome
from .links import Links

# A remote source: how to open a blob there, as one of a fill's candidates.
Remote = Callable[[Upstream, Route, Digest], Candidate]


def _origin(upstream: Upstream, route: Route, digest: Digest) -> Candidate:
    client = upstream.client
    # Joined with a Range where a peer or the tier was cut; its own cut is the clients' to
    # resume (a new request), so it is not resumed itself.
    return Candidate(route.upstream, lambda: client.open_blob(route.repo, digest),
                     resume=lambda offset: client.open_blob(route.repo, digest, offset),
                     resumes=0)


def _tier(tier: Tier) -> Remote:
    def remote(upstream: Upstream, route: Route, digest: Digest) -> Candidate:
        # Held back (the tier says so): a corrupt copy is dropped and the next remote asked,
        # without any reader having seen a byte of it.
        return Candidate(
            tier.name, lambda: tier.open_blob(route.upstream, route.repo, digest),
            stream=tier.passthrough,
            resume=lambda offset: tier.open_blob(route.upstream, route.repo, digest, offset))
    return remote


def _peers(cluster: Cluster, upstream: Upstream, route: Route,
           digest: Digest) -> list[Candidate]:
    """The digest's owner and successor, each streamed to clients as its bytes arrive (the
    final byte held back until the digest matches, as for the origin): wrong bytes from a
    peer cut the clients' transfers (never a complete wrong blob) and open its breaker, so
    their retries go to the next source; a transfer cut midway goes on with ``Range`` from
    where it was cut, from the next source that joins."""
    return [Candidate("peer", lambda peer=peer: peer.open_blob(route.upstream, route.repo,
                                                               digest),
                      stream=True, on_failure=source_failed(peer),
                      resume=lambda offset, peer=peer: peer.open_blob(
                          route.upstream, route.repo, digest, start=offset))
            for peer in cluster.owners(str(digest))]


class Blobs:
    def __init__(self, store: BlobStore, fills: Fills, metrics: Metrics, links: Links, *,
                 tier: Tier | None = None, writes: WriteBehind | None = None,
                 disk: Disk | None = None, cluster: Cluster | None = None) -> None:
        self.store = store
        self.links = links
        self.disk = disk
        self.fills = fills
        self.metrics = metrics
        self.tier = tier
        self.writes = writes
        self.cluster = cluster
        self.remotes: list[Remote] = ([_tier(tier)] if tier is not None else []) + [_origin]

    async def get(self, upstream: Upstream, route: Route, digest: Digest, *,
                  for_peer: bool = False) -> BlobAnswer:
        """The blob's body from the first source that has it (see the module docstring);
        ``for_peer``: a peer asks, so the peers are not asked again."""
        answer = (await self._from_disk(upstream, route, digest)
                  or await self._from_fill(upstream, route, digest, for_peer))
        self.metrics.requests.inc("blob", answer.cache)
        if answer.cache == "hit":
            self.metrics.source("local", answer.size or 0)
        return answer

    async def _from_disk(self, upstream: Upstream, route: Route,
                         digest: Digest) -> BlobAnswer | None:
        entry = await self._stat(digest, pin=True)
        if entry is None:
            return None
        try:
            await self.links.confirm(upstream, route, "blob", digest)
        except BaseException:
            self.store.unpin(entry)
            raise
        body = await FileBody.open(self.store, entry)
        return BlobAnswer(digest, body, "hit") if body is not None else None

    async def _stat(self, digest: Digest, *, pin: bool = False):
        try:
            return await self.store.stat("blob", digest, pin=pin)
        except StorageError as exc:
            if self.disk is not None:
                await self.disk.failed("reading the index", exc)
            return None    # a miss: the fill passes through or caches on a repaired tree

    async def _from_fill(self, upstream: Upstream, route: Route, digest: Digest,
                         for_peer: bool = False) -> BlobAnswer:
        candidates = [remote(upstream, route, digest) for remote in self.remotes]
        if self.cluster is not None and not for_peer:
            candidates[:0] = _peers(self.cluster, upstream, route, digest)
        where = (route.upstream, route.repo)
        fill, joined = self.fills.get_or_start("blob", digest, candidates, link=where)
        if not joined:
            fill.result.add_done_callback(lambda done: self._filled(fill, done))
        if not joined and self.writes is not None:
            fill.result.add_done_callback(
                lambda done: self._write_back(route, digest, fill, done))
        if joined:
            if where not in fill.links:   # another repository's download: confirm first
                await self.links.ask(upstream, route, "blob", digest)
                await fill.add_link(where)
            self.metrics.coalesced.labels("blob").inc()
        # Raises the upstream's error before any byte is sent. A peer verifies the digest
        # itself: it is answered as soon as the size is known, with the bytes as written.
        size = await (fill.sized() if for_peer else fill.started())
        return BlobAnswer(digest, FillBody(fill, size, raw=for_peer),
                          "joined" if joined else "miss")

    async def prefetch(self, upstream: Upstream, route: Route, digest: Digest) -> Prefetched:
        """Make sure the blob is cached or being fetched, holding nothing: warm's question."""
        answer = await self.get(upstream, route, digest)
        await answer.body.aclose()   # nothing is sent: let go of the pin at once
        if isinstance(answer.body, FillBody):
            return Prefetched(0, answer.body.fill)
        return Prefetched(answer.size or 0, None)

    def _filled(self, fill: Fill, done) -> None:
        if not done.cancelled() and done.exception() is None:
            tier = self.tier is not None and fill.source == self.tier.name
            source = "peer" if fill.source == "peer" else "tier" if tier else "origin"
            self.metrics.source(source, done.result().size)

    def _write_back(self, route: Route, digest: Digest, fill: Fill, done) -> None:
        if done.cancelled() or done.exception() is not None or done.result().entry is None:
            return      # failed, or passed through (nothing on disk to write back)
        if fill.source == "peer":
            return      # the owner that fetched it from the origin writes it back
        from_tier = self.tier is not None and fill.source == self.tier.name
        self.metrics.tier_reads.labels("blob", "hit" if from_tier else "miss").inc()
        if not from_tier:
            self.writes.blob(route.upstream, route.repo, digest)

    async def size(self, upstream: Upstream, route: Route,
                   digest: Digest) -> tuple[int | None, str]:
        """For HEAD: the blob's size and where it came from, without starting a fill."""
        entry = await self._stat(digest)
        if entry is not None:
            await self.links.confirm(upstream, route, "blob", digest)
            return entry.size, "hit"
        fill = self.fills.running("blob", digest)
        if (fill is not None and fill.promised_size is not None
                and (route.upstream, route.repo) in fill.links):
            return fill.promised_size, "joined"
        if self.tier is not None:   # the tier client: the tier reads' breaker and timeouts
            try:
                size = await self.tier.head_blob(route.upstream, route.repo, digest)
                self.metrics.tier_reads.labels("blob_head", "hit").inc()
                return size, "tier"
            except errors.PullcacheError as exc:
                self.metrics.tier_reads.labels("blob_head", tier_outcome(exc)).inc()
        return await upstream.client.head_blob(route.repo, digest), "miss"


class StoreContent:
    """The local cache as the write-behind reads it (``backing.writebehind.LocalContent``)."""

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
