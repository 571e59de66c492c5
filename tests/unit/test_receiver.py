"""pullcache.upstream.receiver: a large upstream body is received into our own buffers.

Against an aiohttp server on 127.0.0.1 in the same loop, on both event loops the daemon may
run on (uvloop, and asyncio's own, whose transports differ), plain and behind TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl

import aiohttp
import pytest
import uvloop
from aiohttp import web

from pullcache import errors
from pullcache.upstream import receiver as receiving
from pullcache.upstream.receiver import BlobStream
from tests.support.ports import eventually, free_port
from tests.support.tls import CA

MiB = 1 << 20
LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=LOOPS)
def run(request):
    return LOOPS[request.param]


class Upstream:
    """Serves ``/blob`` with ``handler``; remembers each request's client port."""

    def __init__(self, handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.ports: list[int] = []

    async def __aenter__(self) -> "Upstream":
        app = web.Application()
        app.router.add_get("/blob", self._dispatch)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=self.tls).start()
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/blob"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.ports.append(request.transport.get_extra_info("peername")[1])
        return await self.handler(request)


def serving(data: bytes):
    async def handler(request):
        return web.Response(body=data)
    return handler


async def opened(session: aiohttp.ClientSession, url: str, read_timeout: float = 10.0):
    resp = await session.get(url)
    assert resp.status == 200
    return BlobStream(resp, lambda n: None, read_timeout)


def new_session(tls: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
    # As the app's session (server/app.py): no decompression, 256 KiB reads.
    return aiohttp.ClientSession(auto_decompress=False, read_bufsize=256 << 10,
                                 connector=aiohttp.TCPConnector(ssl=tls) if tls else None)


@contextlib.asynccontextmanager
async def streaming(data: bytes):
    """An upstream serving ``data``, and a ``BlobStream`` open on it (closed afterwards)."""
    async with Upstream(serving(data)) as up, new_session() as session:
        stream = await opened(session, up.url)
        try:
            yield stream
        finally:
            await stream.close()


async def fetch_all(stream: BlobStream) -> list:
    try:
        return [chunk async for chunk in stream.chunks()]
    finally:
        await stream.close()


def test_a_large_body_arrives_whole_in_our_buffers_and_its_connection_is_not_pooled(run):
    data = os.urandom(13 * MiB + 12345)

    async def scenario():
        async with Upstream(serving(data)) as up, new_session() as session:
            chunks = await fetch_all(await opened(session, up.url))
            # Every chunk held until the end: a buffer still viewed is never reused.
            assert b"".join(chunks) == data
            assert any(isinstance(c, memoryview) for c in chunks)
            await fetch_all(await opened(session, up.url))
            assert up.ports[0] != up.ports[1]      # the taken-over connection was closed
    run(scenario())


def test_a_small_body_stays_with_aiohttp_on_a_pooled_connection(run):
    data = os.urandom(receiving.TAKEOVER_MIN - 1)

    async def scenario():
        async with Upstream(serving(data)) as up, new_session() as session:
            for _ in range(2):
                chunks = await fetch_all(await opened(session, up.url))
                assert b"".join(chunks) == data
                assert not any(isinstance(c, memoryview) for c in chunks)
            assert up.ports[0] == up.ports[1]
    run(scenario())


def test_a_large_body_behind_tls(run, tmp_path):
    ca = CA(tmp_path)
    server = ca.server_context("upstream")
    data = os.urandom(9 * MiB + 7)

    async def scenario():
        async with Upstream(serving(data), tls=server) as up, \
                new_session(ca.client_context()) as session:
            chunks = await fetch_all(await opened(session, up.url))
            assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
            assert any(isinstance(c, memoryview) for c in chunks)
    run(scenario())


def test_a_slow_body_is_handed_over_before_a_buffer_fills(run):
    """100 KiB, then the upstream waits until the client has them: held back for a full
    buffer (or a HANDOVER's worth), they would never arrive."""
    size = receiving.TAKEOVER_MIN + MiB
    taken_over, got_first = asyncio.Event(), asyncio.Event()

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Length": str(size)})
        await resp.prepare(request)
        await taken_over.wait()       # not read along with the headers: received by us
        await resp.write(b"a" * (100 << 10))
        await got_first.wait()
        await resp.write(b"b" * (size - (100 << 10)))
        return resp

    async def scenario():
        async with Upstream(handler) as up, new_session() as session:
            stream = await opened(session, up.url)
            taken_over.set()
            received = 0
            try:
                async with asyncio.timeout(10):
                    async for chunk in stream.chunks():
                        received += len(chunk)
                        got_first.set()
            finally:
                await stream.close()
            assert received == size
    run(scenario())


def test_reading_pauses_while_the_consumer_is_behind_and_resumes(run):
    data = os.urandom(40 * MiB)

    async def scenario():
        async with streaming(data) as stream:
            receiver = stream._receiver
            chunks = stream.chunks()
            first = await anext(chunks)
            # Nobody takes the rest: reading stops at the high-water mark, not at 40 MiB.
            await eventually(lambda: receiver._paused, what="reading paused")
            assert receiver._ready_bytes <= receiving.HIGH_WATER + receiving.BUFFER
            rest = [chunk async for chunk in chunks]
        assert bytes(first) + b"".join(rest) == data
    run(scenario())


def test_aiohttp_cannot_resume_a_paused_receiver(run):
    """aiohttp's flow control resumes the transport its protocol holds (its stream reader
    does, as its buffer drains): once taken over, that protocol holds none, or a fill waiting
    for cache room would buffer the whole body (seen in the chaos soak: 64 MiB)."""
    data = os.urandom(24 * MiB)

    async def scenario():
        async with streaming(data) as stream:
            receiver = stream._receiver
            await eventually(lambda: receiver._paused, what="reading paused")
            stream._response.connection.protocol.resume_reading()     # aiohttp's protocol
            assert not receiver._transport.is_reading()
            chunks = [chunk async for chunk in stream.chunks()]
        assert b"".join(chunks) == data
    run(scenario())


def test_buffers_are_reused_once_nothing_views_them(run):
    data = os.urandom(24 * MiB)

    async def scenario():
        digest = hashlib.sha256()
        async with streaming(data) as stream:
            async for chunk in stream.chunks():
                digest.update(chunk)      # and dropped, as the writer thread does
            # Not one per MiB received (24): no more than can be in flight at once.
            assert len(stream._receiver._pool) <= receiving.HIGH_WATER // receiving.BUFFER + 2
        assert digest.digest() == hashlib.sha256(data).digest()
        assert not stream._receiver._pool      # let go at close, not at the next GC
    run(scenario())


def test_a_body_cut_short_is_an_upstream_error(run):
    size = 8 * MiB

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Length": str(size)})
        await resp.prepare(request)
        await resp.write(b"x" * (5 * MiB))
        request.transport.close()
        return resp

    async def scenario():
        async with Upstream(handler) as up, new_session() as session:
            stream = await opened(session, up.url)
            with pytest.raises(errors.UpstreamError) as caught:
                await fetch_all(stream)
            assert not isinstance(caught.value, errors.UpstreamTimeout)
    run(scenario())


def test_a_stalled_body_times_out(run):
    size = 8 * MiB
    release = asyncio.Event()

    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Length": str(size)})
        await resp.prepare(request)
        await resp.write(b"x" * (5 * MiB))
        await release.wait()          # until the client has given up
        return resp

    async def scenario():
        async with Upstream(handler) as up, new_session() as session:
            stream = await opened(session, up.url, read_timeout=0.3)
            try:
                with pytest.raises(errors.UpstreamTimeout):
                    await fetch_all(stream)
            finally:
                release.set()
    run(scenario())
