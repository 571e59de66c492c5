"""Sending a body's spans to a client from the event loop: non-blocking ``sendfile(2)``,
no thread per client.

uvloop implements neither ``loop.sendfile`` nor ``add_writer`` on a transport's own socket,
so the sender works on its own ``os.dup`` of the socket (and of each span's file): the loop
may close and reuse the transport's descriptor number at any time (a client reset), but a
number this module holds is its own until it closes it, so bytes can never land in another
client's connection. ``sendfile`` is tried first; when the socket is full, the loop calls
the sender back on writability (``add_writer`` on its dup, kept for the whole span), and a
client that takes nothing for ``stall_timeout`` is dropped. The body goes out corked
(``TCP_CORK``): full segments only, until its end.

A TLS transport, a chunked body (a blob whose length is not known yet), or a loop without
``sendfile`` gets the same spans through ``pread`` in the default executor and
``StreamResponse.write``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import AsyncIterator

from aiohttp import web

# One sendfile(2) call sends at most what the socket buffer takes; this caps what one call
# may read from disk while the loop waits on it.
MAX_CHUNK = 8 << 20
PREAD_CHUNK = 1 << 20


class ClientStalled(ConnectionError):
    """The client read nothing for ``stall_timeout`` seconds."""


class Sendfile:
    """The app's sender; ``stall_timeout`` is ``server.send_timeout``."""

    def __init__(self, stall_timeout: float = 60.0) -> None:
        self.stall_timeout = stall_timeout

    def sender(self, request: web.Request, resp: web.StreamResponse) -> "Sender":
        return Sender(request.transport, resp, self.stall_timeout)


class Sender:
    """One response's body on its way out; ``sent`` counts the bytes that left."""

    def __init__(self, transport: asyncio.Transport | None, resp: web.StreamResponse,
                 stall_timeout: float) -> None:
        self.transport = transport
        self.resp = resp
        self.stall_timeout = stall_timeout
        self.sent = 0
        self.ridden = 0   # of ``sent``: what a fill's writer thread sent (``pushed``)
        self._out = -1    # our dup of the client's socket while the body goes out raw

    async def send(self, writer, spans: AsyncIterator[tuple[int, int, int]], *,
                   cork: bool = True) -> None:
        """Send every span; ``writer`` is what ``resp.prepare()`` returned. Raises
        ``ConnectionError`` when the client went away or stalled. ``cork``: the spans are
        all there (a cached file), so full segments only until the end; a fill's tail is
        sent as it arrives instead (a stalled upstream must not hold a segment back)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        sock = transport.get_extra_info("socket")
        if (sock is None or transport.get_extra_info("ssl_object") is not None
                or not hasattr(os, "sendfile") or self._chunked()):
            await self._send_copied(spans)
            return
        await self._flushed(writer)    # our headers go first, through the transport
        if transport.is_closing():
            # Closed while the headers drained: the number the transport's socket answers
            # may be another client's connection by now. Nothing between this check and
            # the dup awaits, so the dup is of this client's socket.
            raise ConnectionResetError("client went away")
        out = self._out = os.dup(sock.fileno())
        if cork:
            _cork(out, True)
        try:
            async for fd, offset, length in spans:
                src = os.dup(fd)   # the body may close its fd once we move on (or give up)
                try:
                    await self._sendfile(out, src, offset, length)
                finally:
                    os.close(src)
        finally:
            if cork:
                _cork(out, False)   # what is left goes out now, not 200 ms later
            self._out = -1
            os.close(out)

    # -- cache.riders.Pusher: a fill's writer thread may send caught-up bytes itself ---------

    def socket(self) -> socket.socket | None:
        """A descriptor of the client's socket for a rider (its own to close), while the
        body goes out raw from ``send``'s loop; None otherwise (TLS, chunked, not started)."""
        if self._out < 0 or self.transport is None or self.transport.is_closing():
            return None
        return socket.socket(fileno=os.dup(self._out))

    def pushed(self, nbytes: int) -> None:
        self.sent += nbytes
        self.ridden += nbytes

    def _chunked(self) -> bool:
        """The body goes out in chunked framing (no length known, HTTP/1.1): its bytes must
        pass through ``StreamResponse.write``, which frames them; raw ``sendfile`` bytes
        would be read as chunk sizes (RFC 9112 §7.1)."""
        return self.resp is not None and \
            self.resp.headers.get("Transfer-Encoding", "").lower() == "chunked"

    async def _sendfile(self, out: int, src: int, offset: int, length: int) -> None:
        if length <= 0:
            return    # (sendfile would answer 0, which means a file that ended early)
        pump = _Pump(self, out, src, offset, length)
        try:
            await pump.done
        finally:
            pump.stop()

    async def _flushed(self, writer) -> None:
        """Wait until the transport has written everything it holds (our headers)."""
        transport = self.transport
        if transport.get_write_buffer_size() == 0:
            return
        high, low = transport.get_write_buffer_limits()[::-1]
        transport.set_write_buffer_limits(high=0)   # paused until empty; drain() waits for it
        try:
            async with asyncio.timeout(self.stall_timeout):
                await writer.drain()
        except TimeoutError:
            raise ClientStalled("client read nothing of the headers") from None
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    async def _send_copied(self, spans: AsyncIterator[tuple[int, int, int]]) -> None:
        async for fd, offset, length in spans:
            src = os.dup(fd)
            try:
                while length > 0:
                    chunk = await asyncio.to_thread(os.pread, src, min(length, PREAD_CHUNK),
                                                    offset)
                    if not chunk:
                        raise OSError(f"file ended {length} bytes early")
                    try:
                        async with asyncio.timeout(self.stall_timeout):
                            await self.resp.write(chunk)
                    except TimeoutError:
                        raise ClientStalled("client stopped reading") from None
                    offset += len(chunk)
                    length -= len(chunk)
                    self.sent += len(chunk)
            finally:
                os.close(src)


def _cork(fd: int, on: bool) -> None:
    """``TCP_CORK`` (tcp(7)) on our dup of the socket, as nginx's ``tcp_nopush`` does with
    sendfile: the body goes out in full segments, not a segment (and a wake-up of the
    reader) per piece the kernel happens to have ready (docs/benchmarks.md, "Measurements
    behind the code")."""
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)
    except OSError:
        pass     # not TCP (a Unix socket in a test): nothing to cork
    finally:
        sock.detach()   # the descriptor stays ours to close


class _Pump:
    """One span, sent from the loop's writability callbacks: one ``sendfile`` per callback
    (the loop's other connections get their turn in between), no task wake-up, timer or
    ``epoll_ctl`` per socket buffer's worth. A stall is caught by one timer, re-armed at
    ``stall_timeout`` past the last progress."""

    __slots__ = ("_sender", "_loop", "_out", "_src", "_offset", "_length", "_progressed",
                 "_watch", "_watching", "done")

    def __init__(self, sender: Sender, out: int, src: int, offset: int, length: int) -> None:
        self._sender = sender
        self._loop = loop = asyncio.get_running_loop()
        self._out, self._src, self._offset, self._length = out, src, offset, length
        self.done: asyncio.Future[None] = loop.create_future()
        self._progressed = loop.time()
        self._watch: asyncio.TimerHandle | None = None
        self._watching = False
        self._write()             # the socket usually has room now: no wait for the first
        if not self.done.done():
            loop.add_writer(out, self._write)
            self._watching = True
            self._watch = loop.call_at(self._progressed + sender.stall_timeout, self._check)

    def _write(self) -> None:
        if self.done.done():
            return
        if self._sender.transport.is_closing():
            self._finish(ConnectionResetError("client went away"))
            return
        try:
            n = os.sendfile(self._out, self._src, self._offset, min(self._length, MAX_CHUNK))
        except BlockingIOError:
            return                # full: the next writability calls again
        except OSError as exc:    # EPIPE, ECONNRESET (ConnectionError), EIO
            self._finish(exc)
            return
        if n == 0:
            self._finish(OSError(f"file ended {self._length} bytes early"))
            return
        self._offset += n
        self._length -= n
        self._sender.sent += n
        self._progressed = self._loop.time()
        if self._length == 0:
            self._finish(None)

    def _check(self) -> None:
        deadline = self._progressed + self._sender.stall_timeout
        if self._loop.time() >= deadline:
            self._finish(ClientStalled(
                f"client read nothing for {self._sender.stall_timeout:g}s"))
        else:
            self._watch = self._loop.call_at(deadline, self._check)

    def _finish(self, exc: BaseException | None) -> None:
        self.stop()
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    def stop(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_writer(self._out)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
