"""An error after a response started is a cut connection, never a second response written
into the body (a client reading up to Content-Length would take it for content)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pullcache.metrics import Metrics
from pullcache.server.keys import METRICS
from pullcache.server.middleware import mark_started, oci_errors, request_context

BODY = b"x" * 1000


async def streams_then_fails(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Length": str(len(BODY) + 100)})
    await resp.prepare(request)
    await resp.write(BODY)
    raise RuntimeError("an unexpected error mid-body")


async def fails_before(request: web.Request) -> web.StreamResponse:
    raise RuntimeError("an unexpected error before any byte")


async def test_error_after_start_cuts_the_connection():
    app = web.Application(middlewares=[request_context, oci_errors])
    app[METRICS] = Metrics()
    app.on_response_prepare.append(mark_started)
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
