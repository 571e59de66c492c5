"""Room in the cache: bytes reserved for fills in progress, and the LRU eviction that keeps
the index's volume under the budget's high watermark (down to the low one)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Callable

import structlog

from ..errors import StorageError
from .budget import Budget, Reservation
from .hot import HotLayer
from .index import Index
from .passthrough import as_oserror

log = structlog.get_logger("pullcache.cache")


class Room:
    """The budget applied to a store's index. Both are the store's, read at each use: the
    index opens after this is made, and the budget shrinks to a smaller disk
    (``disk.Disk``)."""

    def __init__(self, budget: Callable[[], Budget], hot: HotLayer, index: Callable[[], Index],
                 on_evict: Callable[[int, int], None] | None = None) -> None:
        self._budget = budget
        self._hot = hot
        self._index = index
        self.reserved = 0  # bytes promised to fills in progress
        # The index's volume as last measured, plus every reservation released since (its
        # bytes committed, or not: then an overcount, until the next measure). Below the
        # high watermark by this count, a reservation needs no eviction, so no thread: the
        # first byte of a cold blob does not wait for one.
        self._volume: int | None = None
        self.evicted_bytes = 0
        # Making room and reserving are one step under this lock (else concurrent fills
        # each see room for themselves and overshoot together); ``_released`` wakes a fill
        # waiting for in-flight reservations to end.
        self._lock = asyncio.Lock()
        self._released = asyncio.Event()
        self._on_evict = on_evict or (lambda n, nbytes: None)

    async def reserve(self, nbytes: int) -> Reservation:
        """Make room for ``nbytes`` and count them against the budget, as one step.

        While fills in progress hold so much that even after eviction ``nbytes`` would not
        fit in ``max_size``, wait for one of them to end. A fill alone is never kept waiting
        (a blob bigger than the cache, or a cache full of pinned files, still goes through).
        """
        while True:
            async with self._lock:
                if self._volume is not None and \
                        self._volume + self.reserved + nbytes <= self._budget().high:
                    self.reserved += nbytes
                    return Reservation(self._unreserve, nbytes)
                released = self._released
                volume = await self._make_room(nbytes)
                fits = volume + self.reserved + nbytes <= self._budget().max_size
                if self.reserved == 0 or fits:
                    self.reserved += nbytes
                    return Reservation(self._unreserve, nbytes)
            log.info("cache_full_waited", bytes=nbytes, reserved=self.reserved)
            await released.wait()

    async def grow(self, reservation: Reservation, nbytes: int) -> None:
        """Count ``nbytes`` more for a fill whose source announced no length, having made
        room for them. Never waits for other fills (they may be growing too, each waiting
        for the other to end); the bytes are counted even if the index cannot evict now."""
        async with self._lock:
            if not reservation.held:
                return                      # released meanwhile: nothing to count
            self.reserved += nbytes
            reservation.nbytes += nbytes
            await self._make_room(0)

    def added(self, nbytes: int) -> None:
        """``nbytes`` committed without a reservation (a manifest): counted until the next
        measure."""
        if self._volume is not None:
            self._volume += nbytes

    def _unreserve(self, nbytes: int) -> None:
        self.reserved -= nbytes
        self.added(nbytes)
        released, self._released = self._released, asyncio.Event()
        released.set()

    async def make_room(self, incoming: int = 0) -> int:
        """Evict LRU entries when usage would pass the high watermark; return bytes freed.

        Eviction goes down to the low watermark, less what fills in progress will add.
        Files a response is serving are unlinked once it ends (``BlobStore.release``).
        """
        async with self._lock:
            before = self.evicted_bytes
            await self._make_room(incoming)
            return self.evicted_bytes - before

    async def _make_room(self, incoming: int) -> int:
        """(under the budget lock) Flush recency, evict if needed; return the volume after."""
        reserved = self.reserved
        touches = self._hot.take_touches()   # the LRU order is flushed recency plus these

        def _evict() -> tuple[int, int, int]:
            index = self._index()
            before = index.volume()
            if before + reserved + incoming <= self._budget().high:
                self._hot.forget(index.touch(touches))
                return 0, 0, before
            freed = index.evict_to(self._budget().low - reserved - incoming, touches)
            after = index.volume()
            return len(freed), max(before - after, 0), after
        try:
            count, nbytes, volume = await asyncio.to_thread(_evict)
        except (OSError, sqlite3.Error) as exc:   # a read-only or removed index: these
            raise StorageError(f"index: {exc}") from as_oserror(exc)   # uses are lost
        if count:
            log.info("cache_evicted", files=count, bytes=nbytes)
            self.evicted_bytes += nbytes
            self._on_evict(count, nbytes)
        self._volume = volume
        return volume
