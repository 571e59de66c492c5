"""The write-behind: what the origin gave us, pushed into the tier in the background.

- **Durable.** A job is in the ``Journal`` (cache dir) before a worker takes it and leaves it
  only once ECR confirmed the push; a restart resumes what a crash left (#13).
- **One upload per (repository, digest).** A manifest job pushes the blobs it references;
  the blobs' own jobs may be uploading them at that moment. Every job awaits the one flight
  for that pair (``uploads.Uploads``), which first asks ECR whether it is there; uploads count
  completed PUTs, ``pullcache_tier_writes`` counts jobs by outcome.
- **Every manifest shared.** An index's children go up with it, the ones this node never
  pulled fetched from the origin once (manifests, never layers). What ECR cannot hold as
  itself (layers or children not in the tier) is kept as an artifact (``Uploads.keep``); a
  node that reads such a manifest queues it again, and pushes it as itself once it can.
- What to do after a failure is the error's ``contract.Verdict``: RETRY with jittered
  exponential backoff (an open write breaker is waited out without spending an attempt),
  SKIP ends the job for good (a name ECR never takes: logged once), DENIED ends it until the
  next resync. ``close`` drains for ``drain_timeout`` and leaves the rest in the journal.
- **Failed jobs come back.** ``resync()``, run periodically by the app (``resync_interval``)
  and on demand (``pullcache tier sync``), queues the jobs that failed for good again once
  the write breaker is closed: content cached during an outage or an IAM mistake still
  reaches the tier.
- **The journal's failures never stop the queue.** A journal write that fails (a full
  disk) is logged, counted (``pullcache_tier_journal_failures``), and retried by the next
  resync; the job runs all the same, only not durably.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Protocol

import structlog

from .. import errors
from ..oci import INDEX_TYPES, Digest
from .contract import Tier, TierError, Verdict
from .content import Source, file_source, references
from .journal import MAX_FAILED, Job, Journal, JournalWrites, failure
from .report import report

log = structlog.get_logger("pullcache.tier")


class LocalContent(Protocol):
    """What the write-behind reads from this node (provided by the proxy)."""

    async def blob_path(self, digest: Digest) -> Path | None: ...
    async def manifest(self, digest: Digest) -> tuple[bytes, str] | None: ...

    async def origin_manifest(self, upstream: str, repo: str,
                              digest: Digest) -> tuple[bytes, str] | None:
        """Fetched from the origin by digest, verified and kept locally; None if it failed."""

    async def tag_digests(self, upstream: str, repo: str, tag: str) -> set[str]:
        """The digests this node's records of the tag hold now (empty: none yet)."""


@dataclass(slots=True)
class _Entry:
    job: Job
    state: str = "queued"      # admitting | queued | waiting | running
    attempt: int = 0
    waits: int = 0             # backoffs that spent no attempt (breaker open, throttled)
    error: str | None = None


class WriteBehind:
    def __init__(self, tier: Tier, local: LocalContent, journal: Journal | None = None,
                 *, concurrency: int = 4, retries: int = 5, drain_timeout: float = 30.0,
                 metrics=None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.tier = tier
        self.local = local
        self.journal = journal
        self.retries = retries
        self.drain_timeout = drain_timeout
        self._concurrency = concurrency
        self._metrics = metrics
        self._sleep = sleep
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._jobs: dict[str, _Entry] = {}
        self._failed_jobs: dict[str, dict] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self.uploads = tier.writes
        self._denied_logged: set[str] = set()
        self._skipped_logged: set[str] = set()
        self._record = JournalWrites(journal, metrics)
        self._workers: list[asyncio.Task] = []
        self._tasks: set[asyncio.Task] = set()

    async def open(self) -> "WriteBehind":
        """Resume what the journal holds, then start the workers."""
        if self.journal is not None:
            await asyncio.to_thread(self.journal.open)
            pending = await asyncio.to_thread(self.journal.pending)
            for item in await asyncio.to_thread(self.journal.failed):
                self._failed_jobs[Job.of(item).key] = item
            for job in pending:
                self._enqueue(_Entry(job))
            if pending:
                log.info("tier_queue_resumed", jobs=len(pending))
        self._workers = [asyncio.create_task(self._work(), name=f"write-behind-{i}")
                         for i in range(self._concurrency)]
        return self

    # -- what the proxy calls ---------------------------------------------------------------------

    def blob(self, upstream: str, repo: str, digest: Digest) -> None:
        self._submit(Job("blob", upstream, repo, str(digest)))

    def manifest(self, upstream: str, repo: str, digest: Digest, tag: str | None) -> None:
        self._submit(Job("manifest", upstream, repo, str(digest), tag, time.time()))

    def _submit(self, job: Job) -> None:
        if job.key in self._jobs:
            return
        entry = _Entry(job, "admitting")
        self._jobs[job.key] = entry
        self._empty.clear()
        self._gauge()
        self._spawn(self._admit(entry))

    async def _admit(self, entry: _Entry) -> None:
        try:
            await self._record("add", entry.job)   # on disk before any worker may take it
        finally:
            self._enqueue(entry)

    def _enqueue(self, entry: _Entry) -> None:
        entry.state = "queued"
        self._jobs[entry.job.key] = entry
        self._empty.clear()
        self._queue.put_nowait(entry)
        self._gauge()

    # -- the workers ------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            entry = await self._queue.get()
            entry.state = "running"
            try:
                await self._run(entry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the worker's supervisor: log, fail, go on
                log.exception("tier_write_crashed", kind=entry.job.kind, digest=entry.job.digest)
                await self._end(entry, "failed", error=repr(exc))

    async def _run(self, entry: _Entry) -> None:
        job = entry.job
        try:
            repo = self.tier.repository(job.upstream, job.repo)
            await self.uploads.prepare(repo)
            if job.kind == "blob":
                outcome = await self.uploads.blob(repo, Digest.parse(job.digest),
                                                  self._local_file(Digest.parse(job.digest)))
                # "gone": evicted locally before its turn; a later origin fill queues it again.
                outcome = "skipped" if outcome == "gone" else outcome
            else:
                outcome = await self._manifest_job(repo, entry)
        except TierError as exc:
            await self._failed(entry, exc)
            return
        except errors.PullcacheError as exc:   # this node's side (reading its cache)
            await self._failed(entry, TierError(Verdict.RETRY, str(exc)))
            return
        if outcome == "wait":
            self._later(entry, "references not in the tier yet")
        else:
            await self._end(entry, outcome)

    async def _failed(self, entry: _Entry, exc: TierError) -> None:
        """What the verdict says: wait and retry, skip for good, or end denied/failed."""
        job = entry.job
        where = f"{job.upstream}/{job.repo}"
        if exc.verdict == Verdict.RETRY and (not exc.sent or exc.throttled):
            # The write breaker is open (nothing was tried), or the tier asks to slow down:
            # back off, but spend no attempt: both pass, and the job must outlast them.
            self._later(entry, str(exc), at_least=exc.retry_after or 0.0, attempt=False)
        elif exc.verdict in (Verdict.RETRY, Verdict.MISSING) and entry.attempt < self.retries:
            self._later(entry, str(exc), at_least=exc.retry_after or 0.0)
        elif exc.verdict == Verdict.SKIP:
            if where not in self._skipped_logged:    # one line per repository
                self._skipped_logged.add(where)
                log.error("tier_write_skipped", upstream=job.upstream, repo=job.repo,
                          kind=job.kind, error=str(exc), retried=False)
            await self._end(entry, "skipped")
        elif exc.verdict == Verdict.DENIED:
            if where not in self._denied_logged and exc.action != "ecr:CreateRepository":
                self._denied_logged.add(where)   # (a denied CreateRepository is logged there)
                log.error("tier_write_denied", upstream=job.upstream, repo=job.repo,
                          kind=job.kind, error=str(exc), action=exc.action,
                          needs=list(self.uploads.needs))
            await self._end(entry, "denied", error=str(exc))
        else:
            log.warning("tier_write_failed", kind=job.kind, upstream=job.upstream,
                        repo=job.repo, digest=job.digest, error=str(exc),
                        verdict=str(exc.verdict), attempts=entry.attempt + 1)
            await self._end(entry, "failed", error=str(exc))

    # -- blobs ------------------------------------------------------------------------------------

    def _local_file(self, digest: Digest) -> Source:
        async def open_() -> AsyncIterator[bytes] | None:
            return file_source(await self.local.blob_path(digest))
        return open_

    # -- manifests --------------------------------------------------------------------------------

    async def _manifest_job(self, repo: str, entry: _Entry) -> str:
        job = entry.job
        digest = Digest.parse(job.digest)
        found = await self.local.manifest(digest)
        if found is None:
            return "skipped"   # evicted locally meanwhile: nothing to push
        patient = entry.attempt < self.retries   # the last attempt stores what it can
        outcome = await self._put_manifest(job.upstream, job.repo, repo, digest, *found,
                                           patient=patient)
        if job.tag and outcome in ("pushed", "present"):
            current = await self.local.tag_digests(job.upstream, job.repo, job.tag)
            if current and job.digest not in current:   # the node moved on since this job
                log.info("tier_tag_skipped", repository=repo, tag=job.tag,
                         reason="the node's view moved", digest=job.digest,
                         current=sorted(current))
            else:
                await self.uploads.tag(repo, job.tag, digest, *found, seen=job.seen)
        elif job.tag and outcome == "artifact":
            log.info("tier_tag_skipped", repository=repo, tag=job.tag,
                     reason="the manifest is kept as an artifact")
        return outcome

    async def _put_manifest(self, upstream: str, name: str, repo: str, digest: Digest,
                            body: bytes, media_type: str, *, patient: bool) -> str:
        """"pushed" | "present" (as itself in ``repo``), "artifact" (in the manifest store),
        or "wait" (this node is still fetching what it references)."""
        if await self.uploads.has_manifest(repo, digest):
            return "present"
        absent = waiting = False
        for kind, ref in references(body, media_type):
            if kind == "blobs":
                absent |= await self.uploads.blob(repo, ref, self._local_file(ref)) == "gone"
            else:
                child = await self._child(upstream, name, repo, ref, patient=patient)
                waiting |= child == "wait"
                absent |= child in ("artifact", "missing")
        if (absent or waiting) and not self.uploads.holds_incomplete:
            # A registry refuses it as itself until what it references is there.
            if media_type in INDEX_TYPES:
                # Readable by the fleet at once; pushed as itself later if its children get
                # there meanwhile (this node, or the node that pulls the missing platform).
                await self.uploads.keep(digest, body, media_type)
                return "wait" if patient else "artifact"
            # An image whose layers this node does not have (yet).
            return "wait" if patient else await self.uploads.keep(digest, body, media_type)
        # (An object store holds it as itself: what is missing comes from the origin.)
        try:
            return await self.uploads.manifest(repo, digest, body, media_type)
        except TierError as exc:
            if exc.verdict != Verdict.REFUSED:
                raise
            log.info("tier_manifest_refused", repository=repo, digest=str(digest),
                     error=str(exc))
            return await self.uploads.keep(digest, body, media_type)

    async def _child(self, upstream: str, name: str, repo: str, ref: Digest, *,
                     patient: bool) -> str:
        """An index's child, into the tier: from this node, else the origin (once)."""
        if await self.uploads.has_manifest(repo, ref):
            return "present"
        found = await self.local.manifest(ref)
        if found is None:
            if await self.uploads.has_artifact(ref):
                return "artifact"
            found = await self.local.origin_manifest(upstream, name, ref)
            if found is None:
                return "missing"
            patient = False   # no node pulled this platform: its layers are not coming
        return await self._put_manifest(upstream, name, repo, ref, *found, patient=patient)

    # -- bookkeeping ------------------------------------------------------------------------------

    def _later(self, entry: _Entry, reason: str, *, at_least: float = 0.0,
               attempt: bool = True) -> None:
        entry.state, entry.error = "waiting", reason
        step = entry.attempt + entry.waits
        delay = max(min(0.5 * 2 ** step, 30.0) * random.uniform(0.5, 1.5), at_least)
        if attempt:
            entry.attempt += 1
        else:
            entry.waits += 1

        async def requeue() -> None:
            await self._sleep(delay)
            self._enqueue(entry)
        self._spawn(requeue())

    async def _end(self, entry: _Entry, outcome: str, *, error: str | None = None) -> None:
        """Acknowledge (the journal forgets it) or record the failure; then count it."""
        job = entry.job
        if error is None:
            self._failed_jobs.pop(job.key, None)
            await self._record("ack", job)
        else:
            self._failed_jobs[job.key] = failure(job, error)
            while len(self._failed_jobs) > MAX_FAILED:   # the oldest first, as in the journal
                self._failed_jobs.pop(next(iter(self._failed_jobs)))
            await self._record("fail", job, error)
        self._jobs.pop(job.key, None)
        if not self._jobs:
            self._empty.set()
        if self._metrics is not None:
            self._metrics.tier_writes.labels(job.kind, outcome).inc()
        self._gauge()

    # -- resync -----------------------------------------------------------------------------------

    async def resync(self, *, now: bool = False) -> int:
        """Retry the journal operations that failed, and queue the jobs that failed for good
        again (not while the write breaker is open: their cause has not cleared). ``now``:
        the operator asked (``pullcache tier sync``), and says the cause cleared: denials
        are forgotten and the breaker is not waited for. Returns the jobs queued."""
        await self._record.retry()
        if now:
            self.uploads.forgive()
        elif self.tier.write_breaker.is_open:
            return 0
        again = [item for key, item in self._failed_jobs.items() if key not in self._jobs]
        for item in again:
            self._failed_jobs.pop(Job.of(item).key, None)
            self._submit(Job.of(item))
        if again:
            log.info("tier_failed_requeued", jobs=len(again))
        return len(again)

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.tier_queue.set(len(self._jobs))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def breakers(self) -> dict:
        """The tier's state as ``/readyz`` and the status page show it: its breakers
        ("closed", "open", "half-open") and whether it takes writes."""
        def state(breaker) -> str:
            return breaker.state.name.lower().replace("_", "-")
        return {"name": self.tier.name, "read_breaker": state(self.tier.read_breaker),
                "write_breaker": state(self.tier.write_breaker),
                "writes": self.uploads.status()}

    def status(self) -> dict:
        """The queue per repository, JSON-able: pending, in flight, failed with the error;
        the shape ``report.report`` gives both this and the offline ``tier status``."""
        return report(
            enabled=True, name=self.tier.repository,
            jobs=((e.job.upstream, e.job.repo, e.state == "running")
                  for e in self._jobs.values()),
            failed=self._failed_jobs.values(),
            repositories={n: {"state": state} for n, state in self.uploads.status().items()})

    # -- lifecycle --------------------------------------------------------------------------------

    async def idle(self) -> None:
        """Wait until every job ended (tests, drain)."""
        await self._empty.wait()

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.drain_timeout):
                await self.idle()
        except TimeoutError:
            log.warning("tier_drain_timed_out", pending=len(self._jobs),
                        kept_for_next_start=self.journal is not None)
        tasks = [*self._workers, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._record.retry()   # one last try
        await self.uploads.close()
        if self.journal is not None:
            await asyncio.to_thread(self.journal.close)

