"""pullcache.server.listener: connections accepted in batches, on every address of a host."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from pullcache.server.listener import BatchAcceptSite


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


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def test_a_burst_of_connections_is_served_in_full(runner):
    site = BatchAcceptSite(runner, "127.0.0.1", 0)
    await site.start()
    opened = [await asyncio.open_connection("127.0.0.1", site.port) for _ in range(400)]
    for _, writer in opened:    # every one sends before any is answered
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(60):
        replies = [await reader.read() for reader, _ in opened]
    for _, writer in opened:
        writer.close()
    assert all(r.startswith(b"HTTP/1.1 200") and r.endswith(b"ok") for r in replies)
    assert site.name == f"http://127.0.0.1:{site.port}"


async def test_localhost_is_served_on_each_of_its_addresses(runner):
    site = BatchAcceptSite(runner, "localhost", 0)
    await site.start()
    hosts = {f"[{i[4][0]}]" if i[0] == socket.AF_INET6 else i[4][0]
             for i in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    async with aiohttp.ClientSession() as session:
        for host in hosts:
            async with session.get(f"http://{host}:{site.port}/") as r:
                assert r.status == 200 and await r.text() == "ok"


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_address_is_served(runner):
    site = BatchAcceptSite(runner, "::1", 0)
    await site.start()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://[::1]:{site.port}/") as r:
            assert r.status == 200


async def test_stop_closes_the_listening_socket(runner):
    site = BatchAcceptSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site.port
    await site.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
