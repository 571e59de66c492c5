"""The ECR backing tier: read before the origin, write back after it.

The mirror of ``<upstream>/<repo>`` lives at ``<prefix>/<upstream>/<repo>`` in one ECR
registry shared by a fleet (``ecr.repository_name``). Reads go over the registry API with
ECR's Basic credentials; blobs come back through a fill that verifies them before any client
sees a byte. Writes run behind the client's response (``WriteBehind``): a failed write only
costs a later origin fetch. The proxy decides when to use either.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Protocol

import structlog

from .. import errors
from ..oci import DEFAULT_ACCEPT, DOCKER_V1, DOCKER_V1_SIGNED, INDEX_TYPES, Digest
from ..upstream.client import BlobStream, Manifest, RegistryClient
from .ecr import EcrApi, repository_name

log = structlog.get_logger("pullcache.tier")
PUSH_CHUNK = 8 * 1024 * 1024   # ECR wants upload parts of 5 MiB or more (but the last)


class LocalContent(Protocol):
    """What the write-behind reads from the local cache (provided by the proxy)."""

    async def blob_path(self, digest: Digest) -> Path | None: ...
    async def manifest(self, digest: Digest) -> tuple[bytes, str] | None: ...


class EcrTier:
    def __init__(self, api: EcrApi, client: RegistryClient, prefix: str) -> None:
        self.api = api
        self.client = client
        self.prefix = prefix

    def repository(self, upstream: str, repo: str) -> str:
        return repository_name(self.prefix, upstream, repo)

    async def open_blob(self, upstream: str, repo: str, digest: Digest) -> BlobStream:
        return await self.client.open_blob(self.repository(upstream, repo), digest)

    async def get_manifest(self, upstream: str, repo: str, digest: Digest) -> Manifest:
        return await self.client.get_manifest(self.repository(upstream, repo), str(digest),
                                              DEFAULT_ACCEPT + (DOCKER_V1_SIGNED, DOCKER_V1))


@dataclass(frozen=True, slots=True)
class _Job:
    kind: str                  # "blob" | "manifest"
    upstream: str
    repo: str
    digest: Digest
    tag: str | None = None
    attempt: int = 0


class WriteBehind:
    """Pushes what the origin gave us into the tier, in the background, boundedly.

    ``write_concurrency`` workers take jobs from a queue; throttling and 5xx are retried with
    jittered exponential backoff; a manifest waits (requeued) until the blobs or child
    manifests it references are in the tier, pushing the ones the local cache holds.
    ``close`` drains the queue for ``drain_timeout`` seconds, then cancels.
    """

    def __init__(self, tier: EcrTier, local: LocalContent, *, concurrency: int = 4,
                 retries: int = 5, drain_timeout: float = 30.0, metrics=None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.tier = tier
        self.local = local
        self.retries = retries
        self.drain_timeout = drain_timeout
        self._metrics = metrics
        self._sleep = sleep
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._pending: set[tuple[str, str, str]] = set()
        self._workers = [asyncio.create_task(self._work(), name=f"write-behind-{i}")
                         for i in range(concurrency)]
        self._delayed: set[asyncio.Task] = set()

    # -- what the proxy calls ---------------------------------------------------------------------

    def blob(self, upstream: str, repo: str, digest: Digest) -> None:
        self._submit(_Job("blob", upstream, repo, digest))

    def manifest(self, upstream: str, repo: str, digest: Digest, tag: str | None) -> None:
        self._submit(_Job("manifest", upstream, repo, digest, tag))

    def _submit(self, job: _Job) -> None:
        key = (job.kind, self.tier.repository(job.upstream, job.repo), f"{job.digest}{job.tag}")
        if key in self._pending:
            return
        self._pending.add(key)
        self._queue.put_nowait(job)
        self._gauge()

    # -- the workers ------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the worker's supervisor: log, drop, carry on
                log.exception("tier_write_crashed", kind=job.kind, digest=str(job.digest))
                self._done(job, "failed")
            finally:
                self._queue.task_done()
                self._gauge()

    async def _run(self, job: _Job) -> None:
        repo = self.tier.repository(job.upstream, job.repo)
        try:
            await self.tier.api.ensure_repository(repo)
            if job.kind == "blob":
                pushed = await self._push_blob(repo, job.digest)
                # False: evicted locally before its turn; a later origin fill queues it again.
                self._done(job, "pushed" if pushed else "skipped")
            elif await self._push_manifest(repo, job):
                self._done(job, "pushed")
            else:
                self._later(job, reason="references not in the tier yet")
        except errors.PullcacheError as exc:
            retryable = isinstance(exc, errors.UPSTREAM_FAILURES)
            if retryable and job.attempt < self.retries:
                self._later(job, reason=str(exc))
            else:
                log.warning("tier_write_failed", kind=job.kind, repository=repo,
                            digest=str(job.digest), error=str(exc), attempts=job.attempt + 1)
                self._done(job, "failed")

    async def _push_blob(self, repo: str, digest: Digest) -> bool:
        """Push one blob from the local cache; False if the cache no longer has it."""
        if await self.tier.client.exists(repo, "blobs", digest):
            return True
        path = await self.local.blob_path(digest)
        if path is None:
            return False
        await self.tier.client.push_blob(repo, digest, _file_chunks(path))
        log.info("tier_blob_pushed", repository=repo, digest=str(digest))
        return True

    async def _push_manifest(self, repo: str, job: _Job) -> bool:
        """Push a manifest once everything it references is in the tier."""
        found = await self.local.manifest(job.digest)
        if found is None:
            return True   # evicted locally meanwhile: nothing to push, nothing to wait for
        body, media_type = found
        if not await self.tier.client.exists(repo, "manifests", job.digest):
            for kind, ref in _references(body, media_type):
                if await self.tier.client.exists(repo, kind, ref):
                    continue
                if kind == "blobs" and await self._push_blob(repo, ref):
                    continue
                if kind == "manifests" and await self.local.manifest(ref) is not None:
                    self.manifest(job.upstream, job.repo, ref, None)
                return False
            await self.tier.client.push_manifest(repo, str(job.digest), body, media_type)
        if job.tag:
            await self.tier.client.push_manifest(repo, job.tag, body, media_type)
        log.info("tier_manifest_pushed", repository=repo, digest=str(job.digest), tag=job.tag)
        return True

    def _later(self, job: _Job, *, reason: str) -> None:
        if job.attempt >= self.retries:
            log.info("tier_write_abandoned", kind=job.kind, digest=str(job.digest),
                     reason=reason)
            self._done(job, "abandoned")
            return
        delay = min(0.5 * 2 ** job.attempt, 30.0) * random.uniform(0.5, 1.5)

        async def requeue() -> None:
            await self._sleep(delay)
            self._queue.put_nowait(_Job(job.kind, job.upstream, job.repo, job.digest, job.tag,
                                        job.attempt + 1))
            self._gauge()
        task = asyncio.create_task(requeue())
        self._delayed.add(task)
        task.add_done_callback(self._delayed.discard)

    def _done(self, job: _Job, outcome: str) -> None:
        self._pending.discard((job.kind, self.tier.repository(job.upstream, job.repo),
                               f"{job.digest}{job.tag}"))
        if self._metrics is not None:
            self._metrics.tier_writes.labels(job.kind, outcome).inc()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.tier_queue.set(self._queue.qsize() + len(self._delayed))

    # -- lifecycle --------------------------------------------------------------------------------

    async def idle(self) -> None:
        """Wait until nothing is queued or waiting for a retry (tests, drain)."""
        while True:
            await self._queue.join()
            if not self._delayed:
                return
            await asyncio.gather(*list(self._delayed), return_exceptions=True)

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.drain_timeout):
                await self.idle()
        except TimeoutError:
            log.warning("tier_drain_timed_out", queued=self._queue.qsize())
        for task in [*self._workers, *self._delayed]:
            task.cancel()
        await asyncio.gather(*self._workers, *self._delayed, return_exceptions=True)


def _references(body: bytes, media_type: str) -> list[tuple[str, Digest]]:
    """What a manifest points at: child manifests of an index, else config and layers."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if media_type in INDEX_TYPES:
        return [("manifests", Digest.parse(m["digest"])) for m in doc.get("manifests", [])]
    descs = ([doc["config"]] if isinstance(doc.get("config"), dict) else []) + \
        list(doc.get("layers", []))
    return [("blobs", Digest.parse(d["digest"])) for d in descs if "digest" in d]


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with await asyncio.to_thread(open, path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, PUSH_CHUNK):
            yield chunk
