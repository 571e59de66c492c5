"""Many and slow clients against the real daemon: the header timeout cuts a client that
trickles its headers, an idle keep-alive connection is closed, the connection cap makes
further connections wait in the backlog until a slot frees, and sockets that never start
their TLS handshake are let go in time; and one ``[::]`` listener serves both families."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.http import request
from tests.support.ports import wait_until
from tests.support.tls import CA

PING = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def daemon(tmp_path, registry):
    started: list[Pullcache] = []

    def start(listen_host: str = "127.0.0.1", **server) -> Pullcache:
        pc = Pullcache(tmp_path / f"pc{len(started)}",
                       [UpstreamSpec(registry.host, registry.url, default=True)],
                       server=server, listen_host=listen_host)
        pc.workdir.mkdir()
        started.append(pc)
        return pc.start()
    yield start
    for pc in started:
        pc.stop()


def connect(pc: Pullcache) -> socket.socket:
    return socket.create_connection(("127.0.0.1", pc.port), timeout=30)


def closed_by_server(sock: socket.socket, timeout: float = 30) -> bool:
    """Read until the server closes (True) or ``timeout`` passes (False)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


def accept_queue(port: int) -> int:
    """Connections the kernel holds for the listening socket on ``port`` that the daemon has
    not accepted (a listening socket's rx_queue in /proc/net/tcp, what ``ss -lt`` shows
    as Recv-Q)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "0A" and int(local.split(":")[1], 16) == port:   # 0A: LISTEN
            return int(queues.split(":")[1], 16)
    raise AssertionError(f"nothing listens on port {port}")


def answered(sock: socket.socket) -> bytes:
    sock.sendall(PING)
    return sock.recv(65536)


def test_a_client_trickling_its_headers_is_cut(daemon):
    pc = daemon(header_timeout="1s")
    sock = connect(pc)
    began = time.monotonic()
    cut = False
    try:
        for byte in PING[:-2]:                  # one byte at a time, never finishing
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    cut = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut = True
                break
    finally:
        sock.close()
    assert cut, f"still connected after {time.monotonic() - began:.1f}s of trickled headers"
    assert pc.events("connection_cut")[0]["reason"] == "header_timeout"
    # A prompt client on the next connection is served, and so is its next request.
    with connect(pc) as ok:
        assert answered(ok).startswith(b"HTTP/1.1 200")
        assert answered(ok).startswith(b"HTTP/1.1 200")


def test_an_idle_keep_alive_connection_is_closed(daemon):
    pc = daemon(keepalive_timeout="1s", header_timeout="60s")
    with connect(pc) as sock:
        assert answered(sock).startswith(b"HTTP/1.1 200")
        assert closed_by_server(sock), "the idle connection was kept open"


def test_connections_beyond_the_cap_wait_for_a_free_slot(daemon):
    pc = daemon(max_connections=2, header_timeout="60s", keepalive_timeout="60s")
    first, second = connect(pc), connect(pc)
    try:
        assert answered(first).startswith(b"HTTP/1.1 200")
        assert answered(second).startswith(b"HTTP/1.1 200")
        assert accept_queue(pc.port) == 0
        # The third connects (the kernel's backlog holds it) but is not accepted: after it
        # arrived the daemon answered another request, so its loop has seen the listening
        # socket readable, and still the connection waits in the backlog ...
        third = connect(pc)
        third.sendall(PING)
        wait_until(lambda: accept_queue(pc.port) == 1, 10, "the third in the backlog")
        assert answered(second).startswith(b"HTTP/1.1 200")
        assert accept_queue(pc.port) == 1, "the third was accepted beyond the cap"
        # ... until a slot frees: then it is accepted, and answered.
        first.close()
        wait_until(lambda: accept_queue(pc.port) == 0, 10, "the third accepted")
        third.settimeout(30)
        assert third.recv(65536).startswith(b"HTTP/1.1 200")
        third.close()
        assert answered(second).startswith(b"HTTP/1.1 200")
    finally:
        first.close()
        second.close()


def test_sockets_that_never_start_a_tls_handshake_lock_no_one_out(daemon, tmp_path):
    ca = CA(tmp_path / "pki")
    server = ca.issue("server")
    pc = daemon(tls_cert=server.cert, tls_key=server.key, max_connections=20,
                handshake_timeout="1s", header_timeout="1s", keepalive_timeout="60s")
    # Every slot taken by a TCP connection that never sends its ClientHello.
    idle = [connect(pc) for _ in range(20)]
    try:
        began = time.monotonic()
        reply = request(pc.url, "/v2/", context=ca.client_context(), timeout=10)
        waited = time.monotonic() - began
        assert reply.status == 200
        assert waited < 1 + 3, f"a real client waited {waited:.1f}s behind idle sockets"
        assert all(closed_by_server(sock, timeout=10) for sock in idle)
    finally:
        for sock in idle:
            sock.close()


def test_an_any_address_listener_serves_ipv4_and_ipv6_clients(daemon):
    pc = daemon(listen_host="::")
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect((address, pc.port))
            assert answered(sock).startswith(b"HTTP/1.1 200"), address


def test_the_admin_listener_cuts_a_connection_that_says_nothing(daemon):
    pc = daemon(header_timeout="1s")
    with socket.create_connection(("127.0.0.1", pc.admin_port), timeout=10) as sock:
        assert closed_by_server(sock, timeout=5), "a silent admin connection is kept open"
    with socket.create_connection(("127.0.0.1", pc.admin_port), timeout=10) as sock:
        assert answered(sock).startswith(b"HTTP/1.1 404")   # a prompt one is served
