"""Uploads into the ECR tier (``contract.TierWrites``): one flight per (repository, digest)
that every job awaits, what is known to be there remembered for a while, and every completed
PUT counted (``pullcache_tier_uploads``).

Before this, a manifest job pushed the blobs it referenced while the blobs' own jobs were
uploading them: the existence check said "missing", so the same blob went up twice.

Every registry error leaves here as a ``contract.TierError``. NAME_UNKNOWN on a push means
the repository went away (deleted outside pullcache): it is forgotten, so the retry creates it.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

import structlog

from .. import errors
from ..oci import OCI_MANIFEST, Digest
from ..singleflight import SingleFlight
from ..upstream.client import RegistryClient
from .contract import Source, TierError, Verdict, verdict_of
from .content import EMPTY, artifact, artifact_tag, bytes_source
from .repositories import Repositories

log = structlog.get_logger("pullcache.tier")
MAX_REMEMBERED = 100_000
PRESENT_TTL = 3600.0   # seconds content is known to be in the tier (a lifecycle rule expires it)


class Uploads:
    holds_incomplete = False   # ECR refuses a manifest whose layers or children it lacks
    needs = ("ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload",
             "ecr:PutImage")

    def __init__(self, client: RegistryClient, repositories: Repositories, manifest_store: str,
                 metrics=None, *, ttl: float = PRESENT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.repositories = repositories
        self.manifest_store = manifest_store
        self._metrics = metrics
        self.ttl = ttl
        self._clock = clock
        self._flights: SingleFlight[str] = SingleFlight()
        self._present: dict[tuple[str, str, str], float] = {}   # known in the tier, since
        # (repo, tag) -> when the view of the tag this node pushed last was seen (wall clock)
        self._tags: dict[tuple[str, str], float] = {}

    async def prepare(self, repo: str) -> None:
        await self.repositories.ensure(repo)

    async def blob(self, repo: str, digest: Digest, source: Source) -> str:
        """"pushed" or "present": the blob is in ``repo``; "gone": the source lost it."""
        async def once() -> str:
            if await self._exists(repo, "blobs", digest):
                self._remember(repo, "blob", str(digest))
                return "present"
            chunks = await source()
            if chunks is None:
                return "gone"
            try:
                await self._call(repo, self.client.push_blob(repo, digest, chunks))
            except FileNotFoundError:   # evicted while it was being read
                return "gone"
            except TierError:
                self._count("blob", "failed")
                raise
            self._count("blob")
            self._remember(repo, "blob", str(digest))
            log.info("tier_blob_pushed", repository=repo, digest=str(digest))
            return "pushed"
        return await self._once((repo, "blob", str(digest)), once)

    async def manifest(self, repo: str, digest: Digest, body: bytes, media_type: str) -> str:
        """PUT the manifest by digest ("pushed"); ``Verdict.REFUSED`` if ECR will not."""
        async def put() -> str:
            await self._call(repo, self.client.push_manifest(repo, str(digest), body,
                                                             media_type))
            self._count("manifest")
            self._remember(repo, "manifest", str(digest))
            log.info("tier_manifest_pushed", repository=repo, digest=str(digest))
            return "pushed"
        return await self._once((repo, "manifest", str(digest)), put)

    async def keep(self, digest: Digest, body: bytes, media_type: str) -> str:
        """Store a manifest as an artifact in the manifest store, readable by digest, its
        media type in the artifact's layer descriptor."""
        store, tag = self.manifest_store, artifact_tag(digest)

        async def keep() -> str:
            await self.repositories.ensure(store)
            if await self._exists(store, "manifests", tag):
                self._remember(store, "manifest", tag)
                return "artifact"
            await self.blob(store, Digest.of(EMPTY), bytes_source(EMPTY))
            await self.blob(store, digest, bytes_source(body))
            await self._call(store, self.client.push_manifest(
                store, tag, artifact(body, media_type, digest), OCI_MANIFEST))
            self._count("manifest")
            self._remember(store, "manifest", tag)
            log.info("tier_manifest_stored", repository=store, digest=str(digest),
                     kind="artifact")
            return "artifact"
        await self._once((store, "manifest", tag), keep)
        return "artifact"

    async def has_manifest(self, repo: str, reference: Digest | str) -> bool:
        if self._known(repo, "manifest", str(reference)):
            return True
        if await self._exists(repo, "manifests", reference):
            self._remember(repo, "manifest", str(reference))
            return True
        return False

    async def has_artifact(self, digest: Digest) -> bool:
        return await self.has_manifest(self.manifest_store, artifact_tag(digest))

    async def tag(self, repo: str, tag: str, digest: Digest, body: bytes, media_type: str,
                  seen: float) -> str:
        """The tag, pointing at the digest this node saw at ``seen``: "pushed", or "skipped"
        when this node already pushed a view of the tag seen later (a retried or replayed
        job never moves it back), or IMMUTABLE and the tag exists (the digest is in the
        tier anyway)."""
        key = (repo, tag)
        if self._tags.get(key, 0.0) > seen:
            log.info("tier_tag_skipped", repository=repo, tag=tag, reason="newer view pushed")
            return "skipped"
        immutable = self.repositories.settings.immutable
        if immutable and await self._exists(repo, "manifests", tag):
            log.info("tier_tag_skipped", repository=repo, tag=tag, reason="immutable")
            return "skipped"
        try:
            await self._call(repo, self.client.push_manifest(repo, tag, body, media_type))
        except TierError as exc:
            if not (immutable and exc.remote_code == "TAG_INVALID"):
                raise
            log.info("tier_tag_skipped", repository=repo, tag=tag, reason="immutable")
            return "skipped"
        self._tags[key] = max(self._tags.get(key, 0.0), seen)
        if len(self._tags) > MAX_REMEMBERED:
            self._tags.pop(next(iter(self._tags)))
        self._count("manifest")
        log.info("tier_tag_pushed", repository=repo, tag=tag, digest=str(digest), seen=seen)
        return "pushed"

    def forget(self, repo: str, kind: str, ref: str) -> None:
        """The tier answered that it lacks this (lifecycle expired it): push it again."""
        self._present.pop((repo, kind, ref), None)

    def status(self) -> dict[str, str]:
        return self.repositories.status()

    def forgive(self) -> None:
        self.repositories.forgive()

    async def close(self) -> None:
        await self._flights.close()
        await self.repositories.close()

    async def _exists(self, repo: str, kind: str, ref: Digest | str) -> bool:
        return await self._call(repo, self.client.exists(repo, kind, ref))

    async def _call(self, repo: str, request: Awaitable):
        try:
            return await request
        except errors.PullcacheError as exc:
            if isinstance(exc, errors.NameUnknown):
                self.repositories.forget(repo)
                raise TierError(Verdict.RETRY, f"{repo}: {exc}") from exc
            raise verdict_of(exc, writing=True) from exc

    async def _once(self, key: tuple[str, str, str], fn: Callable[[], Awaitable[str]]) -> str:
        if self._known(*key):
            return "present"
        result, _ = await self._flights.do(key, fn)
        return result

    def _known(self, repo: str, kind: str, ref: str) -> bool:
        at = self._present.get((repo, kind, ref))
        if at is None:
            return False
        if self._clock() - at >= self.ttl:
            del self._present[(repo, kind, ref)]
            return False
        return True

    def _remember(self, repo: str, kind: str, ref: str) -> None:
        if len(self._present) >= MAX_REMEMBERED:
            self._present.pop(next(iter(self._present)))
        self._present[(repo, kind, ref)] = self._clock()

    def _count(self, kind: str, outcome: str = "completed") -> None:
        if self._metrics is not None:
            self._metrics.tier_uploads.labels(kind, outcome).inc()
