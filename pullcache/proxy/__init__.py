"""The pull-through policy (docs/architecture.md, "The request's path"), split by noun:

- ``manifests``: by digest from the cache, never revalidated; by tag through a fresh record,
  else a HEAD revalidation, else stale with ``Warning: 299``.
- ``blobs``: cache → one fill per digest (backing tier, verified before shown, else the
  upstream), written back to the tier behind the response.
- ``discovery``: the tag list.
- ``referrers``: the upstream's referrers API, else the spec's tag-schema fallback.
- ``links``: the rule every hit obeys: cached content answers an (upstream, repository)
  only where it is linked, else once its upstream confirms it with a HEAD.

``Proxy`` is the one door routes use; it picks the upstream and hands over to the noun.
This package decides; ``cache/`` stores, ``upstream/`` talks. It knows nothing of aiohttp.web.
"""

from __future__ import annotations

from typing import Mapping

from ..backing.contract import Tier
from ..backing.writebehind import WriteBehind
from ..cache.disk import Disk
from ..cache.fill import Fills
from ..cache.store import BlobStore
from ..cache.tags import TagStore
from ..cluster import Cluster
from ..metrics import Metrics
from ..oci import Digest
from ..gate.routing import Route
from .answers import STALE_WARNING, BlobAnswer, ManifestAnswer, Prefetched, TagList, Upstream
from .blobs import Blobs, StoreContent
from .discovery import Discovery
from .links import Links
from .manifests import Manifests
from .referrers import Referrers, ReferrersAnswer


class Proxy:
    def __init__(self, store: BlobStore, fills: Fills, tags: TagStore,
                 upstreams: Mapping[str, Upstream], metrics: Metrics, *,
                 tier: Tier | None = None, writes: WriteBehind | None = None,
                 disk: Disk | None = None, cluster: Cluster | None = None) -> None:
        self.store = store
        self.fills = fills
        self.upstreams = upstreams
        links = Links(store, metrics)
        self.manifests = Manifests(store, tags, metrics, links, tier=tier, writes=writes,
                                   disk=disk, cluster=cluster)
        self.blobs = Blobs(store, fills, metrics, links, tier=tier, writes=writes, disk=disk,
                           cluster=cluster)
        self.discovery = Discovery(tags)
        self.referrer_lists = Referrers(self.manifests, tags, metrics)

    async def close(self) -> None:
        """End the background work the policy started (tag revalidations)."""
        await self.manifests.close()

    def manifest_hit(self, route: Route, reference: str,
                     accept: tuple[str, ...]) -> ManifestAnswer | None:
        """The answer from memory, if that is all it needs; else None (``manifest``)."""
        return self.manifests.hit(self.upstreams[route.upstream], route, reference, accept)

    async def manifest(self, route: Route, reference: str,
                       accept: tuple[str, ...]) -> ManifestAnswer:
        return await self.manifests.get(self.upstreams[route.upstream], route, reference, accept)

    async def blob(self, route: Route, digest: Digest) -> BlobAnswer:
        return await self.blobs.get(self.upstreams[route.upstream], route, digest)

    async def for_peer(self, route: Route, kind: str, digest: Digest):
        """A peer's question (cluster mode): the blob's ``BlobAnswer`` or the manifest's
        ``ManifestAnswer`` by digest, from this node's cache, fill or flight, or fetched
        from the tier or origin for ``route`` (never from the peers: no loops)."""
        upstream = self.upstreams[route.upstream]
        if kind == "blob":
            return await self.blobs.get(upstream, route, digest, for_peer=True)
        return await self.manifests.get(upstream, route, str(digest), (), for_peer=True)

    async def prefetch_blob(self, route: Route, digest: Digest) -> Prefetched:
        """For warming: the blob's cached size, or the fill now fetching it (``Prefetched``)."""
        return await self.blobs.prefetch(self.upstreams[route.upstream], route, digest)

    async def blob_size(self, route: Route, digest: Digest) -> tuple[int | None, str]:
        return await self.blobs.size(self.upstreams[route.upstream], route, digest)

    async def tag_list(self, route: Route) -> TagList:
        return await self.discovery.tag_list(self.upstreams[route.upstream], route)

    async def referrers(self, route: Route, subject: Digest) -> ReferrersAnswer:
        return await self.referrer_lists.get(self.upstreams[route.upstream], route, subject)


__all__ = ["Proxy", "Upstream", "ManifestAnswer", "BlobAnswer", "TagList", "StoreContent",
           "STALE_WARNING", "ReferrersAnswer", "Prefetched"]
