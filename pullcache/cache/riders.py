"""Readers that have caught up with a fill's writer: the writer thread sends them each chunk
itself, from the buffer it has just received and written.

A reader that has caught up otherwise waits for the writer's progress report, then sends the
new bytes from the page cache with ``sendfile``. On loopback, where a node-local mirror's
clients are, that costs about twice a ``send`` of the same bytes from memory, and the loop
wakes for every step (docs/benchmarks.md, "The cold fill"). A *rider* gives the writer
thread its own descriptor of the client's socket and its offset. Right after writing each
chunk, the thread sends it to every rider, non-blocking.

A socket that takes only part of a chunk leaves the rest owed: the next chunk's turn sends
it first, from the temp file. A rider is *landed* when it is owed more than ``LAG`` bytes (a
client slower than the writer), when its client went away, when it reached its limit (a
blob's final byte never goes out before the digest matched), and when the writer ends. The
thread then closes the rider's descriptor and tells the loop where it stopped, and the reader
carries on from there as before: the loop's sender, with its stall timeout. So a slow client
never slows the writer, and one connection's bytes never come from two senders at once,
because a reader sends nothing while it rides.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Protocol

# One rider per fill: a lone client (the usual cold pull) gains most. In a herd, the loop's
# ``sendfile`` to many slower clients costs less per byte than a ``send`` each from the
# writer thread, whose every send is time before its next read (docs/benchmarks.md, "The
# cold fill").
SEATS = 1
LAG = 8 << 20           # bytes a rider may be owed before it is landed (two chunks)
SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


class Pusher(Protocol):
    """The response's side: a descriptor of the client's socket for the writer thread (its
    own, for the rider to close), or None when the bytes cannot go out raw (TLS, chunked);
    and the count of the bytes the writer sent for it."""

    def socket(self) -> socket.socket | None: ...
    def pushed(self, nbytes: int) -> None: ...


class Rider:
    """One reader's ride: its socket (a descriptor of its own, closed at the landing), its
    offset, and where it must stop (exclusive)."""

    __slots__ = ("sock", "offset", "limit", "cancelled", "_landed")

    def __init__(self, sock: socket.socket, offset: int, limit: int) -> None:
        self.sock = sock
        self.offset = offset    # the writer thread's while riding; the loop's once landed
        self.limit = limit
        self.cancelled = False  # the reader gave up: land at the next chunk, send nothing
        self._landed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def landing(self) -> int:
        """Wait until the writer lands this rider; the offset it reached."""
        try:
            await self._landed
        except asyncio.CancelledError:
            self.cancelled = True     # the thread closes the socket when it next looks
            raise
        return self.offset


class Riders:
    """A writer's riders. ``board`` is the loop's; ``push`` and ``close`` the writer thread's."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()    # held for a list's append or swap, never for I/O
        self._boarding: list[Rider] = []
        self._riding: list[Rider] = []   # the writer thread's alone
        self._seated = 0
        self._closed = False
        self._holding = False   # (the loop's word to the thread: land everyone)

    def board(self, rider: Rider) -> bool:
        """Seat ``rider`` from the next chunk on; False: no seat (the writer has ended, or
        left the temp file, or every seat is taken), and the caller keeps its socket."""
        with self._lock:
            if self._closed or self._seated >= SEATS:
                return False
            self._seated += 1
            self._boarding.append(rider)
        return True

    def hold(self) -> None:
        """(the loop) Seat no more, and land every rider at the writer's next chunk: the
        bytes from now on are held back until verified (a held-back source took over)."""
        with self._lock:
            self._closed = self._holding = True

    def push(self, offset: int, chunk: bytes | memoryview, fd: int) -> None:
        """Send bytes ``offset`` to ``offset + len(chunk)``, just written to ``fd``, to each
        rider. A rider seated while the loop had not yet heard of the writer's last chunks
        is behind ``offset``: it is caught up from ``fd`` first."""
        if self._boarding:
            with self._lock:
                boarding, self._boarding = self._boarding, []
            self._riding += boarding
        if not self._riding:
            return
        if self._holding:
            riding, self._riding = self._riding, []
            for rider in riding:
                self._land(rider)
            return
        end = offset + len(chunk)
        riding = []
        for rider in self._riding:
            if self._carried(rider, offset, end, chunk, fd):
                riding.append(rider)
        self._riding = riding

    def _carried(self, rider: Rider, offset: int, end: int, chunk, fd: int) -> bool:
        """Send ``rider`` what it may have of this chunk, and what it was still owed from
        earlier ones (from ``fd``: its socket took less than all last time, or it was seated
        while the loop had not yet heard of the writer's latest chunks); False: landed."""
        if rider.cancelled:
            return self._land(rider)
        stop = min(end, rider.limit)
        try:
            if rider.offset < offset:
                owed = min(offset, rider.limit) - rider.offset
                rider.offset += os.sendfile(rider.sock.fileno(), fd, rider.offset, owed)
            if offset <= rider.offset < stop:
                view = memoryview(chunk)[rider.offset - offset:stop - offset]
                rider.offset += rider.sock.send(view, SEND_FLAGS)
        except BlockingIOError:
            pass                 # its socket is full: owed, unless that makes it too far behind
        except OSError:          # the client went away: the loop's sender meets it too
            return self._land(rider)
        if rider.offset >= rider.limit or stop - rider.offset > LAG:
            return self._land(rider)   # done; or a slow client: the loop's sender takes it on
        return True

    def close(self) -> None:
        """Land every rider, and seat no more (the writer ends, or leaves the temp file)."""
        with self._lock:
            self._closed = True
            boarding, self._boarding = self._boarding, []
        riding, self._riding = self._riding + boarding, []
        for rider in riding:
            self._land(rider)

    def _land(self, rider: Rider) -> bool:
        rider.sock.close()
        with self._lock:
            self._seated -= 1
        try:
            self._loop.call_soon_threadsafe(_landed, rider._landed)
        except RuntimeError:   # the loop is closed: nobody is waiting
            pass
        return False


def _landed(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
