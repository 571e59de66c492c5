"""pullcache.server.sendfile: non-blocking sendfile from the loop, on descriptors it owns.

Real sockets (a socketpair) and real files; the transport is a stand-in exposing what the
sender asks of one. The point of each test: a descriptor number the sender was given may be
closed and handed to another file or connection while the sender waits for a slow client,
and its bytes must still come from, and go to, the right place.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest

from pullcache.server.sendfile import ClientStalled, Sender
from tests.support.ports import eventually

MiB = 1 << 20


class FakeTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closing = False

    def get_extra_info(self, name: str):
        return {"socket": self.sock}.get(name)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


def pair() -> tuple[socket.socket, socket.socket]:
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    server.setblocking(False)
    return server, client


def drain(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes (or until EOF) in a thread-friendly blocking loop."""
    sock.settimeout(10)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), MiB))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def one_span(fd: int, offset: int, length: int):
    yield fd, offset, length



@pytest.fixture
def files(tmp_path):
    a = os.urandom(4 * MiB)
    b = os.urandom(4 * MiB)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    return tmp_path, a, b


async def test_a_file_fd_closed_and_reused_while_waiting_sends_the_original_bytes(files):
    tmp, a, b = files
    server, client = pair()
    sender = Sender(FakeTransport(server), None, stall_timeout=10)
    fd = os.open(tmp / "a", os.O_RDONLY)
    task = asyncio.create_task(sender.send(None, one_span(fd, 0, len(a))))
    await eventually(lambda: sender.sent > 0)           # the socket is full: it waits
    assert not task.done()
    os.close(fd)                                       # the body lets go of its fd ...
    reused = os.open(tmp / "b", os.O_RDONLY)           # ... and the number is taken again
    try:
        assert reused == fd
        got = await asyncio.to_thread(drain, client, len(a))
        await asyncio.wait_for(task, 10)
        assert got == a
    finally:
        os.close(reused)
        server.close()
        client.close()


async def test_a_socket_fd_closed_and_reused_while_waiting_gets_no_stray_bytes(files):
    tmp, a, _ = files
    server, client = pair()
    transport = FakeTransport(server)
    sender = Sender(transport, None, stall_timeout=10)
    fd = os.open(tmp / "a", os.O_RDONLY)
    task = asyncio.create_task(sender.send(None, one_span(fd, 0, len(a))))
    await eventually(lambda: sender.sent > 0)
    number = server.fileno()
    server.close()                                     # the loop closes the client's socket
    transport.closing = True
    other_server, other_client = socket.socketpair()   # the next client gets the number
    try:
        assert number in (other_server.fileno(), other_client.fileno())
        got = await asyncio.to_thread(drain, client, len(a))   # frees room: the sender wakes
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(task, 10)
        assert len(got) < len(a) and a.startswith(got)
        other_client.setblocking(False)
        other_server.setblocking(False)
        for s in (other_client, other_server):
            with pytest.raises(BlockingIOError):
                s.recv(1)                              # not one byte of the blob
    finally:
        os.close(fd)
        client.close()
        other_server.close()
        other_client.close()


async def test_a_client_that_reads_nothing_is_dropped_after_the_stall_timeout(files):
    tmp, a, _ = files
    server, client = pair()
    sender = Sender(FakeTransport(server), None, stall_timeout=0.2)
    fd = os.open(tmp / "a", os.O_RDONLY)
    before = set(os.listdir("/proc/self/fd"))
    try:
        with pytest.raises(ClientStalled):
            await asyncio.wait_for(sender.send(None, one_span(fd, 0, len(a))), 10)
        assert 0 < sender.sent < len(a)
        assert set(os.listdir("/proc/self/fd")) <= before   # its dups are closed
    finally:
        os.close(fd)
        server.close()
        client.close()


async def test_a_client_that_disconnects_mid_send_ends_the_send(files):
    tmp, a, _ = files
    server, client = pair()
    sender = Sender(FakeTransport(server), None, stall_timeout=10)
    fd = os.open(tmp / "a", os.O_RDONLY)
    task = asyncio.create_task(sender.send(None, one_span(fd, 0, len(a))))
    await eventually(lambda: sender.sent > 0)
    client.close()                                     # the peer is gone
    try:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(task, 10)
    finally:
        os.close(fd)
        server.close()


def paced(sock: socket.socket, n: int, turn: threading.Event) -> bytes:
    """Read ``n`` bytes, 64 KiB each time the loop's other task has turned, so the sender
    can only move a socket buffer's worth ahead of that task. A loop that stops turning for
    2 s (a sender holding it) is drained without pacing, so the test ends and says so."""
    sock.settimeout(10)
    buf = bytearray()
    pacing = True
    while len(buf) < n:
        if pacing and not turn.wait(2):
            pacing = False
        turn.clear()
        chunk = sock.recv(min(n - len(buf), 64 * 1024 if pacing else MiB))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def test_a_fast_client_gets_every_span_and_the_loop_stays_responsive(files):
    """Responsive: the sender gives the loop back whenever the socket is full, so another
    task runs between every two socket buffers' worth of body, inside a span as well."""
    tmp, a, b = files
    server, client = pair()
    sender = Sender(FakeTransport(server), None, stall_timeout=10)
    fa, fb = os.open(tmp / "a", os.O_RDONLY), os.open(tmp / "b", os.O_RDONLY)
    seen: list[int] = []          # sender.sent at each turn of the other task
    turn, stop = threading.Event(), threading.Event()

    async def ticker():
        while not stop.is_set():
            seen.append(sender.sent)
            turn.set()
            await asyncio.sleep(0)

    async def spans():
        yield fa, 10, MiB
        yield fb, 0, len(b)

    total = MiB + len(b)
    tick_task = asyncio.create_task(ticker())
    try:
        reader = asyncio.create_task(asyncio.to_thread(paced, client, total, turn))
        await asyncio.wait_for(sender.send(None, spans()), 10)
        got = await reader
        assert got == a[10:10 + MiB] + b
        # Between two turns: what the socket holds (64 KiB asked, the kernel doubles it)
        # plus the reads that ran meanwhile; far less than a span.
        steps = [after - before for before, after in zip(seen, seen[1:])]
        assert seen[-1] == total and max(steps) <= 512 * 1024, \
            f"{max(steps)} bytes went out while the loop did not turn"
    finally:
        stop.set()
        await tick_task
        os.close(fa)
        os.close(fb)
        server.close()
        client.close()


async def test_a_tcp_body_goes_out_corked_and_its_tail_is_not_held_back(files):
    """TCP_CORK while the spans go out (full segments, as nginx's tcp_nopush), lifted at
    the end: a keep-alive client gets the last partial segment now, not when the kernel's
    200 ms cork timer fires."""
    tmp, a, _ = files
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    corked: list[int] = []

    async def spans():
        yield fa, 0, MiB
        corked.append(server.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
        yield fa, MiB, 1000          # a tail shorter than a segment

    fa = os.open(tmp / "a", os.O_RDONLY)
    try:
        reader = asyncio.create_task(asyncio.to_thread(drain, client, MiB + 1000))
        await asyncio.wait_for(Sender(FakeTransport(server), None, 10).send(None, spans()), 10)
        assert corked == [1]
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
        assert await reader == a[:MiB + 1000]
    finally:
        os.close(fa)
        server.close()
        client.close()


class TlsTransport(FakeTransport):
    """A TLS transport: its raw socket must never be written to directly."""

    def get_extra_info(self, name: str):
        return {"socket": self.sock, "ssl_object": object()}.get(name)


class Collected:
    """Stands in for the StreamResponse the copied path writes through."""

    def __init__(self) -> None:
        self.body = bytearray()

    async def write(self, data: bytes) -> None:
        self.body += data


async def test_a_tls_connection_gets_the_spans_copied_through_the_response(files):
    tmp, a, b = files
    server, client = pair()
    resp = Collected()
    sender = Sender(TlsTransport(server), resp, stall_timeout=10)
    fa, fb = os.open(tmp / "a", os.O_RDONLY), os.open(tmp / "b", os.O_RDONLY)

    async def spans():
        yield fa, 5, 3 * MiB
        yield fb, 0, 10

    try:
        await asyncio.wait_for(sender.send(None, spans()), 10)
        assert bytes(resp.body) == a[5:5 + 3 * MiB] + b[:10]
        assert sender.sent == 3 * MiB + 10
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(1)                      # nothing went around the TLS layer
    finally:
        os.close(fa)
        os.close(fb)
        server.close()
        client.close()


class PseudoSocket:
    """What uvloop's transport gives as its socket: the descriptor *number* it had, still
    answered by ``fileno()`` after the transport closed it."""

    def __init__(self, sock: socket.socket) -> None:
        self.number = sock.fileno()

    def fileno(self) -> int:
        return self.number


class HeadersPending(FakeTransport):
    """A transport still holding the response's headers: the sender waits for them to go
    out (``drain``) before it sends from its own dup of the socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(PseudoSocket(sock))
        self.drained = asyncio.Event()

    def get_write_buffer_size(self) -> int:
        return 0 if self.drained.is_set() else 100

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 16 * 1024, 64 * 1024

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    async def drain(self) -> None:     # the response's writer
        await self.drained.wait()


async def test_a_socket_closed_while_the_headers_drain_is_never_dupped(files):
    """The number is another client's TCP connection by the time the drain ends, corked by
    its own sender: this sender must not touch it (a dup would uncork it at the end, and
    any byte would land in the wrong body)."""
    tmp, a, _ = files
    server, client = pair()
    transport = HeadersPending(server)
    sender = Sender(transport, None, stall_timeout=10)
    fd = os.open(tmp / "a", os.O_RDONLY)
    listener = socket.create_server(("127.0.0.1", 0))
    task = asyncio.create_task(sender.send(transport, one_span(fd, 0, len(a))))
    await eventually(lambda: transport.drained._waiters, what="sender waiting for headers")
    number = server.fileno()
    server.close()                                     # the client reset: the loop closes
    transport.closing = True
    other = socket.create_connection(listener.getsockname())   # the next client's socket
    peer, _ = listener.accept()
    try:
        assert other.fileno() == number
        other.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)   # its sender corked it
        transport.drained.set()                        # the drain ends (the close woke it)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(task, 10)
        assert other.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 1
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(1)                               # not one byte of the blob
    finally:
        os.close(fd)
        for s in (client, other, peer, listener):
            s.close()
