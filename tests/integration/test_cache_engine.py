"""The cache engine against a real registry behind the counting fault proxy: one fetch for a
herd, streaming to followers, stale serving with a blackholed upstream, LRU bounds, crash
safety."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time

from tests.support.daemon import ROOT, UpstreamSpec
from tests.support.http import request
from tests.support.images import build_image, build_raw_blob_image, push
from tests.support.ports import wait_until

MiB = 1024 * 1024


class Download(threading.Thread):
    """A client reading a blob in the background; records when its first byte came."""

    def __init__(self, host: str, path: str, headers: dict | None = None) -> None:
        super().__init__(daemon=True)
        self.host, self.path, self.headers = host, path, headers or {}
        self.first_byte = threading.Event()
        self.status: int | None = None
        self.received = 0
        self.digest: str | None = None
        self.error: BaseException | None = None
        self.body = b""

    def run(self) -> None:
        host, port = self.host.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request("GET", self.path, headers=self.headers)
            resp = conn.getresponse()
            self.status = resp.status
            hasher = hashlib.sha256()
            chunks = []
            while chunk := resp.read1(256 * 1024):
                self.first_byte.set()
                hasher.update(chunk)
                self.received += len(chunk)
                if self.received <= MiB:
                    chunks.append(chunk)
            length = resp.getheader("Content-Length")
            if length is None or int(length) == self.received:   # else: a cut transfer
                self.digest = "sha256:" + hasher.hexdigest()
            self.body = b"".join(chunks)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
        finally:
            conn.close()


def test_herd_of_20_costs_one_upstream_get_and_streams_to_all(counted, registry, fault_proxy):
    image = build_raw_blob_image("herd-64", 64 * MiB)
    push(registry, "engine/herd", "v1", image)
    layer = image.layers[0]
    # Stall the upstream mid-body: every client must get bytes before the fill ends.
    fault_proxy.set_fault("stall", match=layer.digest, at_byte=16 * MiB, times=1)
    clients = [Download(counted.host, f"/v2/engine/herd/blobs/{layer.digest}")
               for _ in range(20)]
    for c in clients:
        c.start()
    assert fault_proxy.stalled.wait(30)
    for c in clients:
        assert c.first_byte.wait(30), "a follower's first byte waited for the whole fill"
    assert not any(c.digest for c in clients), "a body completed while upstream was stalled"
    assert counted.metric("pullcache_fills_in_flight") == 1
    fault_proxy.release()
    for c in clients:
        c.join(60)
        assert c.error is None and c.status == 200
        assert c.received == layer.size and c.digest == layer.digest
    assert fault_proxy.count("GET", layer.digest) == 1
    assert counted.metric("pullcache_coalesced_requests_total", kind="blob") >= 19
    assert counted.metric("pullcache_requests_total", kind="blob", outcome="miss") == 1


def test_late_follower_and_ranges_on_an_inflight_fill(counted, registry, fault_proxy):
    image = build_raw_blob_image("late-follower", 24 * MiB)
    push(registry, "engine/late", "v1", image)
    layer = image.layers[0]
    path = f"/v2/engine/late/blobs/{layer.digest}"
    data = image.layers[0].data
    fault_proxy.set_fault("stall", match=layer.digest, at_byte=8 * MiB, times=1)
    leader = Download(counted.host, path)
    leader.start()
    assert fault_proxy.stalled.wait(30) and leader.first_byte.wait(30)
    # HEAD is answered from the fill, without asking the upstream.
    heads = fault_proxy.count("HEAD", layer.digest)
    h = request(counted.url, path, method="HEAD", timeout=10)
    assert h.status == 200 and h.headers["content-length"] == str(layer.size)
    assert fault_proxy.count("HEAD", layer.digest) == heads
    # A range of bytes already written is answered now, while the fill is stalled.
    r = request(counted.url, path, headers={"Range": "bytes=1048576-2097151"}, timeout=10)
    assert r.status == 206 and r.body == data[MiB:2 * MiB]
    # A late follower starts from byte 0; a range past the written bytes waits for them.
    late = Download(counted.host, path)
    tail = Download(counted.host, path, {"Range": f"bytes={20 * MiB}-"})
    late.start()
    tail.start()
    assert late.first_byte.wait(30)
    fault_proxy.release()
    for c in (leader, late, tail):
        c.join(60)
        assert c.error is None
    assert late.digest == layer.digest and leader.digest == layer.digest
    assert tail.status == 206 and tail.received == layer.size - 20 * MiB
    assert tail.body and tail.body == data[20 * MiB:20 * MiB + len(tail.body)]
    assert fault_proxy.count("GET", layer.digest) == 1


def test_client_hanging_up_does_not_cancel_the_fill(counted, registry, fault_proxy):
    image = build_raw_blob_image("hangup", 16 * MiB)
    push(registry, "engine/hangup", "v1", image)
    layer = image.layers[0]
    fault_proxy.set_fault("stall", match=layer.digest, at_byte=4 * MiB, times=1)
    host, port = counted.host.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", f"/v2/engine/hangup/blobs/{layer.digest}")
    resp = conn.getresponse()
    assert resp.read(MiB)
    conn.close()   # the only client goes away mid-blob
    fault_proxy.release()
    wait_until(lambda: counted.events("fill_committed"), 30, "the fill to commit")
    r = request(counted.url, f"/v2/engine/hangup/blobs/{layer.digest}")
    assert r.status == 200 and r.sha256 == layer.digest
    assert fault_proxy.count("GET", layer.digest) == 1


def test_cached_image_pulls_fast_with_upstream_blackholed(make_pullcache, registry,
                                                          fault_proxy):
    """An upstream that accepts connections and never answers must not hold up cached pulls:
    the tag is served stale after the short revalidation timeout, and once revalidations
    keep timing out the breaker opens and upstream is not asked at all. Distribution and
    Harbor wait 30 s to minutes here."""
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url, extra={
        "tag_ttl": 0, "stale_while_revalidate": "0s", "header_timeout": "60s",
        "revalidate_timeout": "1s", "breaker_failures": 2, "breaker_cooldown": "10m"}))
    image = build_image("blackhole", layer_sizes=(300_000, 2000))
    push(registry, "engine/blackhole", "v1", image)

    def pull() -> float:
        began = time.monotonic()
        r = request(pc.url, "/v2/engine/blackhole/manifests/v1", timeout=120)
        assert r.status == 200 and r.body == image.manifest
        m = request(pc.url, f"/v2/engine/blackhole/manifests/{image.digest}", timeout=120)
        assert m.status == 200
        for blob in image.blobs():
            b = request(pc.url, f"/v2/engine/blackhole/blobs/{blob.digest}", timeout=120)
            assert b.status == 200 and b.sha256 == blob.digest
        return time.monotonic() - began

    warm_up = pull()
    fault_proxy.set_fault("blackhole", match="/v2/")
    first = pull()          # waits for the 1 s revalidation, then serves stale
    assert not pc.events("breaker_opened")      # one slow revalidation is one failure
    # A generous bound, far below the 60 s header timeout it must not wait for.
    assert first < 30, f"{first:.1f}s: waited on the blackholed upstream"
    assert pc.metric("pullcache_upstream_breaker_state", upstream=fault_proxy.host) == 0
    pull()                  # the second revalidation timeout opens the breaker
    assert pc.events("breaker_opened")
    assert pc.metric("pullcache_upstream_breaker_state", upstream=fault_proxy.host) == 1
    fault_proxy.reset_counts()
    pull()                  # breaker open: served stale without asking upstream
    assert fault_proxy.count() == 0
    r = request(pc.url, "/v2/engine/blackhole/manifests/v1")
    assert r.headers["warning"].startswith("299 -")
    assert fault_proxy.count() == 0 and pc.events("served_stale")
    print(f"cached pull: upstream up {warm_up:.2f}s, blackholed {first:.2f}s")


def test_one_slow_revalidation_does_not_open_the_breaker(make_pullcache, registry,
                                                         fault_proxy):
    """Issue #8: a single revalidation HEAD that runs out of revalidate_timeout used to trip
    the breaker, and every uncached pull from that upstream then failed for the cool-down.
    Now the tag is served stale and the timeout counts as one failure."""
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url, extra={
        "tag_ttl": 0, "stale_while_revalidate": "0s", "revalidate_timeout": "1s",
        "breaker_cooldown": "10m"}))
    cached, fresh = build_image("slowhead", layer_sizes=(2000,)), \
        build_image("slowhead-other", layer_sizes=(3000,))
    push(registry, "engine/slowhead", "v1", cached)
    push(registry, "engine/slowhead", "v2", fresh)
    assert request(pc.url, "/v2/engine/slowhead/manifests/v1").status == 200
    fault_proxy.set_fault("blackhole", match="/manifests/v1", method="HEAD", times=1)
    r = request(pc.url, "/v2/engine/slowhead/manifests/v1", timeout=60)
    assert r.status == 200 and r.body == cached.manifest
    assert r.headers["warning"].startswith("299 -")                # stale, after 1 s
    r = request(pc.url, "/v2/engine/slowhead/manifests/v2", timeout=60)
    assert r.status == 200 and r.body == fresh.manifest, r.body    # upstream still asked
    for blob in fresh.blobs():
        b = request(pc.url, f"/v2/engine/slowhead/blobs/{blob.digest}", timeout=60)
        assert b.status == 200 and b.sha256 == blob.digest
    assert not pc.events("breaker_opened")


def test_uncached_content_fails_fast_when_upstream_is_down(make_pullcache, registry,
                                                           fault_proxy):
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                     extra={"header_timeout": "2s"}))
    fault_proxy.set_fault("blackhole", match="/v2/")
    missing = "sha256:" + "1" * 64
    r = request(pc.url, f"/v2/engine/none/blobs/{missing}", timeout=30)
    assert r.status == 504 and r.error_codes == ["UNAVAILABLE"]
    fault_proxy.reset_counts()
    r = request(pc.url, "/v2/engine/none/manifests/v1", timeout=30)
    assert r.status == 503 and "circuit open" in r.json()["errors"][0]["detail"]
    assert fault_proxy.count() == 0          # failed fast: upstream was not asked
    assert int(r.headers["retry-after"]) >= 1


def test_lru_stays_within_budget_and_keeps_hot_blobs(make_pullcache, registry):
    pc = make_pullcache(UpstreamSpec(registry.host, registry.url),
                        max_size="6MiB", high_watermark=0.9, low_watermark=0.6)
    images = [build_raw_blob_image(f"lru-{i}", MiB) for i in range(8)]
    for i, image in enumerate(images):
        push(registry, "engine/lru", f"v{i}", image)
    hot = images[0].layers[0]
    for n, image in enumerate(images, 1):
        layer = image.layers[0]
        r = request(pc.url, f"/v2/engine/lru/blobs/{layer.digest}")
        assert r.sha256 == layer.digest
        # The commit (and its eviction) follows the client's last byte: the hot blob's use
        # must come after it, or a slow commit is newer than the use it should lose to.
        wait_until(lambda: len(pc.events("fill_committed")) == n, 30, f"commit {n}")
        assert request(pc.url, f"/v2/engine/lru/blobs/{hot.digest}").status == 200  # keep hot
    stats = cache_cli(pc, "stats")
    assert stats["bytes"] <= 0.9 * 6 * MiB
    files = {p.name for p in (pc.cache_dir / "blobs").rglob("*") if p.is_file()}
    assert hot.digest.split(":")[1] in files
    assert len(files) == stats["entries"] < 8
    assert pc.metric("pullcache_evicted_files_total") >= 8 - len(files)
    # Evicted blobs come back on demand, verified.
    first_cold = images[1].layers[0]
    r = request(pc.url, f"/v2/engine/lru/blobs/{first_cold.digest}")
    assert r.status == 200 and r.sha256 == first_cold.digest


def test_sigkill_mid_fill_leaves_no_partial_blob(make_pullcache, registry, fault_proxy):
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url))
    image = build_raw_blob_image("crash", 48 * MiB)
    push(registry, "engine/crash", "v1", image)
    small = build_image("crash-small", layer_sizes=(100_000,))
    push(registry, "engine/crash", "small", small)
    for blob in small.blobs():
        assert request(pc.url, f"/v2/engine/crash/blobs/{blob.digest}").status == 200
    # A client has its last byte once the digest matched; the commit (fsync, rename) follows.
    wait_until(lambda: len(pc.events("fill_committed")) == len(small.blobs()), 30,
               "the small blobs' commits")
    layer = image.layers[0]
    fault_proxy.set_fault("stall", match=layer.digest, at_byte=24 * MiB, times=1)
    client = Download(pc.host, f"/v2/engine/crash/blobs/{layer.digest}")
    client.start()
    assert fault_proxy.stalled.wait(30) and client.first_byte.wait(30)
    assert list((pc.cache_dir / "tmp").iterdir()), "the fill writes under tmp/"
    pc.kill()
    client.join(30)
    assert client.digest is None, "a killed fill must not look complete to its client"
    fault_proxy.release()
    fault_proxy.clear_fault()
    pc.start()
    assert not list((pc.cache_dir / "tmp").iterdir()), "partial temp file survived restart"
    assert pc.events("cache_reconciled")[-1]["temp_files_removed"] == 1
    gets = fault_proxy.count("GET", layer.digest)
    r = request(pc.url, f"/v2/engine/crash/blobs/{layer.digest}")
    assert r.status == 200 and r.sha256 == layer.digest
    assert fault_proxy.count("GET", layer.digest) == gets + 1
    # Index and disk agree, and the space accounting counts exactly the files.
    stats = cache_cli(pc, "stats")
    files = [p for p in (pc.cache_dir / "blobs").rglob("*") if p.is_file()]
    assert stats["entries"] == len(files) == len(small.blobs()) + 1
    on_disk = sum(p.stat().st_size for p in files)
    assert on_disk <= stats["bytes"] <= on_disk + 2 * MiB   # + the index database itself


def test_health_readiness_metrics_and_cli(pullcache, registry):
    assert request(pullcache.admin_url, "/healthz").json() == {"status": "ok"}
    ready = request(pullcache.admin_url, "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ok"
    image = build_image("metrics", layer_sizes=(10_000,))
    push(registry, "engine/metrics", "v1", image)
    layer = image.layers[0]
    for _ in range(2):
        request(pullcache.url, "/v2/engine/metrics/manifests/v1")
        request(pullcache.url, f"/v2/engine/metrics/blobs/{layer.digest}")
        pullcache.wait_committed(layer.digest)
    text = request(pullcache.admin_url, "/metrics").body.decode()
    # The ops routes live on the admin listener only: mirror clients cannot read them.
    assert [request(pullcache.url, path).status for path in ("/metrics", "/readyz")] == [404] * 2
    for name in ("pullcache_requests_total", "pullcache_served_bytes_total",
                 "pullcache_upstream_fetched_bytes_total", "pullcache_fills_in_flight",
                 "pullcache_coalesced_requests", "pullcache_evicted_files",
                 "pullcache_cache_bytes", "pullcache_cache_budget_bytes",
                 "pullcache_upstream_request_seconds_bucket", "pullcache_digest_mismatches",
                 "pullcache_upstream_breaker_state"):
        assert name in text, name
    assert pullcache.metric("pullcache_requests_total", kind="blob", outcome="hit") == 1
    assert pullcache.metric("pullcache_upstream_breaker_state") == 0     # closed
    # Two pulls of the layer: the first from its fill, the second from the cache.
    size = layer.size
    assert pullcache.metric("pullcache_served_bytes_total", source="cache") == size
    assert pullcache.metric("pullcache_served_bytes_total", source="fill") == size
    gc = cache_cli(pullcache, "gc")
    assert gc["freed_bytes"] == 0 and gc["entries"] >= 2


def cache_cli(pc, action: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pullcache", "cache", action, "--json",
                           "--config", str(pc.workdir / "pullcache.toml")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_concurrent_tag_requests_share_one_upstream_resolution(counted, registry, fault_proxy):
    image = build_image("tag-herd", layer_sizes=(1000,))
    push(registry, "engine/tagherd", "v1", image)
    # Hold the manifest GET mid-body: every other request must join it, not ask again.
    fault_proxy.set_fault("stall", match="/manifests/sha256:", method="GET", at_byte=10,
                          times=1)
    results: list = []

    def fetch() -> None:
        results.append(request(counted.url, "/v2/engine/tagherd/manifests/v1", timeout=30))
    threads = [threading.Thread(target=fetch) for _ in range(20)]
    for t in threads:
        t.start()
    assert fault_proxy.stalled.wait(30)
    wait_until(lambda: counted.metric("pullcache_coalesced_requests_total",
                                      kind="manifest") >= 19, 30, "19 joined requests")
    fault_proxy.release()
    for t in threads:
        t.join(30)
    assert len(results) == 20
    assert all(r.status == 200 and r.body == image.manifest for r in results)
    assert fault_proxy.count("HEAD", "/manifests/v1") == 1
    assert fault_proxy.count("GET", "/manifests/") == 1
