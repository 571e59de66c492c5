"""This node's content as the tier's write-behind reads it, plus the one origin fetch it may
ask for: an index's child manifest that no node pulled (a manifest, never its layers)."""

from __future__ import annotations

from typing import Mapping

import structlog

from .. import errors
from ..cache.store import BlobStore
from ..cache.tags import TagStore
from ..oci import DEFAULT_ACCEPT, Digest, manifest_media_type
from .answers import Upstream
from .blobs import StoreContent

log = structlog.get_logger("pullcache.proxy")


class FleetContent(StoreContent):
    """The local cache and the upstreams, as the write-behind reads them
    (``backing.writebehind.LocalContent``)."""

    def __init__(self, store: BlobStore, upstreams: Mapping[str, Upstream],
                 tags: TagStore | None = None) -> None:
        super().__init__(store)
        self.upstreams = upstreams
        self.tags = tags

    async def tag_digests(self, upstream: str, repo: str, tag: str) -> set[str]:
        """The digests this node's records of the tag hold now (one per accept class)."""
        if self.tags is None:
            return set()
        try:
            records = await self.tags.get_all(upstream, repo, tag)
        except errors.StorageError:
            return set()
        return {record.digest for record in records}

    async def origin_manifest(self, upstream: str, repo: str,
                              digest: Digest) -> tuple[bytes, str] | None:
        """From the origin by digest, verified, and kept in the local cache (so a later
        pull of that platform on this node needs no fetch at all)."""
        origin = self.upstreams.get(upstream)
        if origin is None:
            return None
        try:
            got = await origin.client.get_manifest(repo, str(digest), DEFAULT_ACCEPT)
        except errors.PullcacheError as exc:
            log.info("tier_child_fetch_failed", upstream=upstream, repo=repo,
                     digest=str(digest), error=str(exc))
            return None
        if not digest.matches(got.body):
            log.warning("digest_mismatch", digest=str(digest), kind="manifest")
            return None
        media_type = manifest_media_type(got.body, got.content_type)
        await self.store.put_bytes("manifest", digest, got.body, media_type,
                                   links=frozenset({(upstream, repo)}))   # fetched from R
        log.info("tier_child_fetched", upstream=upstream, repo=repo, digest=str(digest))
        return got.body, media_type
