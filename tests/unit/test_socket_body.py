"""pullcache.upstream.socket_body: a fill's writer thread reads a plain-TCP upstream body
itself (``Writer.drain``), and the loop only hears how far the temp file has got.

Real fills (``cache.fill.Fills`` on a real store) of real upstream answers (an aiohttp
server on 127.0.0.1), on both event loops the daemon may run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import ssl
import threading
import time

import aiohttp
import pytest
from aiohttp import web

from pullcache import errors
from pullcache.cache.fill import Candidate, Fills, Slots
from pullcache.cache.store import BlobStore, Budget
from pullcache.compat import aiohttp_takeover
from pullcache.oci import Digest
from pullcache.upstream.receiver import BlobStream
from tests.support.ports import eventually
from tests.support.tls import CA
from tests.unit.test_receiver import LOOPS, Upstream, new_session, serving

MiB = 1 << 20


@pytest.fixture(params=LOOPS)
def run(request):
    return LOOPS[request.param]


class Origin:
    """Opens ``url`` as a ``BlobStream``, as ``RegistryClient.open_blob`` does; remembers
    each stream and the threads its bytes were received on."""

    def __init__(self, session: aiohttp.ClientSession, url: str, read_timeout: float = 10.0):
        self.session, self.url, self.read_timeout = session, url, read_timeout
        self.streams: list[BlobStream] = []
        self.threads: set[str] = set()
        self.counted = 0

    def candidate(self) -> Candidate:
        return Candidate("origin", self._open)

    async def _open(self) -> BlobStream:
        resp = await self.session.get(self.url)
        assert resp.status == 200
        stream = BlobStream(resp, self._on_bytes, self.read_timeout)
        self.streams.append(stream)
        return stream

    def _on_bytes(self, n: int) -> None:
        self.threads.add(threading.current_thread().name)
        self.counted += n


@contextlib.asynccontextmanager
async def filling(tmp_path, handler, tls: ssl.SSLContext | None = None,
                  client_tls: ssl.SSLContext | None = None):
    """Fills on a fresh store, an upstream answering with ``handler``, and a session."""
    store = BlobStore(tmp_path / "cache", Budget(1 << 40))
    await store.open()
    fills = Fills(store, deadline=60)
    try:
        async with Upstream(handler, tls=tls) as up, new_session(client_tls) as session:
            yield fills, store, up, session
    finally:
        await fills.close()
        await store.close()


async def read_all(fill) -> bytes:
    return b"".join([chunk async for chunk in fill.read()])


def start_fill(fills: Fills, origin: Origin, digest: Digest):
    """A blob fill of ``digest`` with ``origin`` its one candidate."""
    fill, _ = fills.get_or_start("blob", digest, [origin.candidate()])
    return fill


def held(size: int, first: int, release: asyncio.Event, *, cut: bool = False):
    """An upstream answer of ``size`` bytes that sends ``first`` of them, then waits for
    ``release`` before the rest (or, ``cut``, closes the connection there)."""
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Length": str(size)})
        await resp.prepare(request)
        await resp.write(b"x" * first)
        if cut:
            request.transport.close()
            return resp
        await release.wait()
        await resp.write(b"x" * (size - first))
        return resp
    return handler


def test_a_plain_body_is_received_by_the_fill_s_own_thread(run, tmp_path):
    data = os.urandom(13 * MiB + 4321)

    async def scenario():
        async with filling(tmp_path, serving(data)) as (fills, store, up, session):
            origin = Origin(session, up.url)
            fill = start_fill(fills, origin, Digest.of(data))
            assert await read_all(fill) == data
            result = await asyncio.wait_for(fill.result, 10)
            assert result.entry is not None and result.size == len(data)
            assert origin.streams[0]._thread_body is not None
            assert "fill-writer" in origin.threads    # not the loop's thread
            assert origin.counted == len(data)
            assert fills.slots.free == Slots().free   # given back
    run(scenario())


def test_behind_tls_the_body_stays_on_the_loop(run, tmp_path):
    """uvloop keeps its TLS state in its own protocol: no blocking ssl socket can take
    over, so a TLS body is received on the loop (``receiver.Receiver``)."""
    ca = CA(tmp_path)
    server = ca.server_context("upstream")
    data = os.urandom(9 * MiB + 7)

    async def scenario():
        async with filling(tmp_path, serving(data), server, ca.client_context()) as \
                (fills, store, up, session):
            origin = Origin(session, up.url)
            fill = start_fill(fills, origin, Digest.of(data))
            got = await read_all(fill)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            assert origin.streams[0]._thread_body is None
            assert origin.threads == {threading.current_thread().name}
    run(scenario())


def test_without_a_descriptor_to_spare_the_body_stays_on_the_loop(run, tmp_path,
                                                                  monkeypatch):
    data = os.urandom(6 * MiB)

    def exhausted(self):
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr(aiohttp_takeover.Detached, "socket", exhausted)

    async def scenario():
        async with filling(tmp_path, serving(data)) as (fills, store, up, session):
            origin = Origin(session, up.url)
            fill = start_fill(fills, origin, Digest.of(data))
            assert await read_all(fill) == data
            assert origin.streams[0]._thread_body is None
            assert origin.threads == {threading.current_thread().name}
    run(scenario())


def test_a_slow_upstream_s_bytes_reach_readers_before_the_body_ends(run, tmp_path):
    """100 KiB, then the upstream waits until a reader has them: far less than a wake-up
    step (fill.WAKE_STEP), so only the thread's "the source fell quiet" brings them."""
    size = 8 * MiB
    release = asyncio.Event()

    async def scenario():
        answer = held(size, 100 << 10, release)
        async with filling(tmp_path, answer) as (fills, store, up, session):
            origin = Origin(session, up.url)
            fill = start_fill(fills, origin, Digest.of(b"x" * size))
            got = 0
            async with asyncio.timeout(10):
                async for chunk in fill.read():
                    got += len(chunk)
                    release.set()
            assert got == size
            assert origin.streams[0]._thread_body is not None
    run(scenario())


def test_a_stalled_body_fails_the_fill_with_upstream_timeout(run, tmp_path):
    size = 8 * MiB
    release = asyncio.Event()

    async def scenario():
        async with filling(tmp_path, held(size, 5 * MiB, release)) as (fills, store, up, session):
            origin = Origin(session, up.url, read_timeout=0.3)
            fill = start_fill(fills, origin, Digest.of(b"x" * size))
            began = time.monotonic()
            try:
                with pytest.raises(errors.UpstreamTimeout):
                    await asyncio.wait_for(fill.result, 10)
            finally:
                release.set()     # (before the server's clean-up waits for its handler)
            assert time.monotonic() - began < 5
            assert origin.streams[0]._thread_body is not None
            await eventually(lambda: not list(store.tmp.iterdir()), what="temp removed")
    run(scenario())


def test_a_body_cut_short_fails_the_fill_with_an_upstream_error(run, tmp_path):
    size = 8 * MiB

    async def scenario():
        answer = held(size, 5 * MiB, asyncio.Event(), cut=True)
        async with filling(tmp_path, answer) as (fills, store, up, session):
            origin = Origin(session, up.url)
            fill = start_fill(fills, origin, Digest.of(b"x" * size))
            with pytest.raises(errors.UpstreamError) as caught:
                await asyncio.wait_for(fill.result, 10)
            assert not isinstance(caught.value, errors.UpstreamTimeout)
            assert origin.streams[0]._thread_body is not None
            await eventually(lambda: not list(store.tmp.iterdir()), what="temp removed")
    run(scenario())


def test_wrong_bytes_fail_the_fill_and_nothing_is_cached(run, tmp_path):
    data = os.urandom(6 * MiB)
    wanted = Digest.of(data[:-1] + bytes([data[-1] ^ 1]))

    async def scenario():
        async with filling(tmp_path, serving(data)) as (fills, store, up, session):
            origin = Origin(session, up.url)
            fill = start_fill(fills, origin, wanted)
            with pytest.raises(errors.DigestMismatch):
                await asyncio.wait_for(fill.result, 10)
            assert origin.streams[0]._thread_body is not None
            await eventually(lambda: len(fills) == 0, what="the fill cleaned up")
            assert await store.stat("blob", wanted) is None
            assert not list(store.tmp.iterdir())
    run(scenario())


def test_fills_beyond_the_thread_bound_are_received_on_the_loop(run, tmp_path):
    size = 8 * MiB
    release = asyncio.Event()

    async def scenario():
        async with filling(tmp_path, held(size, MiB, release)) as (fills, store, up, session):
            fills.slots = Slots(1)
            first, second = Origin(session, up.url), Origin(session, up.url + "?2")
            # Two digests, so two fills, both in flight at once.
            a = start_fill(fills, first, Digest.of(b"x" * size))
            b = start_fill(fills, second, Digest.of(b"y"))
            await eventually(lambda: a.written > 0 and b.written > 0, what="both filling")
            assert fills.slots.free == 0
            # Whichever answered first has the thread; the other is received on the loop.
            threaded = [o for o in (first, second) if o.streams[0]._thread_body is not None]
            assert len(threaded) == 1
            looped = second if threaded == [first] else first
            assert looped.threads == {threading.current_thread().name}
            release.set()
            assert len(await read_all(a)) == size
            with pytest.raises(errors.DigestMismatch):
                await asyncio.wait_for(b.result, 10)   # (same bytes, another digest)
            assert looped.counted == size
            await eventually(lambda: len(fills) == 0, what="both ended")
            assert fills.slots.free == 1
    run(scenario())


def test_closing_ends_a_fill_whose_thread_waits_on_a_silent_upstream(run, tmp_path):
    size = 8 * MiB
    release = asyncio.Event()

    async def scenario():
        async with filling(tmp_path, held(size, MiB, release)) as (fills, store, up, session):
            origin = Origin(session, up.url, read_timeout=60)
            fill = start_fill(fills, origin, Digest.of(b"x" * size))
            await eventually(lambda: fill.written >= MiB, what="the first MiB written")
            began = time.monotonic()
            try:
                await asyncio.wait_for(fills.close(), 10)
            finally:
                release.set()
            assert time.monotonic() - began < 5      # not the 60 s read timeout
            await eventually(lambda: not any(t.name == "fill-writer" and t.is_alive()
                                             for t in threading.enumerate()),
                             what="the writer thread ended")
    run(scenario())
