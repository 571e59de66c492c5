"""pullcache.server.listener: the fd budget, and connections accepted in batches within the
cap; the daemon's timeouts are exercised in tests/integration/test_connections.py."""

from __future__ import annotations

import asyncio
import resource
import socket

import aiohttp
import pytest
from aiohttp import web

from pullcache.server.listener import (FDS_PER_CONNECTION, FDS_RESERVED, Listener,
                                       connection_cap, raise_open_files_limit)
from tests.support.ports import eventually, settle


def test_the_cap_is_kept_when_the_fd_limit_allows_it():
    assert connection_cap(1000, FDS_RESERVED + 1000 * FDS_PER_CONNECTION) == 1000


def test_the_cap_is_lowered_to_what_the_fd_limit_allows():
    assert connection_cap(4096, FDS_RESERVED + 100 * FDS_PER_CONNECTION) == 100
    assert connection_cap(4096, 10) == 1     # never zero: the daemon still serves


def test_the_soft_fd_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024, hard), hard))
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- the socket: batches of accepts ------------------------------------------------------------

@pytest.fixture
async def runner():
    async def hello(request):
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    yield runner
    await runner.cleanup()


def listener(runner, host: str = "127.0.0.1", cap: int = 4096) -> Listener:
    return Listener(runner, host, 0, max_connections=cap, header_timeout=10)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def test_a_burst_of_connections_is_served_in_full(runner):
    site = listener(runner)
    await site.start()
    opened = [await asyncio.open_connection("127.0.0.1", site.port) for _ in range(400)]
    for _, writer in opened:    # every one sends before any is answered
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(60):
        replies = [await reader.read() for reader, _ in opened]
    for _, writer in opened:
        writer.close()
    assert all(r.startswith(b"HTTP/1.1 200") and r.endswith(b"ok") for r in replies)
    await site.stop()


async def test_a_batch_takes_no_more_connections_than_the_cap(runner):
    site = listener(runner, cap=3)
    await site.start()
    opened = [await asyncio.open_connection("127.0.0.1", site.port) for _ in range(10)]
    await eventually(lambda: site.open_connections >= 3, what="3 connections taken")
    await settle()               # the rest stay queued in the kernel, however long we wait
    assert site.open_connections == 3
    for _, writer in opened:
        writer.close()
    await site.stop()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_address_is_served(runner):
    site = listener(runner, "::1")
    await site.start()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://[::1]:{site.port}/") as r:
            assert r.status == 200
    await site.stop()


async def test_stop_closes_the_listening_socket(runner):
    site = listener(runner)
    await site.start()
    port = site.port
    await site.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
