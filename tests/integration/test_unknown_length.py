"""A blob whose upstream announces no length (chunked, no Content-Length), through the
routes: the first GET, a request that joined its fill, and the later hit all reach curl
whole, framed right, over plain HTTP and TLS; the fill downloads it once."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.images import build_image, push
from tests.support.ports import wait_until
from tests.support.tls import CA

MiB = 1 << 20


def curl(pc: Pullcache, path: str, out, ca: CA | None) -> subprocess.Popen:
    """curl, HTTP/1.1 (chunked framing is HTTP/1.1's), failing on a bad status or framing
    (rc 56: "failure in receiving network data", what a broken chunk stream gives)."""
    tls = ["--cacert", str(ca.cert)] if ca is not None else []
    return subprocess.Popen(["curl", "-sS", "--fail", "--http1.1", "--max-time", "60",
                             *tls, "-o", str(out), pc.url + path],
                            stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen, out, digest: str) -> None:
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, f"curl rc {proc.returncode}: {err}"
    assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
def test_a_blob_of_unknown_length_reaches_every_reader_whole(tmp_path, registry, fault_proxy,
                                                              tls):
    name = "tls" if tls else "http"
    image = build_image(f"unknown-length-{name}", layer_sizes=(3 * MiB,))
    repo = f"chunked/{name}"
    push(registry, repo, "v1", image)
    layer = max(image.blobs(), key=lambda b: b.size)
    path = f"/v2/{repo}/blobs/{layer.digest}"
    fault_proxy.unknown_length = "/blobs/"
    # The upstream stalls after 1 MiB: the second request joins a fill in flight.
    fault_proxy.set_fault("stall", match=f"/blobs/{layer.digest}", at_byte=MiB, times=1)
    ca = CA(tmp_path / "pki") if tls else None
    server = {}
    if ca is not None:
        issued = ca.issue("server")
        server = {"tls_cert": issued.cert, "tls_key": issued.key}
    (tmp_path / "pc").mkdir()
    pc = Pullcache(tmp_path / "pc", [UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                                  default=True)], server=server)
    pc.start()
    try:
        first = curl(pc, path, tmp_path / "first", ca)
        wait_until(fault_proxy.stalled.is_set, timeout=30, what="upstream stalled mid-blob")
        joined = curl(pc, path, tmp_path / "joined", ca)
        wait_until(lambda: pc.metric("pullcache_coalesced_requests_total", kind="blob") >= 1,
                   timeout=30, what="second request joined the fill")
        fault_proxy.release()
        finished(first, tmp_path / "first", layer.digest)
        finished(joined, tmp_path / "joined", layer.digest)
        hit = curl(pc, path, tmp_path / "hit", ca)
        finished(hit, tmp_path / "hit", layer.digest)
        assert fault_proxy.count("GET", f"/blobs/{layer.digest}") == 1
    finally:
        pc.stop()
