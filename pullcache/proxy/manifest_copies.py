"""The cache's own copies of manifests: found in memory, else on disk; upstream's bytes
verified against their digest and committed, linked to the repository that gave them."""

from __future__ import annotations

import structlog

from .. import errors
from ..cache.disk import Disk
from ..cache.store import BlobStore
from ..gate.routing import Route
from ..metrics import Metrics
from ..oci import Digest, manifest_media_type
from .answers import ManifestAnswer, parse_digest

log = structlog.get_logger("pullcache.proxy")


class ManifestCopies:
    """Reads and writes of manifests in the local cache; a refusing disk is reported to
    ``disk`` and costs a miss (or an uncached pass-through), never the pull."""

    def __init__(self, store: BlobStore, metrics: Metrics, disk: Disk | None) -> None:
        self.store = store
        self.metrics = metrics
        self.disk = disk

    def remembered(self, digest: Digest) -> ManifestAnswer | None:
        found = self.store.cached_manifest(digest)
        if found is None:
            return None
        entry, body = found
        return ManifestAnswer(body, entry.media_type or "", digest, "hit")

    async def cached(self, digest: Digest) -> ManifestAnswer | None:
        """The manifest from the local cache (memory, else disk), or None."""
        answer = self.remembered(digest)
        if answer is not None:
            return answer
        try:
            found = await self.store.manifest(digest)
        except errors.StorageError as exc:
            await self.disk_refused("reading the index", exc)
            return None     # a miss: fetched (and, once repaired, cached) again
        if found is None:
            return None
        entry, body = found
        return ManifestAnswer(body, entry.media_type or "", digest, "hit")

    async def put(self, body: bytes, content_type: str | None, header_digest: str | None,
                     expected: Digest | None, route: Route) -> ManifestAnswer:
        """Verify upstream's manifest bytes and commit them under their digest, linked to
        ``route`` (whose upstream and repository gave them)."""
        digest = expected or parse_digest(header_digest) or Digest.of(body)
        if not digest.matches(body):
            log.warning("digest_mismatch", digest=str(digest), kind="manifest",
                        got=str(Digest.of(body, digest.algorithm)))
            self.metrics.digest_mismatches.inc()
            raise errors.DigestMismatch(str(digest))
        media_type = manifest_media_type(body, content_type)
        try:
            await self.store.put_bytes("manifest", digest, body, media_type,
                                       links=frozenset({(route.upstream, route.repo)}))
        except errors.StorageError as exc:
            # Verified bytes in hand: pass them through uncached rather than fail the pull.
            log.warning("manifest_passthrough", digest=str(digest), error=str(exc))
            await self.disk_refused("caching a manifest", exc)
        return ManifestAnswer(body, media_type, digest, "miss")

    async def disk_refused(self, what: str, exc: errors.StorageError) -> None:
        if self.disk is not None:
            await self.disk.failed(what, exc)
