"""Run an aiohttp application on 127.0.0.1 in a background thread with its own event loop.

Shared plumbing for TokenRealm and FaultProxy: both must be usable from synchronous
tests *and* from async tests (whose loop must never be blocked by the server), so
the server lives on a private loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web

T = TypeVar("T")


class ThreadedApp:
    """Base class: subclasses implement :meth:`make_app` (called on the server loop).

    ``start()`` returns once the socket is listening; ``stop()`` shuts the server
    down and joins the thread. Both are idempotent. Usable as a context manager.
    """

    host_ip = "127.0.0.1"
    thread_name = "aiohttp-thread"
    shutdown_timeout = 2.0

    def __init__(self, *, port: int = 0) -> None:
        self._requested_port = port
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None

    # -- to override -------------------------------------------------------
    async def make_app(self) -> web.Application:  # pragma: no cover - abstract
        raise NotImplementedError

    async def on_stop(self) -> None:
        """Hook run on the server loop before the runner is cleaned up (also after a failed start)."""

    # -- public -------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (only valid after start())."""
        if self.port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host_ip}:{self.port}"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (only valid after start())."""
        return self.url.removeprefix("http://")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._loop

    def start(self) -> "ThreadedApp":
        if self._thread is not None:
            return self
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=self.thread_name, daemon=True)
        self._thread.start()
        try:
            ready.result(timeout=30)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            raise
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed() and self._stopped is not None:
            loop.call_soon_threadsafe(self._stopped.set)
        thread.join(timeout=30)
        self._thread = None
        self._loop = None

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run plain callable ``fn(*args)`` on the server loop and return its result."""

        async def wrapper() -> T:
            return fn(*args)

        return self.run_coro(wrapper(), timeout=timeout)

    def run_coro(self, coro: Awaitable[T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the server loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------
    def _run(self, ready: "concurrent.futures.Future[None]") -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # surfaced through `ready` if start-up failed
            if not ready.done():
                ready.set_exception(exc)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _serve(self, ready: "concurrent.futures.Future[None]") -> None:
        self._stopped = asyncio.Event()
        app = await self.make_app()
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        self._runner = runner
        try:
            # A restart binds the port it had before, so URLs handed out stay valid.
            port = self.port if self.port is not None else self._requested_port
            site = web.TCPSite(runner, self.host_ip, port, reuse_address=True)
            await site.start()
            self.port = runner.addresses[0][1]
            ready.set_result(None)
            await self._stopped.wait()
        finally:
            try:
                await self.on_stop()
            finally:
                await runner.cleanup()
