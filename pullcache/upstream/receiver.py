"""An upstream blob body: the bytes of one ``GET /v2/<name>/blobs/<digest>`` as a fill's source.

aiohttp hands a body over as ``bytes``: uvloop copies each read out of its loop-wide read
buffer, then the HTTP parser copies that again into a chunk. For a large body that is two
passes over every byte before the fill's writer thread sees it, on the event loop's thread
(docs/benchmarks.md, "Measurements behind the code").

So a large body of known length (``Content-Length``, no transfer coding: RFC 9112 §6.3) is
taken over once aiohttp has parsed the headers: the transport reads straight into 1 MiB
buffers of ours (``asyncio.BufferedProtocol``; behind TLS, the decrypted bytes land there),
and the fill gets memoryviews of them. aiohttp's parser never sees the rest of the body, so
the connection is closed at the end rather than pooled: one new connection per large blob,
nothing next to the transfer. Small bodies and chunked ones take aiohttp's path, on a pooled
connection.

Over plain TCP, a fill may take the rest of a taken-over body off the loop altogether
(``BlobStream.reader``): its writer thread then reads the socket itself (``socket_body``).
"""

from __future__ import annotations

import asyncio
import collections
import mmap
import sys
from typing import AsyncIterator, Callable
from urllib.parse import urlsplit

import aiohttp

from .. import errors
from ..compat.aiohttp_takeover import Detached, detach
from .failures import body_errors
from .socket_body import SocketBody

TAKEOVER_MIN = 4 << 20  # bodies from this size are received into our own buffers
BUFFER = 1 << 20        # one receive buffer; a chunk handed over is a slice of one
HANDOVER = 256 << 10    # hand a slice over once this much is pending in the buffer ...
QUIET = 0.005           # ... or once it has waited this long (a slow upstream)
HIGH_WATER = 2 << 20    # stop reading while this much is received and not yet taken
POOL = 8                # buffers kept for reuse (HIGH_WATER's, and the writer's queue)
# Small on purpose: bytes read a little ahead of the writer are still in the CPU's cache when
# the writer thread hashes them; larger read-ahead costs more CPU per fill (docs/benchmarks.md,
# "Measurements behind the code").


class BlobStream:
    """An open upstream blob body; a ``Source`` for a fill (``cache.fill``)."""

    def __init__(self, response: aiohttp.ClientResponse, on_bytes: Callable[[int], None],
                 read_timeout: float | None) -> None:
        self._response = response
        self._on_bytes = on_bytes
        self.size = response.content_length
        self.origin = urlsplit(str(response.url)).netloc
        self._read_timeout = read_timeout
        self._receiver = _take_over(response, read_timeout)
        self._thread_body: SocketBody | None = None

    def reader(self) -> SocketBody | None:
        """The rest of the body for one thread to read from the socket, or None: read
        ``chunks()`` instead (a body left to aiohttp, a TLS connection, a failed one).
        Asked before ``chunks``, once."""
        receiver = self._receiver
        if receiver is None or receiver.failed:
            return None
        try:
            sock = receiver.detached.socket()
        except OSError:     # no descriptor to spare (EMFILE): the loop's path needs none
            return None
        if sock is None:
            return None
        pending, remaining = receiver.hand_off()
        self._thread_body = SocketBody(sock, pending, remaining, self._read_timeout,
                                       self._on_bytes)
        return self._thread_body

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        with body_errors("blob body"):
            if self._receiver is not None:
                async for chunk in self._receiver.chunks():
                    self._on_bytes(len(chunk))
                    yield chunk
                return
            # Each buffered chunk as it arrived: iter_chunks hands them over one by one,
            # where iter_any/iter_chunked join what is buffered (a copy of every byte).
            async for chunk, _ in self._response.content.iter_chunks():
                if chunk:
                    self._on_bytes(len(chunk))
                    yield chunk

    async def close(self) -> None:
        if self._thread_body is not None:
            self._thread_body.stop()
            self._thread_body.close()
        if self._receiver is not None:
            self._receiver.close()
            self._response.close()     # aiohttp's bookkeeping: the connection is not pooled
        else:
            self._response.release()


def _take_over(response: aiohttp.ClientResponse, read_timeout: float | None) -> "Receiver | None":
    """A ``Receiver`` now reading the rest of ``response``'s body, or None to leave it to
    aiohttp (small, chunked, already complete, or no connection to take)."""
    size = response.content_length
    if size is None or size < TAKEOVER_MIN or "Transfer-Encoding" in response.headers:
        return None
    detached = detach(response)
    if detached is None:
        return None
    receiver = Receiver(detached, size - len(detached.already), read_timeout)
    if detached.already:
        receiver.received(detached.already)
    # aiohttp lets go of the transport, so that nothing of aiohttp's (its stream reader's
    # flow control) can resume a transport the receiver has paused: a stalled fill would then
    # buffer a whole body. It still hears of the connection's end, from the receiver.
    detached.install(receiver)
    # (read_nowait may have resumed reading for aiohttp's buffer: set the state we want.)
    if receiver.remaining:
        detached.transport.resume_reading()
    else:
        detached.transport.pause_reading()
    return receiver


def _allocate(size: int = BUFFER) -> mmap.mmap:
    """A receive buffer mapped on its own (anonymous ``mmap``) rather than taken from the
    heap: its pages come zeroed from the kernel as they are first touched (no memset of a
    ``bytearray``), and go back to the system as soon as the last view of it goes, where
    malloc may keep a freed 1 MiB block in the heap."""
    return mmap.mmap(-1, size)


def _free_refs() -> int:
    """What ``getrefcount`` says of a pooled buffer no view holds, in ``_next_buffer``'s loop
    (measured, not assumed: the count includes the interpreter's own temporary references)."""
    pool = [_allocate(mmap.PAGESIZE)]
    buffer = pool[0]
    return sys.getrefcount(buffer)


FREE_REFS = _free_refs()


class Receiver(asyncio.BufferedProtocol):
    """Reads the rest of a body into 1 MiB buffers and hands out slices of them.

    A slice is handed over at ``HANDOVER`` bytes, at the end of a buffer or of the body, or
    ``QUIET`` seconds after its first byte arrived, so a slow upstream's bytes still reach
    readers promptly. Reading pauses while ``HIGH_WATER`` bytes wait to be taken: the fill's
    writer is behind, and TCP tells the upstream to wait. Each slice keeps its buffer alive
    until the writer thread has written and hashed it; a buffer nothing refers to any more is
    reused (``_next_buffer``).
    """

    def __init__(self, detached: Detached, remaining: int,
                 read_timeout: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = detached.transport
        self.detached = detached        # aiohttp's protocol: told when the connection goes
        self.remaining = remaining
        self._read_timeout = read_timeout
        self._pool: list[mmap.mmap] = []
        self._buffer = self._next_buffer()
        self._filled = self._handed = 0
        self._ready: collections.deque[bytes | memoryview] = collections.deque()
        self._ready_bytes = 0
        self._paused = False
        self._quiet: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    # -- the transport's side -----------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filled == BUFFER:
            self._buffer = self._next_buffer()
            self._filled = self._handed = 0
        # Never past the announced length: the connection carries nothing we want after it.
        end = self._filled + min(BUFFER - self._filled, max(self.remaining, 1))
        return self._buffer[self._filled:end]

    def _next_buffer(self) -> memoryview:
        """A free buffer of the pool, else a new one (kept while the pool is not full).

        Free means no memoryview of it is left anywhere (the writer thread has dropped the
        slices it wrote): every view holds a reference to the buffer, so a free one has
        only the references of a buffer never viewed (``FREE_REFS``). Reusing beats a new
        one: no fresh pages to fault in and zero (6% of a cold fill's CPU).
        """
        for buffer in self._pool:
            if sys.getrefcount(buffer) == FREE_REFS:
                return memoryview(buffer)
        buffer = _allocate()
        if len(self._pool) < POOL:
            self._pool.append(buffer)
        return memoryview(buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        self.remaining -= nbytes
        if self.remaining <= 0:
            self._transport.pause_reading()
            self._hand_over()
            if self.remaining < 0:
                self._failed(errors.UpstreamError("blob body longer than its Content-Length"))
        elif self._filled - self._handed >= HANDOVER or self._filled == BUFFER:
            self._hand_over()
        elif self._quiet is None:
            self._quiet = self._loop.call_later(QUIET, self._hand_over)

    def received(self, data: bytes) -> None:
        """Bytes aiohttp had already read (with the headers): first in line."""
        self._ready.append(data)
        self._ready_bytes += len(data)

    def eof_received(self) -> bool:
        if self.remaining > 0:
            self._failed(ConnectionError(f"upstream closed the body {self.remaining} bytes "
                                         "short of its Content-Length"))
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._quiet is not None:
            self._quiet.cancel()
        if self.remaining > 0:
            self._failed(exc or ConnectionError("upstream connection lost mid-body"))
        self.detached.lost(exc)    # aiohttp's connector forgets the connection

    def close(self) -> None:
        """Close the connection and let go of the buffers now, not when the collector breaks
        the transport/protocol cycle."""
        self._transport.close()
        if self._quiet is not None:
            self._quiet.cancel()
            self._quiet = None
        self._pool.clear()
        self._ready.clear()
        self._ready_bytes = 0
        self._buffer = memoryview(bytearray(0))
        self._filled = self._handed = 0

    @property
    def failed(self) -> bool:
        return self._error is not None

    def hand_off(self) -> tuple[list[bytes | memoryview], int]:
        """Stop reading for good (a thread reads the socket from here): what was received
        and not yet taken, in order, and how many bytes of the body are still to come."""
        self._transport.pause_reading()
        if self._quiet is not None:
            self._quiet.cancel()
            self._quiet = None
        pending = list(self._ready)
        if self._filled > self._handed:
            pending.append(self._buffer[self._handed:self._filled])
        self._ready.clear()
        self._ready_bytes = 0
        self._handed = self._filled
        return pending, self.remaining

    def _hand_over(self) -> None:
        if self._quiet is not None:
            self._quiet.cancel()
            self._quiet = None
        if self._filled > self._handed:
            self._ready.append(self._buffer[self._handed:self._filled])
            self._ready_bytes += self._filled - self._handed
            self._handed = self._filled
        if self._ready_bytes >= HIGH_WATER and self.remaining > 0:
            self._paused = True
            self._transport.pause_reading()     # (again, if paused: a no-op)
        self._wake()

    def _failed(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the fill's side ----------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        while True:
            while self._ready:
                chunk = self._ready.popleft()
                self._ready_bytes -= len(chunk)
                if self._paused and self._ready_bytes <= HIGH_WATER // 2:
                    self._paused = False
                    self._transport.resume_reading()
                yield chunk
            if self._error is not None:
                raise self._error
            if self.remaining <= 0 and self._filled == self._handed:
                return
            self._waiter = self._loop.create_future()
            async with asyncio.timeout(self._read_timeout):   # nothing for that long: stalled
                await self._waiter
