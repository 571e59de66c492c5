"""A fill's readers: they tail its temp file (or its pass-through window) as it grows.

Mixed into ``fill.Fill``, whose state it reads (``visible``, ``written``, ``verified``,
``size``, ``generation``, ``window``, ``result``, ``_started``, ``_size_known``, ``_waiters``,
``_progress``). Every request that wants the blob reads the one fill from any offset: the
first byte reaches each client as soon as it reaches us, and the blob's final byte only once
the digest matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import AsyncIterator

from .descriptors import open_fd
from .riders import Pusher, Rider

READ_CHUNK = 1 << 20


class FillFailed(Exception):
    """The fill a reader was tailing failed after the response had started."""


class Tail:
    # -- the readers --------------------------------------------------------------------------

    @property
    def promised_size(self) -> int | None:
        """The size readers have been promised, once a source has been accepted."""
        started = self._started
        if started.done() and not started.cancelled() and started.exception() is None:
            return started.result()
        return None

    async def started(self) -> int | None:
        """Wait until the source answered; its size, or raise the domain error it gave."""
        started = self._started
        if not started.done():
            # A future of its own, resolved by the fill itself (``_announce``): awaiting the
            # shared one through ``shield`` (never cancelled by a reader's cancellation)
            # costs two turns of the loop, and the client's first byte waits for both.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[waiter] = None
            try:
                await waiter
            finally:
                self._waiters.pop(waiter, None)
        return started.result()

    async def sized(self) -> int | None:
        """Wait until a source answered, held back or not; the size it announced, or raise
        the fill's error. For a reader of the bytes as written (``spans(raw=True)``)."""
        known = self._size_known
        if not known.done():
            await asyncio.wait([known])   # (not cancelled with the caller)
        return known.result()

    def _announce(self) -> None:
        """The source answered (``_started`` is set): wake every reader in ``started``, in
        the order they came."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive), as they arrive. Raises ``FillFailed``."""
        async with contextlib.aclosing(self.spans(start, end, READ_CHUNK)) as spans:
            async for fd, offset, length in spans:
                chunk = await asyncio.to_thread(os.pread, fd, length, offset)
                if len(chunk) != length:
                    raise FillFailed("temp file shrank")
                yield chunk

    async def spans(self, start: int = 0, end: int | None = None,
                    limit: int | None = None, *, raw: bool = False,
                    pusher: Pusher | None = None) -> AsyncIterator[tuple[int, int, int]]:
        """``(fd, offset, length)`` of bytes ``start`` to ``end`` (exclusive) as they become
        readable, for ``pread`` or ``sendfile``; each fd is valid until the next step.
        Raises ``FillFailed``.

        ``raw``: the bytes as written, a held-back source's unverified ones too (for a peer,
        which verifies the digest itself); a change of source after the first byte read
        cuts the reader. The final byte still waits for the verification.

        ``pusher``: the response's sender, when it can give the writer thread its client's
        socket. Caught up with the writer, the reader then rides (``riders.py``): the writer
        sends the next bytes itself, and this iterator yields nothing for them."""
        fd, generation = await self._open_for_read(raw)
        self.readers += 1
        token = id(object())    # this reader, for the pass-through window's bookkeeping
        cap = end if end is not None else self.size   # exclusive; None while unknown
        try:
            offset = start
            while cap is None or offset < cap:
                progress = self._progress
                verified = self.verified   # then the bytes are whole, whatever the commit does
                if not verified and self.failed:
                    raise FillFailed(str(self.result.exception()))
                window = self.window
                if window is not None:
                    window.release(token)
                if generation != self.generation:
                    if raw and offset != start:
                        raise FillFailed("the source changed under a raw reader")
                    # The source was dropped before showing any byte (offset is still
                    # ``start``): read the new temp file, never the dropped one. Or the
                    # fill went pass-through: read the window, same offsets.
                    await asyncio.to_thread(os.close, fd)
                    fd = -1
                    fd, generation = await self._open_for_read(raw)
                shown = self.written if raw else self.visible
                available = shown if cap is None else min(shown, cap)
                if cap is not None and cap == self.size and not verified:
                    # Hold back the blob's final byte until its digest is verified: no client
                    # may receive a complete-looking blob of unverified content. A range that
                    # ends earlier is served as soon as it is written (clients that assemble
                    # ranges, like containerd, verify the digest of the whole).
                    available = min(available, cap - 1)
                if offset < available:
                    length = available - offset if limit is None else \
                        min(available - offset, limit)
                    if window is not None and generation == self.generation:
                        length = min(length, READ_CHUNK)   # spans stay short in memory
                        if not window.hold(token, offset, length):
                            raise FillFailed("fell behind the pass-through window")
                    yield fd, offset, length
                    offset += length
                elif verified:
                    if end is None and self.size != cap and cap is not None:
                        raise FillFailed("blob size differs from the announced one")
                    return   # size was unknown: the verified end is where the bytes end
                else:
                    reached = None
                    if pusher is not None and not raw and window is None and cap is not None \
                            and self._stream and generation == self.generation:
                        reached = await self._ride(pusher, offset, cap)
                    if reached is None:
                        await progress.wait()
                    else:
                        offset = reached
            while cap == 0 and not self.verified:
                # An empty blob has no final byte to hold back: its (empty) end waits for
                # the verification all the same.
                if self.failed:
                    raise FillFailed(str(self.result.exception()))
                await self._progress.wait()
        finally:
            self.readers -= 1
            if self.window is not None:
                self.window.release(token)
            if fd >= 0:
                await asyncio.to_thread(os.close, fd)

    async def _ride(self, pusher: Pusher, offset: int, cap: int) -> int | None:
        """Ride the writer from ``offset`` (bytes ``offset`` on are not visible yet) until
        landed; the offset reached, or None: no ride (no seat, no socket, nothing left
        to send before the verification)."""
        limit = cap - 1 if cap == self.size else cap   # the final byte waits for the digest
        writer = self._writer
        if writer is None or offset >= limit:
            return None
        sock = pusher.socket()
        if sock is None:
            return None
        rider = Rider(sock, offset, limit)
        if not writer.riders.board(rider):
            sock.close()
            return None
        reached = await rider.landing()
        pusher.pushed(reached - offset)
        return reached

    async def _open_for_read(self, raw: bool = False) -> tuple[int, int]:
        """Open the temp file (or the committed file if the fill finished meanwhile);
        return the fd and the temp file's generation.

        An fd opened on the temp file stays valid across the commit's rename (POSIX).
        """
        await (self.sized() if raw else self.started())
        while True:
            generation = self.generation
            # Taken before the open: a wake-up that comes while the open runs in its thread
            # (the writer created the file and wrote to it) must not be lost.
            progress = self._progress
            if self.window is not None:
                if self.window.fd < 0:
                    raise FillFailed("the pass-through ended before this reader started")
                return self.window.open(), generation
            try:
                fd = await open_fd(self.temp)
            except FileNotFoundError:
                if self.window is not None or generation != self.generation:
                    continue   # the fill went pass-through while the open ran: the window
                if not self.result.done():
                    await progress.wait()  # the writer has not created it yet
                    continue
                if self.result.exception() is not None:
                    raise FillFailed(str(self.result.exception())) from None
                entry = self.result.result().entry
                if entry is None:
                    raise FillFailed("passed through, not cached")
                try:
                    return await open_fd(self.store.path(entry)), generation
                except FileNotFoundError:
                    # Evicted between its commit and this late reader (a budget smaller
                    # than the fills in flight): a cut the client retries, not a 500.
                    raise FillFailed("evicted right after its commit") from None
            if generation == self.generation:
                return fd, generation
            await asyncio.to_thread(os.close, fd)   # raced with a source change: again
