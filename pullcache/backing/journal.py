"""The write-behind's durable queue: pending pushes on disk in the cache dir (#13).

A job is written here before a worker may take it, and removed (acknowledged) only after
ECR confirmed the push, so a crash or an OOM kill loses no queued push: the next start
resumes every pending job. Jobs that failed for good are kept (bounded) with their last
error, for ``pullcache tier status`` and the admin API.

diskcache (SQLite) is safe across processes, so the CLI reads it while the daemon runs.
Every ``Journal`` method blocks; the write-behind calls them through ``JournalWrites``, off
the event loop, which survives their failures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import diskcache
import structlog

log = structlog.get_logger("pullcache.tier")

MAX_FAILED = 1000
JOURNAL_DIR = "tier-queue"   # under the cache root


@dataclass(frozen=True, slots=True)
class Job:
    kind: str                  # "blob" | "manifest"
    upstream: str
    repo: str
    digest: str
    tag: str | None = None
    seen: float = 0.0          # wall clock: when the node saw the tag at this digest

    @property
    def key(self) -> str:
        return f"{self.kind} {self.upstream}/{self.repo}@{self.digest}" + \
            (f" :{self.tag}" if self.tag else "")

    @classmethod
    def of(cls, record: dict) -> "Job":
        """The job of a pending or failed record (which add their own keys)."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


def failure(job: Job, error: str) -> dict:
    """A failed job as the journal keeps it and ``status()`` reports it."""
    return {**asdict(job), "error": error, "at": time.time()}


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pending: diskcache.Index | None = None
        self._failed: diskcache.Index | None = None
        self._settling: diskcache.Index | None = None

    def open(self) -> "Journal":
        self.directory.mkdir(parents=True, exist_ok=True)
        self._pending = diskcache.Index(str(self.directory / "pending"))
        self._failed = diskcache.Index(str(self.directory / "failed"))
        self._settling = diskcache.Index(str(self.directory / "settling"))
        return self

    def close(self) -> None:
        for index in (self._pending, self._failed, self._settling):
            if index is not None:
                index.cache.close()

    def add(self, job: Job) -> None:
        self._pending[job.key] = {**asdict(job), "since": time.time()}

    def ack(self, job: Job) -> None:
        """ECR confirmed the job (or it has nothing left to do): forget it."""
        self._pending.pop(job.key, None)
        self._failed.pop(job.key, None)

    def fail(self, job: Job, error: str) -> None:
        """Failed for good: no longer pending, kept with its error (the oldest dropped)."""
        self._pending.pop(job.key, None)
        self._failed[job.key] = failure(job, error)
        while len(self._failed) > MAX_FAILED:
            self._failed.popitem(last=False)

    def requeue(self) -> int:
        """Every job that failed for good, pending again (for the next start): how many."""
        moved = 0
        for key, item in list(self._failed.items()):
            self.add(Job.of(item))
            self._failed.pop(key, None)
            moved += 1
        return moved

    def settling(self, name: str, pending: bool) -> None:
        """A tier repository whose settings are being applied (``pending``), or are done."""
        if pending:
            self._settling[name] = time.time()
        else:
            self._settling.pop(name, None)

    def unsettled(self) -> set[str]:
        """The repositories created whose settings a crash may have left unfinished."""
        return set(self._settling.keys())

    def pending(self) -> list[Job]:
        return [Job.of(item) for item in self._pending.values()]

    def failed(self) -> list[dict]:
        return list(self._failed.values())


class JournalWrites:
    """The write-behind's journal operations, off the event loop. One that fails (a full
    disk) is logged, counted (``pullcache_tier_journal_failures``) and kept, the latest per
    job, for ``retry``; it is never raised: the queue goes on, only not durably."""

    def __init__(self, journal: Journal | None, metrics=None) -> None:
        self.journal = journal
        self._metrics = metrics
        self.backlog: dict[str, tuple[str, tuple]] = {}   # job key → (operation, arguments)

    async def __call__(self, op: str, job: Job, *args) -> None:
        if self.journal is None:
            return
        try:
            await asyncio.to_thread(getattr(self.journal, op), job, *args)
        except Exception as exc:  # noqa: BLE001 - diskcache/SQLite/OSError: the disk's trouble
            self.backlog[job.key] = (op, (job, *args))
            log.warning("tier_journal_failed", op=op, kind=job.kind, digest=job.digest,
                        error=repr(exc), retried="at the next resync")
            if self._metrics is not None:
                self._metrics.tier_journal_failures.labels(op).inc()
            return
        self.backlog.pop(job.key, None)

    async def retry(self) -> None:
        """Each operation that failed, once more."""
        for op, args in list(self.backlog.values()):
            await self(op, *args)
