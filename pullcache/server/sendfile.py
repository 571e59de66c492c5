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


class SendfilePool:
    """Threads are started on demand and spend their time blocked in poll(2) on a client's
    socket, which costs no CPU; a slow client holds one for as long as it reads. The cap
    bounds how many large downloads are sent at once; beyond it, downloads queue."""

    def __init__(self, threads: int = 256, stall_timeout: float = 60.0) -> None:
        self.available = hasattr(os, "sendfile")
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="sendfile")
        self._stall_ms = int(stall_timeout * 1000)

    async def send(self, out_fd: int, in_fd: int, offset: int, count: int) -> None:
        if out_fd < 0:   # the transport was closed (the client left) between two sends
            raise ConnectionResetError("client went away")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._send, out_fd, in_fd, offset, count)

    def _send(self, out_fd: int, in_fd: int, offset: int, count: int) -> None:
        poller = select.poll()
        poller.register(out_fd, select.POLLOUT)
        while count > 0:
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

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
