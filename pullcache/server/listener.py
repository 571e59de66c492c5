"""The listening socket, and what one client connection may hold (``[server]``).

- ``max_connections``: the accept loop takes a slot before it accepts, so beyond the cap
  new connections wait in the kernel's listen backlog (and past that are refused by the
  kernel) instead of costing descriptors; the daemon never dies of fd exhaustion.
- ``header_timeout``: a request's headers must arrive within it, counted from the
  connection's start or from the first byte of a later request; a client trickling its
  headers (slowloris) is cut. One sweep a second (or a quarter of the timeout, if shorter)
  checks every connection, rather than a timer armed and cancelled per request: a request
  then costs two attribute writes, not a timer and a ``get_running_loop`` (a getpid(2)).
- ``handshake_timeout`` (TLS only): the handshake must end within it. Until it ends aiohttp
  sees no connection, so the header deadline cannot start; without this bound a client that
  never sends its ClientHello would hold a slot, and a few hundred such sockets hold them all.
- ``keepalive_timeout`` is aiohttp's own (an idle keep-alive connection is closed); the
  runner gets it.
- Connections are accepted in batches: libuv (under uvloop) accepts one connection per
  event-loop iteration since 1.45 (libuv PR #3696). On a busy loop an iteration serving a few
  hundred requests takes tens of milliseconds, so when a node rollout opens 1,000 connections
  at once the last of them would wait seconds in the accept queue (asyncio's own loop accepts
  in batches; docs/benchmarks.md, "Measurements behind the code"). Each time the listening
  socket is readable we take up to ``ACCEPT_BATCH`` connections, slots allowing.

``[::]`` (or ``::``) listens on IPv4 as well (``IPV6_V6ONLY`` off): "every interface" means
both families. The accept loop is vital (``pullcache.tasks``): if it or its socket is lost,
the daemon exits rather than live on accepting nothing. The TLS context can be replaced
(``use_tls``, on SIGHUP): new connections get the new one, open ones keep theirs.

An aiohttp ``BaseSite``, so the runner starts and stops it like its own ``TCPSite``.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..compat.semaphore import take_free_slot
from ..tasks import Loops

log = structlog.get_logger("pullcache.listener")
# A node rollout opens hundreds of connections at once: beyond the backlog the kernel drops
# SYNs and clients retry after 1 s, 3 s... It is capped by net.core.somaxconn.
BACKLOG = 2048
ACCEPT_BATCH = 256          # per readiness of the listening socket (asyncio takes 100)
# Descriptors one downloading client may hold: its socket, the sender's dup of it, the
# blob's file and the sender's dup of that (server/sendfile.py).
FDS_PER_CONNECTION = 4
FDS_RESERVED = 512          # the index, fills, upstream connections, logs
ACCEPT_RETRY = 0.1          # after EMFILE and friends: let connections end first
SWEEP_INTERVAL = 1.0        # how often overdue request headers are looked for
# accept(2) errors that say the listening socket itself is gone: nothing will be accepted
# again, so the accept loop ends (and the daemon exits) instead of retrying.
SOCKET_LOST = {errno.EBADF, errno.ENOTSOCK, errno.EINVAL}


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:   # e.g. an infinite hard limit
            log.warning("fd_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    return soft


def connection_cap(wanted: int, open_files: int) -> int:
    """``wanted``, lowered so that that many busy connections fit in ``open_files``."""
    fit = max((open_files - FDS_RESERVED) // FDS_PER_CONNECTION, 1)
    if fit < wanted:
        log.warning("connection_cap_lowered", wanted=wanted, cap=fit, open_files=open_files)
        return fit
    return wanted


class Listener(web.BaseSite):
    __slots__ = ("_host", "_port", "_cap", "_header_timeout", "_handshake_timeout", "_loops",
                 "_slots", "_guards", "_sock", "_tasks")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int,
                 header_timeout: float, handshake_timeout: float = 10.0, ssl_context=None,
                 loops: Loops | None = None, backlog: int = BACKLOG) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port = host, port
        self._cap = max_connections
        self._header_timeout = header_timeout
        self._handshake_timeout = handshake_timeout
        self._loops = loops or Loops()
        self._slots = asyncio.Semaphore(max_connections)
        self._guards: dict[RequestHandler, _Guard] = {}
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1] if self._sock is not None else self._port

    @property
    def open_connections(self) -> int:
        return len(self._guards)

    def use_tls(self, context) -> None:
        """Handshakes from now on use ``context``; open connections keep the one they got."""
        self._ssl_context = context

    async def start(self) -> None:
        await super().start()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._sock = socket.create_server((self._host, self._port), family=family,
                                          backlog=self._backlog,
                                          dualstack_ipv6=self._host in ("::", ""))
        self._sock.setblocking(False)
        self._hook(self._runner.server)
        accept = self._loops.start(f"accept {self.name}", self._accept, vital=True)
        sweep = self._loops.every(f"header deadlines {self.name}",
                                  min(SWEEP_INTERVAL, self._header_timeout / 4), self._sweep)
        self._server = _Accepting(self._sock, accept, sweep)

    def _hook(self, server: web.Server) -> None:
        """Learn when a connection's request has arrived (its headers are parsed) and when
        it has been answered. Handlers read these two attributes when they are made."""
        guards, factory, handler = self._guards, server.request_factory, server.request_handler

        def request_factory(message, payload, protocol, writer, task):
            guard = guards.get(protocol)
            if guard is not None:
                guard.request_started()
            return factory(message, payload, protocol, writer, task)

        async def request_handler(request):
            try:
                return await handler(request)
            finally:
                guard = guards.get(request.protocol)
                if guard is not None:
                    guard.request_ended()

        server.request_factory = request_factory
        server.request_handler = request_handler

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(self._sock)   # waits for readiness
            except OSError as exc:     # EMFILE, ENFILE, ENOBUFS, ECONNABORTED: not fatal
                self._slots.release()
                if exc.errno in SOCKET_LOST or self._sock.fileno() == -1:
                    raise
                log.warning("accept_failed", error=str(exc))
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            except BaseException:
                self._slots.release()
                raise
            self._serve(loop, conn)
            self._accept_queued(loop)

    def _sweep(self) -> None:
        """Cut the connections whose request headers are overdue."""
        overdue = asyncio.get_running_loop().time() - self._header_timeout
        for guard in [g for g in self._guards.values() if g.waiting_since is not None
                      and g.waiting_since < overdue]:
            guard.cut()

    def _accept_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take what else is queued now, as long as slots remain, without yielding."""
        assert self._sock is not None
        for _ in range(ACCEPT_BATCH - 1):
            if self._slots.locked():
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue            # the client gave up while queued: take the next one
            except OSError as exc:  # out of descriptors: the loop above waits and retries
                log.warning("accept_failed", error=str(exc))
                return
            take_free_slot(self._slots)   # free: checked before the accept
            self._serve(loop, conn)

    def _serve(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        task = loop.create_task(self._connect(loop, conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        conn.setblocking(False)
        guard = _Guard(self._runner.server(), self._done)
        self._guards[guard.handler] = guard   # before its first request can be parsed
        tls = self._ssl_context
        try:
            if tls is None:
                await loop.connect_accepted_socket(lambda: guard, conn)
            else:
                await loop.connect_accepted_socket(
                    lambda: guard, conn, ssl=tls, ssl_handshake_timeout=self._handshake_timeout)
        except (OSError, asyncio.CancelledError) as exc:   # a failed TLS handshake, a reset
            conn.close()
            guard.release()
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _done(self, guard: "_Guard") -> None:
        self._guards.pop(guard.handler, None)
        self._slots.release()


class _Accepting:
    """What ``BaseSite.stop`` closes: the accept loop, the sweep and the listening socket."""

    def __init__(self, sock: socket.socket, *tasks: asyncio.Task) -> None:
        self.sockets = [sock]
        self._tasks = tasks

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for sock in self.sockets:
            sock.close()


class _Guard(asyncio.Protocol):
    """aiohttp's protocol for one connection, wrapped: the header deadline and the slot."""

    __slots__ = ("handler", "waiting_since", "_done", "_active", "_transport", "_loop",
                 "_released")

    def __init__(self, handler: RequestHandler, done) -> None:
        self.handler = handler
        # Loop time since when a request's headers are awaited; None while none is.
        self.waiting_since: float | None = None
        self._done = done
        self._active = 0
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._released = False

    # -- the deadline (``Listener._sweep`` enforces it) -----------------------------------

    def cut(self) -> None:
        self.waiting_since = None
        if self._transport is not None and not self._transport.is_closing():
            log.info("connection_cut", reason="header_timeout",
                     peer=str(self._transport.get_extra_info("peername")))
            self._transport.abort()

    def request_started(self) -> None:
        self.waiting_since = None
        self._active += 1

    def request_ended(self) -> None:
        self._active -= 1

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._done(self)

    # -- asyncio.Protocol, delegated -------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self.waiting_since = self._loop.time()
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._active == 0 and self.waiting_since is None:
            self.waiting_since = self._loop.time()   # a request's first byte: headers due
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.waiting_since = None
        self.release()
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()
