"""Every background loop of the process, supervised the same way (``Loops``).

A loop is an ``async`` function that runs until it is cancelled. When it raises, the
supervisor logs ``task_failed`` with the traceback and starts it again after a backoff that
doubles from ``backoff`` up to ``max_backoff`` (a loop failing on every run neither spins nor
floods the log). A loop that has failed ``failing_after`` times in a row, and has not run
for ``healthy`` seconds since, is reported by ``failing()`` (``/readyz`` answers 503 with it).

A *vital* loop (the accept loop of a listening socket) is not restarted: when it ends for any
reason but cancellation, ``lost`` is set and the daemon exits non-zero, so that its service
manager starts a fresh process; a process that serves nothing must not live on (holding the
cache directory's lock, which would keep the restarted one out).

Every task started here has an owner (the one that called ``start``, and that cancels it
when its context ends), and ``stop`` cancels whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import structlog

log = structlog.get_logger("pullcache.tasks")


@dataclass
class _Loop:
    name: str
    vital: bool
    failures: int = 0              # in a row, without a healthy run between them
    error: str | None = None       # the last failure's
    run_since: float = field(default_factory=time.monotonic)


class Loops:
    def __init__(self, *, backoff: float = 1.0, max_backoff: float = 60.0,
                 failing_after: int = 3, healthy: float = 60.0) -> None:
        self.backoff, self.max_backoff = backoff, max_backoff
        self.failing_after, self.healthy = failing_after, healthy
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._loops: dict[asyncio.Task, _Loop] = {}

    def start(self, name: str, body: Callable[[], Awaitable[None]], *,
              vital: bool = False) -> asyncio.Task:
        """Run ``body()`` under supervision, as a task named ``name``; the caller owns the
        task (cancels it when done with it)."""
        loop = _Loop(name, vital)
        task = asyncio.create_task(self._supervise(loop, body), name=name)
        self._loops[task] = loop
        task.add_done_callback(self._loops.pop)
        return task

    def every(self, name: str, interval: float, step: Callable[[], Awaitable[None] | None], *,
              wait_first: bool = False) -> asyncio.Task:
        """``step()`` (a function or a coroutine function) every ``interval`` seconds, under
        supervision: a step that raises is logged and the loop resumes after the backoff."""
        async def body() -> None:
            if wait_first:
                await asyncio.sleep(interval)
            while True:
                if asyncio.iscoroutine(done := step()):
                    await done
                await asyncio.sleep(interval)
        return self.start(name, body)

    def failing(self) -> list[str]:
        """What ``/readyz`` reports: each loop that keeps failing, with its last error."""
        now = time.monotonic()
        return [f"background loop {loop.name!r} keeps failing ({loop.failures} times in a "
                f"row): {loop.error}" for loop in self._loops.values()
                if loop.failures >= self.failing_after and now - loop.run_since < self.healthy]

    async def stop(self) -> None:
        """Cancel every loop still running and wait for them to end."""
        tasks = list(self._loops)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _supervise(self, loop: _Loop, body: Callable[[], Awaitable[None]]) -> None:
        while True:
            loop.run_since = time.monotonic()
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the supervisor: logged, then restarted
                if time.monotonic() - loop.run_since >= self.healthy:
                    loop.failures = 0
                loop.failures += 1
                loop.error = f"{type(exc).__name__}: {exc}"
                log.error("task_failed", task=loop.name, failures=loop.failures,
                          exc_info=exc)
                if loop.vital:
                    self._lose(loop, loop.error)
                    return
            else:
                if loop.vital:
                    self._lose(loop, "it ended")
                return
            await asyncio.sleep(min(self.backoff * 2 ** (loop.failures - 1), self.max_backoff))

    def _lose(self, loop: _Loop, why: str) -> None:
        log.error("vital_task_lost", task=loop.name, error=why)
        if self.lost_reason is None:
            self.lost_reason = f"{loop.name}: {why}"
        self.lost.set()


__all__ = ["Loops"]
