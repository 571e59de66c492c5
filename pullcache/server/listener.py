"""The listening socket, accepted in batches by us rather than one at a time by libuv.

libuv (under uvloop) accepts one connection per event-loop iteration since 1.45 (libuv
PR #3696, "don't accept() connections in a loop"). On a busy loop an iteration that serves a
few hundred requests takes tens of milliseconds, so when a node rollout opens 1,000
connections at once the last of them wait seconds in the kernel's accept queue (measured: a
p99 of 2-3 s and requests timing out after 5 s, the same with a bare aiohttp app; asyncio's
own loop, which accepts in batches, had none). ``BatchAcceptSite`` reads the listening socket
itself and accepts up to ``ACCEPT_BATCH`` connections each time it is readable, handing each
to aiohttp's protocol factory with ``loop.connect_accepted_socket``.
"""

from __future__ import annotations

import asyncio
import errno
import socket

import structlog
from aiohttp import web
from yarl import URL

log = structlog.get_logger("pullcache.server")

# A node rollout opens hundreds of connections at once: beyond the backlog the kernel drops
# SYNs and clients retry after 1 s, 3 s... It is capped by net.core.somaxconn.
LISTEN_BACKLOG = 2048
ACCEPT_BATCH = 256            # per readiness of the listening socket, as asyncio does (100)
ACCEPT_RETRY_DELAY = 1.0      # out of descriptors: stop accepting this long (asyncio's value)
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class BatchAcceptSite(web.BaseSite):
    """A TCP site (``web.TCPSite``'s role) whose connections are accepted in batches."""

    __slots__ = ("_host", "_port", "_socks", "_connecting")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 backlog: int = LISTEN_BACKLOG) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self._socks: list[socket.socket] = []
        self._connecting: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        return self._socks[0].getsockname()[1] if self._socks else self._port

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host or "0.0.0.0", port=self.port))

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        # Every address the host names, as loop.create_server binds them ("localhost": ::1
        # and 127.0.0.1).
        infos = await loop.getaddrinfo(self._host or None, self._port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        port = self._port
        try:
            for family, _, _, _, address in dict.fromkeys(
                    (i[0], None, None, None, i[4][:2]) for i in infos):
                # SO_REUSEADDR (create_server sets it): a restart does not wait for TIME_WAIT.
                sock = socket.create_server((address[0], port), family=family,
                                            backlog=self._backlog)
                port = port or sock.getsockname()[1]   # port 0: one port for every address
                sock.setblocking(False)
                self._socks.append(sock)
                loop.add_reader(sock.fileno(), self._accept, sock)
        except BaseException:
            self._close()
            raise

    async def stop(self) -> None:
        self._close()
        for task in list(self._connecting):
            task.cancel()
        await super().stop()

    def _close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._socks = []

    def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue          # the client gave up while queued: take the next one
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    log.warning("accept_failed", error=str(exc))
                    return
                # Out of descriptors: leave the rest queued for a while instead of spinning.
                log.warning("accept_paused", error=str(exc), seconds=ACCEPT_RETRY_DELAY)
                loop.remove_reader(sock.fileno())
                loop.call_later(ACCEPT_RETRY_DELAY, self._resume, sock)
                return
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(self._runner.server, conn))
            self._connecting.add(task)
            task.add_done_callback(lambda t, conn=conn: self._connected(t, conn))

    def _connected(self, task: asyncio.Task, conn: socket.socket) -> None:
        self._connecting.discard(task)
        if task.cancelled() or task.exception() is not None:
            conn.close()          # reset before its transport existed: nothing to serve

    def _resume(self, sock: socket.socket) -> None:
        if sock in self._socks:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)
