"""A cold blob's bytes sent by the fill's writer thread to the client caught up with it
(pullcache/cache/riders.py), against the real registry: the lone client of a cold pull is
ridden, a rider never gets a wrong blob's final byte, and a slow client beside a fast one is
landed and served whole by the loop."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest

from tests.integration.test_faults import cache_files, raw_get
from tests.support.daemon import UpstreamSpec
from tests.support.http import request
from tests.support.images import build_raw_blob_image, push

MiB = 1 << 20


@pytest.fixture
def proxied(make_pullcache, fault_proxy):
    return make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                       extra={"breaker_failures": 100}))


def ridden(pc) -> float:
    return pc.metric("pullcache_fill_ridden_bytes_total")


def pushed_blob(registry, repo: str, size: int):
    """A one-layer image of ``size`` random bytes in ``repo``; its layer and blob path."""
    image = build_raw_blob_image(repo.replace("/", "-"), size)
    push(registry, repo, "latest", image)
    layer = image.layers[0]
    return layer, f"/v2/{repo}/blobs/{layer.digest}"


def test_the_lone_client_of_a_cold_blob_is_sent_it_by_the_writer_thread(pullcache, registry):
    size = 48 * MiB
    layer, path = pushed_blob(registry, "riders/lone", size)
    before = ridden(pullcache)
    r = request(pullcache.url, path)
    assert r.status == 200 and r.sha256 == layer.digest
    assert pullcache.metric("pullcache_served_bytes_total", source="fill") == size
    sent_by_writer = ridden(pullcache) - before
    # Most of it came from the writer thread; never the final byte, which waits for the digest.
    assert size // 2 < sent_by_writer < size, sent_by_writer


def test_a_rider_never_gets_the_final_byte_of_a_wrong_blob(proxied, registry, fault_proxy):
    size = 32 * MiB
    layer, path = pushed_blob(registry, "riders/corrupt", size)
    fault_proxy.set_fault("corrupt", match=layer.digest, at_byte=size - 2 * MiB, times=1)
    status, got, length, completed = raw_get(proxied.host, path)
    assert status == 200 and length == size
    assert not completed and got < size, "a rider must see a broken transfer"
    assert ridden(proxied) > 0, "the client was not ridden: this test proves nothing"
    assert layer.digest.split(":")[1] not in cache_files(proxied)
    r = request(proxied.url, path)
    assert r.status == 200 and r.sha256 == layer.digest


class SlowClient(threading.Thread):
    """Reads a blob 64 KiB at a time with a pause between reads, through a small window."""

    def __init__(self, host: str, path: str) -> None:
        super().__init__(daemon=True)
        self.host, self.path = host, path
        self.hasher = hashlib.sha256()
        self.received = 0
        self.error: BaseException | None = None
        self.answered = threading.Event()   # the response's headers came

    def run(self) -> None:
        host, port = self.host.split(":")
        try:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                sock.settimeout(30)
                sock.connect((host, int(port)))
                sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
                             "Connection: close\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                head, _, body = head.partition(b"\r\n\r\n")
                self.answered.set()
                self.hasher.update(body)
                self.received = len(body)
                while chunk := sock.recv(64 * 1024):
                    self.hasher.update(chunk)
                    self.received += len(chunk)
                    time.sleep(0.002)   # its pace: about 32 MB/s
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc


def test_a_slow_client_beside_a_fast_one_is_served_whole(proxied, registry, fault_proxy):
    size = 24 * MiB
    layer, path = pushed_blob(registry, "riders/slow", size)
    slow = SlowClient(proxied.host, path)
    slow.start()
    assert slow.answered.wait(30), "the slow client's request was not answered"
    fast = request(proxied.url, path)
    slow.join(60)
    assert fast.status == 200 and fast.sha256 == layer.digest
    assert slow.error is None and slow.received == size
    assert "sha256:" + slow.hasher.hexdigest() == layer.digest
    assert fault_proxy.count("GET", layer.digest) == 1
