"""Uploads into the tier: one flight per (repository, digest) that every job awaits, what is
known to be there remembered, and every completed PUT counted (``pullcache_tier_uploads``).

Before this, a manifest job pushed the blobs it referenced while the blobs' own jobs were
uploading them: the existence check said "missing", so the same blob went up twice.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import structlog

from .. import errors
from ..oci import OCI_MANIFEST, Digest
from ..singleflight import SingleFlight
from .contract import WritableTier
from .content import EMPTY, Source, artifact, artifact_tag, bytes_source

log = structlog.get_logger("pullcache.tier")
MAX_REMEMBERED = 100_000
TAG_REFUSED = ("TAG_INVALID", "ImageTagAlreadyExists", "already exists")


class Uploads:
    def __init__(self, tier: WritableTier, metrics=None) -> None:
        self.tier = tier
        self._metrics = metrics
        self._flights: SingleFlight[str] = SingleFlight()
        self._present: dict[tuple[str, str, str], None] = {}   # known to be in the tier

    async def blob(self, repo: str, digest: Digest, source: Source) -> str:
        """"pushed" or "present": the blob is in ``repo``; "gone": the source lost it."""
        async def once() -> str:
            if await self.tier.client.exists(repo, "blobs", digest):
                self._remember(repo, "blob", str(digest))
                return "present"
            chunks = await source()
            if chunks is None:
                return "gone"
            try:
                await self.tier.client.push_blob(repo, digest, chunks)
            except FileNotFoundError:   # evicted while it was being read
                return "gone"
            except errors.PullcacheError:
                self._count("blob", "failed")
                raise
            self._count("blob")
            self._remember(repo, "blob", str(digest))
            log.info("tier_blob_pushed", repository=repo, digest=str(digest))
            return "pushed"
        return await self._once((repo, "blob", str(digest)), once)

    async def manifest(self, repo: str, digest: Digest, body: bytes, media_type: str) -> str:
        """PUT the manifest by digest ("pushed"); ECR's refusal is raised to the caller."""
        async def put() -> str:
            await self.tier.client.push_manifest(repo, str(digest), body, media_type)
            self._count("manifest")
            self._remember(repo, "manifest", str(digest))
            log.info("tier_manifest_pushed", repository=repo, digest=str(digest))
            return "pushed"
        return await self._once((repo, "manifest", str(digest)), put)

    async def keep(self, digest: Digest, body: bytes, media_type: str) -> str:
        """Store a manifest as an artifact in the manifest store, readable by digest."""
        store, tag = self.tier.manifest_store, artifact_tag(digest)

        async def keep() -> str:
            await self.tier.repositories.ensure(store)
            if await self.tier.client.exists(store, "manifests", tag):
                self._remember(store, "manifest", tag)
                return "artifact"
            await self.blob(store, Digest.of(EMPTY), bytes_source(EMPTY))
            await self.blob(store, digest, bytes_source(body))
            await self.tier.client.push_manifest(store, tag, artifact(body, media_type, digest),
                                                 OCI_MANIFEST)
            self._count("manifest")
            self._remember(store, "manifest", tag)
            log.info("tier_manifest_stored", repository=store, digest=str(digest),
                     kind="artifact")
            return "artifact"
        await self._once((store, "manifest", tag), keep)
        return "artifact"

    async def has_manifest(self, repo: str, reference: Digest | str) -> bool:
        if (repo, "manifest", str(reference)) in self._present:
            return True
        if await self.tier.client.exists(repo, "manifests", reference):
            self._remember(repo, "manifest", str(reference))
            return True
        return False

    async def has_artifact(self, digest: Digest) -> bool:
        return await self.has_manifest(self.tier.manifest_store, artifact_tag(digest))

    async def tag(self, repo: str, tag: str, body: bytes, media_type: str) -> None:
        """The tag, pointing at the digest this node saw. IMMUTABLE: a tag that exists is
        left as it is (skipped cleanly: the digest is in the tier anyway)."""
        immutable = self.tier.repositories.settings.immutable
        if immutable and await self.tier.client.exists(repo, "manifests", tag):
            log.info("tier_tag_skipped", repository=repo, tag=tag, reason="immutable")
            return
        try:
            await self.tier.client.push_manifest(repo, tag, body, media_type)
        except errors.PullcacheError as exc:
            if not (immutable and any(code in str(exc) for code in TAG_REFUSED)):
                raise
            log.info("tier_tag_skipped", repository=repo, tag=tag, reason="immutable")
            return
        self._count("manifest")
        log.info("tier_tag_pushed", repository=repo, tag=tag)

    async def close(self) -> None:
        await self._flights.close()

    async def _once(self, key: tuple[str, str, str], fn: Callable[[], Awaitable[str]]) -> str:
        if key in self._present:
            return "present"
        result, _ = await self._flights.do(key, fn)
        return result

    def _remember(self, repo: str, kind: str, ref: str) -> None:
        if len(self._present) >= MAX_REMEMBERED:
            self._present.clear()
        self._present[(repo, kind, ref)] = None

    def _count(self, kind: str, outcome: str = "completed") -> None:
        if self._metrics is not None:
            self._metrics.tier_uploads.labels(kind, outcome).inc()
