"""An error after a blob response started is a cut connection, never a second response
written into the body (a client reading up to Content-Length would take it for content).
``routes._send_blob`` is the one place that decides it; before ``prepare()`` the error
envelope (``middleware.front``) answers as usual."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pullcache.metrics import Metrics
from pullcache.oci import Digest
from pullcache.proxy.answers import BlobAnswer
from pullcache.server.keys import METRICS, SENDFILE
from pullcache.config import loads
from pullcache.gate.identity import AccessControl
from pullcache.server.middleware import front
from pullcache.server.routes import _send_blob
from pullcache.server.sendfile import Sendfile

BODY = b"x" * 1000


class FailingBody:
    """A body that gives its first span, then fails (an unexpected error mid-body)."""

    def __init__(self, path) -> None:
        self.size = len(BODY) + 100
        self.path = path

    async def spans(self, start: int = 0, end: int | None = None, pusher=None):
        fd = open(self.path, "rb")
        try:
            yield fd.fileno(), 0, len(BODY)
            raise RuntimeError("an unexpected error mid-body")
        finally:
            fd.close()

    async def aclose(self) -> None:
        pass


async def test_error_after_start_cuts_the_connection(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(BODY)
    digest = Digest.of(BODY)

    async def streams_then_fails(request: web.Request) -> web.StreamResponse:
        answer = BlobAnswer(digest, FailingBody(path), "hit")
        return await _send_blob(request, answer, {"ETag": f'"{digest}"'})

    async def fails_before(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("an unexpected error before any byte")

    metrics = Metrics()
    app = web.Application(middlewares=[front(AccessControl(loads("", env={}).access), metrics)])
    app[METRICS] = metrics
    app[SENDFILE] = Sendfile()
    app.router.add_get("/stream", streams_then_fails)
    app.router.add_get("/early", fails_before)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 10)     # until the connection ends
        writer.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body == BODY                                   # cut short; nothing appended
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert got.startswith(b"HTTP/1.1 500") and b'"UNKNOWN"' in got
    finally:
        await runner.cleanup()
