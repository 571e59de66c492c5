"""A fill's disk side: one thread that writes its chunks, in order, behind a bounded queue,
and hands them to the fill's ``digester.Digester`` (its own thread) to be hashed.

The event loop reads the source and hands each chunk over without waiting for the disk
(``write`` only waits when ``limit`` bytes are already queued: backpressure). The thread
reports progress back to the loop at most once per loop iteration (``on_progress`` gets the
bytes written so far), so a fast download costs the loop a handful of wake-ups, not one per
chunk. ``finish`` waits for the queue to drain and the digester to catch up, and returns the
digest's hex.

Or the thread reads the source itself (``drain``: an upstream socket, ``upstream.socket_body``)
and the loop sees no chunk at all, only the progress reports. Such a source may fill a
chunk's buffer again ``source.ring`` reads later: the thread lets the digester fall at most
``ring - 1`` chunks behind before it takes the next.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import Callable, Iterable

from .digester import Digester
from .riders import Riders

Chunk = bytes | memoryview
# A source the thread reads itself: ``(chunk, more)`` pairs; ``more``: the source is ahead
# of us (no need to wake readers for this chunk alone). Its exceptions are the source's. A
# chunk's buffer may be filled again ``ring`` chunks later (the source's attribute), not sooner.
Drain = Iterable[tuple[Chunk, bool]]
Sink = Callable[[int, Chunk], None]
LIMIT = 4 << 20         # bytes queued at most (chunks of up to 1 MiB; see upstream/receiver.py)
BEHIND = 2              # queued chunks (immutable) the digester may be behind the writer
WRITE_SLICE = 1 << 20   # bytes per write(2): larger ones ask the page cache for larger folios,
                        # which fresh memory in a VM can make far slower (docs/benchmarks.md,
                        # "The cold fill")


class WriterFailed(Exception):
    """The thread could not write (its ``OSError`` is the cause)."""


class Writer:
    def __init__(self, fd: int, hasher, on_progress: Callable[[int], None], *,
                 limit: int = LIMIT, sink: Sink | None = None,
                 fallback: Callable[[OSError, int], Sink] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._digester = Digester(hasher)
        self.riders = Riders()     # readers the thread sends each chunk to (``riders.py``)
        self._on_progress = on_progress
        self._queue: queue.SimpleQueue[Chunk | _Drained | None] = queue.SimpleQueue()
        self._limit = limit
        self._room: asyncio.Future[None] | None = None   # a write waiting for the queue
        self._done = self._loop.create_future()
        # Written by the thread, read by the loop (int stores are atomic under the GIL).
        self._written = 0
        self._taken = 0            # bytes the thread is done with (written, or dropped)
        self._put = 0              # loop side: bytes handed over ...
        self._freed = 0            # ... and reported taken (their room given back)
        self._reported = threading.Event()   # set: no progress callback is pending
        self._reported.set()
        self._error: OSError | None = None
        self._draining = False
        self._behind = False       # a drained source is ahead of the thread
        # ``sink(offset, chunk)``: where chunks go instead of ``fd`` (a pass-through window),
        # from the start or from when ``fallback(exc, offset)`` (called in this thread on a
        # refused write) returns one; a fallback that cannot take over re-raises ``exc``.
        self._sink = sink
        if sink is not None:
            self.riders.close()    # (a window's readers read the window, never ride)
        self._fallback = fallback
        self._thread = threading.Thread(target=self._run, name="fill-writer", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        return self._written

    async def write(self, chunk: Chunk) -> None:
        self._raise_if_failed()
        while self._put - self._freed >= self._limit:
            self._room = self._loop.create_future()
            await self._room
            self._raise_if_failed()
        self._put += len(chunk)
        self._queue.put(chunk)

    def drain(self, source: Drain, step: int) -> "asyncio.Future[None]":
        """The thread reads ``source`` to its end (after the chunks already queued), writing
        and hashing each chunk before taking the next; it stops at the first failed write
        (``finish`` raises it). The future is done when the thread is done with ``source``,
        with what ``source`` raised. Progress is reported every ``step`` bytes, and whenever
        the source falls behind (a wake-up of the loop per chunk would cost more than the
        chunk's hand-over did). A blocking read is ended by the source's own ``stop``."""
        done = self._loop.create_future()
        self._draining = self._behind = True
        self._queue.put(_Drained(source, step, done))
        return done

    async def finish(self) -> str:
        """Wait until every queued chunk is on disk; the hex digest of them all."""
        self._queue.put(None)
        await asyncio.shield(self._done)
        self._progress()
        self._raise_if_failed()
        return self._digester.hexdigest()   # (the thread closed it: nothing left to wait for)

    async def close(self) -> None:
        """Stop the thread (after the chunks already queued); safe after ``finish``."""
        if not self._done.done():
            self._queue.put(None)
            await asyncio.shield(self._done)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterFailed(str(self._error)) from self._error

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (chunk := self._queue.get()) is not None:
                if isinstance(chunk, _Drained):
                    self._read(chunk)
                    continue
                self._take(chunk)
                self._taken += len(chunk)
                self._report()
        finally:
            self.riders.close()
            self._digester.close()
            try:
                self._loop.call_soon_threadsafe(_set_result, self._done)
            except RuntimeError:   # the loop is closed: nobody is waiting
                pass

    def _take(self, chunk: Chunk, behind: int = BEHIND) -> None:
        if self._error is None:
            try:
                self._write(chunk)
                if self._sink is None:
                    self.riders.push(self._written, chunk, self._fd)
                self._digester.update(chunk)
                self._digester.settle(behind)
                self._written += len(chunk)
            except OSError as exc:
                self._error = exc   # the loop raises it; keep draining the queue

    def _read(self, drained: "_Drained") -> None:
        reported, error = self._written, None
        behind = getattr(drained.source, "ring", 1) - 1
        try:
            for chunk, more in drained.source:
                if self._error is not None:
                    break           # a failed write ends the reading; finish raises it
                self._behind = more
                if chunk:
                    self._take(chunk, behind)
                if not more or self._written - reported >= drained.step:
                    reported = self._written
                    self._report()  # (an empty chunk too: the source fell quiet)
                    if not chunk and self._sink is None and self._error is None:
                        self.riders.push(self._written, chunk, self._fd)   # catch them up
        except Exception as exc:  # noqa: BLE001 - the source's failure, raised on the loop
            error = exc
        finally:
            self._behind = False
            try:
                self._loop.call_soon_threadsafe(self._drained, drained.done, error)
            except RuntimeError:   # the loop is closed: nobody is waiting
                pass

    def _report(self) -> None:
        if self._reported.is_set():
            self._reported.clear()
            self._loop.call_soon_threadsafe(self._progress)

    def _write(self, chunk: Chunk) -> None:
        if self._sink is not None:
            self._sink(self._written, chunk)
            return
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._fd, view[:WRITE_SLICE]):]
        except OSError as exc:
            if self._fallback is None:
                raise
            self._sink = self._fallback(exc, self._written)
            self.riders.close()    # (readers go on in the window, from where they were)
            self._sink(self._written, chunk)   # the whole chunk: the sink starts at its start

    # -- back on the loop ---------------------------------------------------------------------

    def _progress(self) -> None:
        self._reported.set()
        self._freed = self._taken
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)
        self._on_progress(self._written)

    def _drained(self, done: asyncio.Future, error: Exception | None) -> None:
        self._draining = False
        self._progress()
        if done.done():
            return          # (cancelled: the fill is ending)
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    @property
    def idle(self) -> bool:
        """Every chunk handed over so far is on disk (as far as the loop has heard); a
        drained source: it is not ahead of the thread."""
        if self._draining:
            return not self._behind
        return self._freed == self._put


class _Drained:
    __slots__ = ("source", "step", "done")

    def __init__(self, source: Drain, step: int, done: asyncio.Future) -> None:
        self.source = source
        self.step = step
        self.done = done


def _set_result(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
