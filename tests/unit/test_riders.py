"""The fill's writer thread sending to readers caught up with it (pullcache/cache/riders.py),
and its digest computed in a thread of its own (pullcache/cache/digester.py), over real
socket pairs and a real temp file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from dataclasses import dataclass

import pytest

from pullcache.cache import riders as riders_mod
from pullcache.cache.digester import Digester
from pullcache.cache.riders import Rider, Riders
from tests.unit.test_sendfile import drain

MiB = 1 << 20


def pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a loopback TCP connection, the server's non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    if sndbuf is not None:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    server.setblocking(False)
    return server, client


def written(path, data: bytes) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, data)
    return fd


def rider_for(server: socket.socket, offset: int, limit: int) -> Rider:
    return Rider(socket.socket(fileno=os.dup(server.fileno())), offset, limit)


async def landed(rider: Rider) -> int:
    return await asyncio.wait_for(rider.landing(), 10)


async def push_all(riders: Riders, data: bytes, fd: int, step: int, start: int = 0) -> None:
    """What the writer thread does: each chunk pushed once written (here: all written)."""
    def run() -> None:
        for offset in range(start, len(data), step):
            riders.push(offset, data[offset:offset + step], fd)
    await asyncio.to_thread(run)


@dataclass
class Seated:
    """A blob written to a temp file, a connection, and one rider seated on it."""
    data: bytes
    fd: int
    server: socket.socket
    client: socket.socket
    riders: Riders
    rider: Rider


@pytest.fixture
def seat(tmp_path):
    made: list[Seated] = []

    def make(size: int, offset: int = 0, limit: int | None = None,
             sndbuf: int | None = None) -> Seated:
        data = os.urandom(size)
        server, client = pair(sndbuf)
        riders = Riders()
        rider = rider_for(server, offset, size if limit is None else limit)
        assert riders.board(rider)
        made.append(Seated(data, written(tmp_path / f"{len(made)}", data), server, client,
                           riders, rider))
        return made[-1]
    yield make
    for seated in made:
        seated.riders.close()
        os.close(seated.fd)
        seated.server.close()
        seated.client.close()


async def test_a_rider_gets_every_byte_but_the_final_one_then_lands(seat):
    s = seat(3 * MiB + 17, limit=3 * MiB + 16)        # the final byte waits for the digest
    reading = asyncio.create_task(asyncio.to_thread(drain, s.client, len(s.data) - 1))
    await push_all(s.riders, s.data, s.fd, 1 * MiB)
    assert await landed(s.rider) == len(s.data) - 1
    assert await reading == s.data[:-1]
    assert s.rider.sock.fileno() == -1                # the rider's descriptor is closed ...
    s.server.sendall(s.data[-1:])                     # ... the client's connection is not
    assert drain(s.client, 1) == s.data[-1:]


async def test_a_rider_seated_behind_the_writer_is_caught_up_from_the_file(seat):
    s = seat(2 * MiB, offset=100)                     # the loop had sent 100 bytes so far
    reading = asyncio.create_task(asyncio.to_thread(drain, s.client, len(s.data) - 100))
    await push_all(s.riders, s.data, s.fd, 1 * MiB, start=1 * MiB)   # the writer is at 1 MiB
    assert await landed(s.rider) == len(s.data)
    assert await reading == s.data[100:]


async def test_a_client_that_reads_nothing_is_landed_once_owed_more_than_lag(seat,
                                                                             monkeypatch):
    monkeypatch.setattr(riders_mod, "LAG", 1 * MiB)
    s = seat(8 * MiB, sndbuf=64 * 1024)
    await push_all(s.riders, s.data, s.fd, 256 * 1024)
    reached = await landed(s.rider)
    assert 0 < reached < len(s.data) - 1 * MiB        # landed well before the end
    assert drain(s.client, reached) == s.data[:reached]   # and what went out is a prefix


async def test_a_cancelled_rider_is_sent_nothing_more_and_its_descriptor_closed(seat):
    s = seat(2 * MiB)
    waiting = asyncio.create_task(s.rider.landing())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert s.rider.cancelled
    await push_all(s.riders, s.data, s.fd, 1 * MiB)
    assert s.rider.sock.fileno() == -1
    s.server.close()
    s.client.settimeout(5)
    assert s.client.recv(10) == b""                   # not one byte reached the client


async def test_a_client_gone_lands_its_rider(seat):
    s = seat(4 * MiB)
    s.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.client.close()                                  # a reset, not a polite close
    await push_all(s.riders, s.data, s.fd, 1 * MiB)
    assert await landed(s.rider) < len(s.data)


async def test_held_bytes_reach_no_rider(seat):
    """A held-back source took over mid-fill (pullcache/cache/handover.py): its bytes wait for
    the digest, so no rider is sent them, and none is seated any more."""
    s = seat(2 * MiB)
    s.riders.hold()
    await push_all(s.riders, s.data, s.fd, 1 * MiB)
    assert await landed(s.rider) == 0
    late = rider_for(s.server, 0, 10)
    assert not s.riders.board(late)
    late.sock.close()
    s.server.close()
    s.client.settimeout(5)
    assert s.client.recv(10) == b""


async def test_one_seat_and_none_once_the_writer_has_ended():
    server, _client = pair()
    riders = Riders()
    first = rider_for(server, 0, 10)
    assert riders.board(first)
    second = rider_for(server, 0, 10)
    assert not riders.board(second)                   # SEATS = 1: the caller sends itself
    second.sock.close()
    riders.close()                                    # the writer ends: everyone lands
    assert await landed(first) == 0
    late = rider_for(server, 0, 10)
    assert not riders.board(late)
    late.sock.close()


def test_the_digester_hashes_a_ring_of_reused_buffers_in_order():
    """The writer's side of the contract: settle(ring - 1) before a buffer is read into
    again. The digest is the whole stream's."""
    data = os.urandom(16 * MiB + 5)
    ring = [bytearray(MiB), bytearray(MiB)]
    digester = Digester(hashlib.sha256())
    for turn, offset in enumerate(range(0, len(data), MiB)):
        buffer = ring[turn % 2]
        piece = data[offset:offset + MiB]
        buffer[:len(piece)] = piece                   # (the socket's recv_into)
        digester.update(memoryview(buffer)[:len(piece)])
        digester.settle(len(ring) - 1)
    assert digester.hexdigest() == hashlib.sha256(data).hexdigest()
    assert not digester._thread.is_alive()
    digester.close()                                  # (again: nothing to do)
