"""Sending cached blobs to misbehaving clients, against the real app in this process (so the
index's pins can be inspected): a client that stops reading is dropped after
``server.send_timeout`` and its file unpinned; an error after the headers cuts the connection
instead of writing an error envelope into the body."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from aiohttp import web

from pullcache.config import loads
from pullcache.oci import Digest
from pullcache.server.app import build_app
from pullcache.server.keys import STORE
from tests.support.ports import eventually, free_port

MiB = 1 << 20


@pytest.fixture
async def served(tmp_path):
    """The app on 127.0.0.1 with a dead upstream (hits never ask it)."""
    config = loads(f"""
[server]
send_timeout = "500ms"
[cache]
dir = "{tmp_path / 'cache'}"
[[upstream]]
host = "dead.example"
url = "http://127.0.0.1:9"
""")
    app = build_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield app, port
    await runner.cleanup()


async def cached(app, size: int) -> tuple[Digest, bytes, object]:
    """A blob cached for ``/v2/x/…`` (linked to that repository: pullcache/proxy/links.py)."""
    data = os.urandom(size)
    digest = Digest.of(data)
    entry = await app[STORE].put_bytes("blob", digest, data,
                                       links=frozenset({("dead.example", "x")}))
    return digest, data, entry


def slow_client(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return sock


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    buf = bytearray()
    try:
        while chunk := sock.recv(MiB):
            buf += chunk
    except ConnectionResetError:
        pass
    return bytes(buf)


def split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


async def test_a_stalled_reader_is_dropped_and_its_file_unpinned(served):
    app, port = served
    store = app[STORE]
    digest, data, entry = await cached(app, 32 * MiB)
    sock = slow_client(port, f"/v2/x/blobs/{digest}")
    try:
        await eventually(lambda: store.index._is_pinned(entry.relpath), what="the pin")
        # The client reads nothing; after send_timeout the daemon lets go of the file.
        await eventually(lambda: not store.index._is_pinned(entry.relpath), what="the unpin")
        head, body = split(await asyncio.to_thread(read_all, sock))
        assert head.startswith(b"HTTP/1.1 200") and len(body) < len(data)
        assert data.startswith(body)
    finally:
        sock.close()
    # Nothing holds it now: eviction may remove it.
    assert entry.relpath in await asyncio.to_thread(store.index.evict_to, 0)
    assert not store.path(entry).exists()


async def test_an_error_after_the_headers_cuts_the_connection(served):
    app, port = served
    store = app[STORE]
    digest, data, entry = await cached(app, 16 * MiB)
    sock = slow_client(port, f"/v2/x/blobs/{digest}")
    try:
        await eventually(lambda: store.index._is_pinned(entry.relpath), what="the pin")
        first = await asyncio.to_thread(sock.recv, 4096)   # the headers have gone out
        assert first.startswith(b"HTTP/1.1 200")
        os.truncate(store.path(entry), MiB)     # the file shrinks under the response
        rest = await asyncio.to_thread(read_all, sock)
        head, body = split(first + rest)
        assert b"content-length: %d" % len(data) in head.lower()
        assert len(body) < len(data)            # short: a broken transfer ...
        assert b'"errors"' not in body          # ... with no error envelope in it
        assert data.startswith(body[:MiB])
    finally:
        sock.close()
    await eventually(lambda: not store.index._is_pinned(entry.relpath), what="the unpin")
    # The daemon carries on serving.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_client_gone_mid_blob_releases_its_pin_and_the_next_client_is_whole(served):
    app, port = served
    store = app[STORE]
    digest, data, entry = await cached(app, 16 * MiB)
    sock = slow_client(port, f"/v2/x/blobs/{digest}")
    await eventually(lambda: store.index._is_pinned(entry.relpath), what="the pin")
    assert await asyncio.to_thread(sock.recv, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()                                # a reset, mid-body
    # The next connection may get the same descriptor number in the daemon: it must see
    # exactly its own answer.
    other_digest, other, _ = await cached(app, 4 * MiB)
    got = await asyncio.to_thread(read_all, slow_client(port, f"/v2/x/blobs/{other_digest}"))
    head, body = split(got)
    assert head.startswith(b"HTTP/1.1 200") and body[:len(other)] == other
    await eventually(lambda: not store.index._is_pinned(entry.relpath), what="the unpin")
