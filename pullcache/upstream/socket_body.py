"""The rest of an upstream blob body, read by a thread straight from the connection's socket.

On the event loop, every read of a large body costs the loop's thread the kernel's copy, a
callback and a hand-over per chunk, next to sending every byte on to the clients (with a
herd, to many). So over plain TCP, once the headers are parsed, the fill's writer thread
reads the rest itself (``cache.writer.Writer.drain``): ``recv_into`` one of ``RING`` reused
buffers in turn, then write it (and hand it to the digest's thread), each call releasing the
GIL. Per fill that is ``RING * BUFFER`` bytes of memory (8 MiB; at most ``cache.fill.THREADS``
fills read this way at once). The loop only hears "so many more bytes are
in the temp file", and sends them on with ``sendfile`` (docs/benchmarks.md, "Measurements
behind the code").

A read waits (``poll``) until ``LOWAT`` bytes are there (``SO_RCVLOWAT``, socket(7)) or for
``QUIET`` seconds, then takes what there is: few, large reads while the upstream is fast, and
a slow upstream's bytes still reach readers promptly. Nothing at all for ``QUIET``: the chunk
iterator says so (an empty chunk: the loop may wake readers now), and the next wait is for
any byte, up to the read timeout (a stall: ``UpstreamTimeout``). Errors are the domain's, as
on the loop's path (``failures.body_errors``).
"""

from __future__ import annotations

import math
import mmap
import select
import socket
import time
from typing import Callable, Iterator

from .failures import body_errors

BUFFER = 4 << 20        # one read at most (fewer, larger reads: less CPU per byte)
RING = 2                # buffers, in turn: one is hashed (cache/digester.py) while the next fills
LOWAT = 1 << 20         # a read waits until this much is there ...
QUIET = 0.005           # ... or this long (seconds), then takes what there is

Chunk = bytes | memoryview


class SocketBody:
    """The rest of a body of known length on ``sock`` (non-blocking, the loop's reading of it
    stopped for good), after the bytes already received (``pending``).

    Iterated once, in one thread: ``(chunk, more)`` pairs, where ``more`` says the upstream
    is ahead of us (the read was cut by the buffer or ``LOWAT``, not by ``QUIET``). A chunk
    is a view of a buffer read into again ``ring`` reads later: be done with it by then. ``stop``
    (from any thread) ends a read in progress as a cut; ``close`` once the thread is done.
    """

    def __init__(self, sock: socket.socket, pending: list[Chunk], remaining: int,
                 read_timeout: float | None, on_bytes: Callable[[int], None]) -> None:
        self._sock = sock
        self._pending = pending
        self.remaining = remaining
        self._read_timeout = read_timeout
        self._on_bytes = on_bytes    # (a prometheus counter: safe from any thread)
        self._stopped = False

    ring = RING

    def __iter__(self) -> Iterator[tuple[Chunk, bool]]:
        with body_errors("blob body"):
            pending, self._pending = self._pending, []
            for chunk in pending:
                self._on_bytes(len(chunk))
                yield chunk, True
            if self.remaining > 0:
                yield from self._received()

    def _received(self) -> Iterator[tuple[memoryview, bool]]:
        sock = self._sock
        size = min(BUFFER, self.remaining)   # (a small blob: small buffers)
        # Anonymous maps: their pages come as the reads fill them. A bytearray would zero
        # all 8 MiB first, about 3 ms before the first read (docs/benchmarks.md, "The cold
        # fill").
        buffers = [memoryview(mmap.mmap(-1, size)) for _ in range(self.ring)]
        turn = 0
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        quiet = int(QUIET * 1000)
        lowat = 0
        while self.remaining > 0:
            buffer, turn = buffers[turn], (turn + 1) % len(buffers)
            want = min(size, self.remaining)
            if lowat != min(LOWAT, want):   # (the body's tail: wait for no more than it)
                lowat = self._lowat(min(LOWAT, want))
            poller.poll(quiet)
            n = self._recv(buffer, want)
            more = n is not None and n >= lowat
            if n is None:                  # nothing for QUIET: we are ahead of the upstream
                yield buffer[:0], False
                lowat = self._lowat(1)
                n = self._waited(poller, buffer, want)
            if n == 0:
                raise ConnectionError(f"upstream closed the body {self.remaining} bytes short "
                                      "of its Content-Length")
            self.remaining -= n
            self._on_bytes(n)
            yield buffer[:n], more

    def _waited(self, poller: select.poll, buffer: memoryview, want: int) -> int:
        """The first bytes to come within the read timeout, or TimeoutError (a stall)."""
        timeout = self._read_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while (n := self._recv(buffer, want)) is None:
            if deadline is None:
                poller.poll()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no byte of the body for {timeout:g}s")
            poller.poll(max(1, math.ceil(left * 1000)))
        return n

    def _recv(self, buffer: memoryview, want: int) -> int | None:
        """Bytes read into ``buffer`` (0: the connection ended), or None: none there."""
        if self._stopped:
            return 0
        try:
            return self._sock.recv_into(buffer, want)
        except BlockingIOError:
            return None
        except ConnectionError:
            raise
        except OSError as exc:     # a socket shut and closed under us, or the kernel's trouble
            raise ConnectionError(f"reading the body: {exc}") from exc

    def _lowat(self, nbytes: int) -> int:
        """Set ``SO_RCVLOWAT`` (poll(2) wakes once that much is there); what was set, or 1
        where the socket takes none (not TCP)."""
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
        except OSError:
            return 1
        return nbytes

    def stop(self) -> None:
        """End the thread's reading: a read in progress returns as a cut connection."""
        self._stopped = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass      # already shut, or the peer reset it

    def close(self) -> None:
        """Let go of the descriptor (after the thread has stopped iterating)."""
        self._sock.close()
