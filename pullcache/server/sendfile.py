"""Zero-copy file sending on any event loop: ``os.sendfile`` in a pool of threads.

uvloop does not implement ``loop.sendfile``; the socket is non-blocking, so each thread
waits for writability with poll(2) and carries on, until the file range is sent or the
client has stalled for ``stall_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import os
import select
from concurrent.futures import ThreadPoolExecutor

MAX_CHUNK = 1 << 30


def plain_socket(transport: asyncio.BaseTransport | None):
    """The transport's socket if bytes written to it reach the client as they are; None
    under TLS, where sendfile(2) would bypass the encryption and corrupt the stream."""
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    return transport.get_extra_info("socket")


class SendfilePool:
    """Threads are started on demand and spend their time blocked in poll(2) on a client's
    socket, which costs no CPU; a slow client holds one for as long as it reads. The cap
    bounds how many large downloads are sent at once; beyond it, downloads queue."""

    def __init__(self, threads: int = 256, stall_timeout: float = 60.0) -> None:
        self.available = hasattr(os, "sendfile")
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="sendfile")
        self._stall_ms = int(stall_timeout * 1000)
        # Written once by interrupt(): wakes every thread blocked in poll(2) for good.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._interrupted = False

    async def send(self, out_fd: int, in_fd: int, offset: int, count: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._send, out_fd, in_fd, offset, count)

    def _send(self, out_fd: int, in_fd: int, offset: int, count: int) -> None:
        poller = select.poll()
        poller.register(out_fd, select.POLLOUT)
        poller.register(self._wake_r, select.POLLIN)
        while count > 0:
            if self._interrupted:
                raise ConnectionAbortedError("server stopping")
            try:
                sent = os.sendfile(out_fd, in_fd, offset, min(count, MAX_CHUNK))
            except BlockingIOError:
                if not poller.poll(self._stall_ms):
                    raise ConnectionResetError("client stalled") from None
                continue
            if sent == 0:
                raise ConnectionResetError("client went away")
            offset += sent
            count -= sent

    def interrupt(self) -> None:
        """Make every send in progress (and every later one) fail now: the drain's
        deadline has passed, and a thread blocked on a stalled client would otherwise hold
        the process (and the client's fd) for up to ``stall_timeout``."""
        self._interrupted = True
        os.write(self._wake_w, b"!")

    def close(self) -> None:
        if not self._interrupted:
            self.interrupt()
        self._executor.shutdown(wait=False, cancel_futures=True)
