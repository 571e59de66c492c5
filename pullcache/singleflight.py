"""Keyed coalescing of concurrent calls: N callers with one key share one execution."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Run ``fn`` once per key at a time; concurrent callers await the same result.

    The work runs in its own task, so a caller that is cancelled (a client that hung up)
    does not cancel the work for the others. The result is not memoised: once the
    flight lands, the next call starts a new one.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Task[T]] = {}

    def in_flight(self, key: Hashable) -> bool:
        return key in self._flights

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]], *,
                 on_join: Callable[[], None] | None = None) -> tuple[T, bool]:
        """Return ``(result, joined)``; ``joined`` is True for callers that did not start it
        (``on_join`` is called for them at once, while the flight is still in the air)."""
        task = self._flights.get(key)
        joined = task is not None
        if joined and on_join is not None:
            on_join()
        if task is None:
            task = asyncio.ensure_future(fn())
            self._flights[key] = task
            task.add_done_callback(lambda t, k=key: self._land(k, t))
        return await asyncio.shield(task), joined

    def _land(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: every caller got it already

    async def close(self) -> None:
        tasks = list(self._flights.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
