"""Background jobs the admin API starts and callers poll: warm, verify.

``Jobs`` owns every task (the app's cleanup_ctx closes it, cancelling what still runs) and
keeps the last finished jobs for their callers to read.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Awaitable, Callable

import structlog

log = structlog.get_logger("pullcache.jobs")
KEEP_FINISHED = 50


def describe(exc: BaseException) -> str:
    """A crashed job's ``error``: what an operator reads, never empty."""
    return str(exc) or exc.__class__.__name__


class Job:
    def __init__(self, id_: str, kind: str, describe: Callable[[], dict]) -> None:
        self.id = id_
        self.kind = kind
        self.state = "running"          # running | done | failed | cancelled
        self.error: str | None = None
        self.created = time.time()
        self.ended: float | None = None
        self._describe = describe

    def snapshot(self) -> dict:
        return {"id": self.id, "kind": self.kind, "state": self.state, "error": self.error,
                "created": self.created, "ended": self.ended, **self._describe()}


def _never_ran(job: Job) -> None:
    """A task cancelled before its first step never enters ``_supervise``: it ends too."""
    if job.state == "running":
        job.state, job.ended = "cancelled", time.time()


class Jobs:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task] = set()
        self._ids = itertools.count(1)

    def start(self, kind: str, run: Callable[[], Awaitable[bool]],
              describe: Callable[[], dict]) -> Job:
        """Run ``run`` (True: every part succeeded) as an owned task."""
        job = Job(f"{kind}-{next(self._ids)}", kind, describe)
        self._jobs[job.id] = job
        task = asyncio.create_task(self._supervise(job, run), name=f"job {job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: _never_ran(job))
        self._trim()
        return job

    async def _supervise(self, job: Job, run: Callable[[], Awaitable[bool]]) -> None:
        try:
            ok = await run()
            job.state = "done" if ok else "failed"
        except asyncio.CancelledError:
            job.state = "cancelled"
            raise
        except Exception as exc:  # noqa: BLE001 - the job's supervisor: report, not crash
            log.exception("job_crashed", job=job.id)
            job.state, job.error = "failed", describe(exc)
        finally:
            job.ended = time.time()
            log.info("job_ended", job=job.id, state=job.state)

    def get(self, id_: str) -> Job | None:
        return self._jobs.get(id_)

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def running(self, kind: str) -> list[Job]:
        return [j for j in self._jobs.values() if j.kind == kind and j.state == "running"]

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.state != "running"]
        for job in finished[:-KEEP_FINISHED]:
            del self._jobs[job.id]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
