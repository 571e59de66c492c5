"""The hot path against a real registry: a cached manifest is answered from memory (no
SQLite, no thread), recency reaches the index at a clean stop, a SIGKILL loses no entry."""

from __future__ import annotations

import os
import sqlite3

import pytest
from prometheus_client import generate_latest
from aiohttp.test_utils import TestClient, TestServer

from pullcache.config import loads
from pullcache.server.app import build_app
from pullcache.server.keys import METRICS, PROXY, STORE
from tests.support.daemon import UpstreamSpec
from tests.support.http import request
from tests.support.images import build_image, push
from tests.support.ports import eventually
from tests.support.spies import count_submissions, trace_sqlite

OCI_M = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def image(registry):
    img = build_image("hot-path", layer_sizes=(2048,))
    push(registry, "hot/img", "v1", img)
    return img


@pytest.fixture
def sql(monkeypatch):
    """Traces every SQLite connection the app opens (installed before the app starts)."""
    return trace_sqlite(monkeypatch)


@pytest.fixture
async def client(sql, registry, tmp_path):
    config = loads(f'''
[cache]
dir = "{tmp_path / "cache"}"
max_size = "1GiB"

[[upstream]]
host = "{registry.host}"
url = "{registry.url}"
default = true
tag_ttl = "1h"
''')
    async with TestClient(TestServer(build_app(config))) as c:
        yield c


async def test_a_manifest_hit_writes_no_sqlite_and_waits_on_no_thread(client, sql, image,
                                                                      monkeypatch):
    app = client.server.app
    layer = image.layers[0].digest
    paths = [("GET", "/v2/hot/img/manifests/v1"), ("HEAD", "/v2/hot/img/manifests/v1"),
             ("GET", f"/v2/hot/img/manifests/{image.digest}"),
             ("HEAD", f"/v2/hot/img/manifests/{image.digest}"),
             ("HEAD", f"/v2/hot/img/blobs/{layer}")]
    for method, path in paths + [("GET", f"/v2/hot/img/blobs/{layer}")]:   # misses: warm up
        async with client.request(method, path, headers={"Accept": OCI_M}) as r:
            assert r.status == 200
            await r.read()
    store = app[STORE]
    # The trace reaches the connections of both databases (the index, the tag records).
    assert {str(store.root / "index" / "cache.db"), str(store.root / "tags" / "cache.db")} \
        <= {db for db, _ in sql.seen}, {db for db, _ in sql.seen}
    jobs = count_submissions(monkeypatch)
    # The warm-up's blob fill and its reader finish in the background (close, commit): wait
    # until nothing holds a blob or temp file open, then start counting.
    await eventually(lambda: not (len(app[PROXY].fills) or open_content(store.root)),
                     what="the warm-up's fill closed")
    await store.flush_recency()
    sql.seen.clear()
    jobs.seen.clear()

    for _ in range(3):
        for method, path in paths:
            async with client.request(method, path, headers={"Accept": OCI_M}) as r:
                assert r.status == 200, (method, path)
                assert r.headers["Docker-Content-Digest"] in (image.digest, layer)
                body = await r.read()
                if method == "GET":
                    assert body == image.manifest
    assert sql.seen == [], f"a hit ran SQL: {sql.seen[:5]}"
    assert jobs.seen == [], f"a hit waited on a thread: {jobs.seen[:5]}"
    assert store.hot.pending() == 2          # the manifest and the blob, in memory
    assert await store.flush_recency() == 2  # and the recorders do see a flush:
    assert any(s.startswith("UPDATE Cache SET access_time") for _, s in sql.seen), sql.seen
    assert jobs.seen, "the flush ran in no thread"
    sql.on = jobs.on = False
    exposed = generate_latest(app[METRICS].registry).decode()
    samples = dict(line.rsplit(" ", 1) for line in exposed.splitlines()
                   if line and not line.startswith("#"))
    assert float(samples['pullcache_requests_total{kind="manifest",outcome="hit"}']) >= 12
    assert float(samples["pullcache_hot_bytes"]) >= len(image.manifest)
    assert float(samples["pullcache_hot_items"]) >= 3   # a tag, a manifest, a blob entry


def open_content(root) -> list[str]:
    """Files under the cache's blobs/, manifests/ or tmp/ this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if any(target.startswith(str(root / sub)) for sub in ("blobs", "manifests", "tmp")):
            found.append(target)
    return found


def access_times(cache_dir) -> dict[str, float]:
    con = sqlite3.connect(cache_dir / "index" / "cache.db")
    try:
        return dict(con.execute("SELECT key, access_time FROM Cache"))
    finally:
        con.close()


def test_recency_reaches_the_index_at_a_clean_stop(make_pullcache, registry):
    first, second = build_image("hot-first"), build_image("hot-second")
    push(registry, "hot/recency", "first", first)
    push(registry, "hot/recency", "second", second)
    pc = make_pullcache(UpstreamSpec(registry.host, registry.url))
    for img in (first, second):                       # stored: first, then second
        assert request(pc.url, f"/v2/hot/recency/manifests/{img.digest}").status == 200
    assert request(pc.url, f"/v2/hot/recency/manifests/{first.digest}").status == 200
    pc.stop()                                          # SIGTERM: the last flush runs
    times = access_times(pc.cache_dir)
    assert times[f"manifest:{first.digest}"] > times[f"manifest:{second.digest}"]
    pc.start()
    assert access_times(pc.cache_dir) == times         # a restart keeps it (reads, no writes)
    r = request(pc.url, f"/v2/hot/recency/manifests/{second.digest}")
    assert r.status == 200 and r.body == second.manifest


def test_a_sigkill_between_flushes_loses_no_entry(make_pullcache, registry, fault_proxy):
    img = build_image("hot-kill", layer_sizes=(4096,))
    push(registry, "hot/kill", "v1", img)
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url))
    path = f"/v2/hot/kill/manifests/{img.digest}"
    for _ in range(3):                                 # a miss, then hits only in memory
        assert request(pc.url, path).status == 200
    pc.kill()
    gets = fault_proxy.count(None, img.digest)
    pc.start()
    for _ in range(2):
        r = request(pc.url, path)
        assert r.status == 200 and r.body == img.manifest
        assert r.headers["docker-content-digest"] == img.digest
    assert fault_proxy.count(None, img.digest) == gets, "the entry was lost"
    assert f"manifest:{img.digest}" in access_times(pc.cache_dir)
