"""Who may be served what (pullcache/proxy/links.py): cached content answers an (upstream,
repository) only where it is linked, else once that upstream confirms it with a HEAD.

One pullcache with htpasswd users in front of two upstreams: ``priv.example`` (the real
registry behind the counting fault proxy; only alice, only ``secret/**``) and a default
upstream that is down. The registry keeps blobs per repository (Distribution links them as
we do), so a repository it was never pushed to answers the HEAD 404.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.test_cache_engine import Download
from tests.integration.test_operator import blob_file, cli_json
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.http import basic_auth, request
from tests.support.images import build_image, build_raw_blob_image, push
from tests.support.ports import free_port, wait_until
from tests.support.tls import write_htpasswd

MiB = 1024 * 1024
OCI_M = "application/vnd.oci.image.manifest.v1+json"
ALICE = {"Authorization": basic_auth("alice", "wonderland"), "Accept": OCI_M}
BOB = {"Authorization": basic_auth("bob", "builder"), "Accept": OCI_M}
PRIV = "priv.example"


@pytest.fixture(scope="module")
def htpasswd(tmp_path_factory):
    return write_htpasswd(tmp_path_factory.mktemp("users") / "htpasswd",
                          {"alice": "wonderland", "bob": "builder"})


@pytest.fixture
def tenants(tmp_path, htpasswd, fault_proxy):
    """Start a pullcache of two upstreams (``cache``: more [cache] keys); stopped after."""
    started = []

    def start(priv: dict | None = None, **cache) -> Pullcache:
        down = f"http://127.0.0.1:{free_port()}"   # nothing listens there
        pc = Pullcache(tmp_path / "pc", [
            UpstreamSpec("docker.io", down, default=True),
            UpstreamSpec(PRIV, fault_proxy.url, extra={
                "users": ["alice"], "allow": ["secret/**"], "breaker_failures": 1000,
                **(priv or {})})],
            cache=cache, access={"htpasswd": htpasswd})
        pc.workdir.mkdir(exist_ok=True)
        started.append(pc)
        return pc.start()
    yield start
    for pc in started:
        pc.stop()


def get(pc, path: str, headers=ALICE, method: str = "GET"):
    return request(pc.url, path, headers=headers, method=method, timeout=30)


def committed(pc, digest: str, times: int = 1) -> None:
    """Until ``digest`` has been committed ``times`` times (the log outlives restarts)."""
    wait_until(lambda: sum(e.get("digest") == digest for e in pc.events("fill_committed"))
               >= times, 30, f"commit #{times} of {digest}")


def blob_path(repo: str, digest: str) -> str:
    return f"/v2/{PRIV}/{repo}/blobs/{digest}"


def manifest_path(repo: str, reference: str) -> str:
    return f"/v2/{PRIV}/{repo}/manifests/{reference}"


def test_private_content_is_not_served_through_another_upstream(tenants, registry):
    image = build_raw_blob_image("links-priv", 4 * MiB)
    push(registry, "secret/app", "v1", image)
    pc = tenants()
    layer = image.layers[0].digest
    assert get(pc, blob_path("secret/app", layer), BOB).status == 403
    pulled = get(pc, blob_path("secret/app", layer))
    assert pulled.status == 200 and pulled.sha256 == layer
    assert get(pc, manifest_path("secret/app", image.digest)).body == image.manifest
    pc.wait_committed(layer)
    # The digest is no key: the default upstream is down, so nobody is served through it.
    for who in (BOB, ALICE):
        for method in ("GET", "HEAD"):
            r = get(pc, f"/v2/anything/blobs/{layer}", who, method)
            assert r.status == 503, (method, r.status, len(r.body))
            assert layer not in (r.headers.get("docker-content-digest") or "")
        r = get(pc, f"/v2/anything/manifests/{image.digest}", who)
        assert r.status == 503 and r.body != image.manifest
    assert pc.events("link_refused")
    assert pc.metric("pullcache_link_checks_total", result="unavailable") == 6


def test_another_repository_is_confirmed_by_one_head_and_never_fetched_again(
        tenants, registry, fault_proxy):
    image = build_raw_blob_image("links-repos", 2 * MiB)
    push(registry, "secret/a", "v1", image)
    push(registry, "secret/c", "v1", image)      # secret/b is never pushed: 404 there
    push(registry, "secret/e", "v1", image)
    pc = tenants()
    layer = image.layers[0].digest
    assert get(pc, blob_path("secret/a", layer)).sha256 == layer
    pc.wait_committed(layer)
    fault_proxy.reset_counts()

    b = get(pc, blob_path("secret/b", layer))
    assert b.status == 404 and b.error_codes == ["BLOB_UNKNOWN"]
    assert fault_proxy.count("HEAD", f"/secret/b/blobs/{layer}") == 1
    c = get(pc, blob_path("secret/c", layer))
    assert c.status == 200 and c.sha256 == layer
    assert fault_proxy.count("HEAD", f"/secret/c/blobs/{layer}") == 1
    assert fault_proxy.count("GET", layer) == 0                  # the bytes: from the cache
    again = get(pc, blob_path("secret/c", layer))
    assert again.sha256 == layer and get(pc, blob_path("secret/a", layer)).sha256 == layer
    head = get(pc, blob_path("secret/c", layer), method="HEAD")
    assert head.status == 200 and head.headers["content-length"] == str(2 * MiB)
    assert fault_proxy.count("HEAD") == 2 and fault_proxy.count("GET") == 0
    # A herd from another repository costs one HEAD.
    with ThreadPoolExecutor(8) as pool:
        herd = list(pool.map(lambda _: get(pc, blob_path("secret/e", layer)), range(8)))
    assert [r.sha256 for r in herd] == [layer] * 8
    assert fault_proxy.count("HEAD", f"/secret/e/blobs/{layer}") == 1
    assert fault_proxy.count("GET") == 0
    assert pc.metric("pullcache_link_checks_total", kind="blob", result="confirmed") == 2
    assert pc.metric("pullcache_link_checks_total", kind="blob", result="refused") == 1
    # One file for every repository it is linked to.
    files = [p for p in (pc.cache_dir / "blobs").rglob("*") if p.is_file()]
    assert files == [blob_file(pc, layer)]


def test_a_manifest_by_digest_is_confirmed_like_a_blob(tenants, registry, fault_proxy):
    image = build_image("links-manifest", layer_sizes=(3000,))
    push(registry, "secret/a", "v1", image)
    push(registry, "secret/c", "v1", image)
    pc = tenants()
    assert get(pc, manifest_path("secret/a", image.digest)).body == image.manifest
    fault_proxy.reset_counts()
    b = get(pc, manifest_path("secret/b", image.digest))
    assert b.status == 404 and b.error_codes == ["MANIFEST_UNKNOWN"]
    for _ in range(3):                        # memory (the hot path) answers after the first
        c = get(pc, manifest_path("secret/c", image.digest))
        assert c.status == 200 and c.body == image.manifest
    assert fault_proxy.count("HEAD", f"/secret/c/manifests/{image.digest}") == 1
    assert fault_proxy.count("GET") == 0 and fault_proxy.count("HEAD") == 2
    # A tag resolved in a repository links what it names: no HEAD by digest after it.
    push(registry, "secret/d", "v1", image)
    assert get(pc, manifest_path("secret/d", "v1")).body == image.manifest
    assert get(pc, manifest_path("secret/d", image.digest)).body == image.manifest
    assert fault_proxy.count("HEAD", f"/secret/d/manifests/{image.digest}") == 0
    assert fault_proxy.count("GET") == 0


def test_stale_serves_a_tag_to_its_own_repository_only(tenants, registry, fault_proxy):
    image = build_image("links-stale", layer_sizes=(3000,))
    push(registry, "secret/a", "v1", image)
    push(registry, "secret/c", "v1", image)
    pc = tenants({"tag_ttl": 0, "stale_while_revalidate": "0s"})
    assert get(pc, manifest_path("secret/a", "v1")).body == image.manifest
    fault_proxy.set_fault("status", match="/v2/", status=503)     # the upstream fails now
    stale = get(pc, manifest_path("secret/a", "v1"))
    assert stale.body == image.manifest and stale.headers["warning"].startswith("299 -")
    assert get(pc, manifest_path("secret/a", image.digest)).body == image.manifest
    for path in (manifest_path("secret/c", "v1"), manifest_path("secret/c", image.digest)):
        r = get(pc, path)
        assert r.status == 503 and r.body != image.manifest, path


def test_a_fill_in_flight_is_joined_only_once_confirmed(tenants, registry, fault_proxy):
    image = build_raw_blob_image("links-inflight", 8 * MiB)
    push(registry, "secret/a", "v1", image)
    push(registry, "secret/c", "v1", image)
    pc = tenants()
    layer = image.layers[0].digest
    fault_proxy.set_fault("stall", match=layer, method="GET", at_byte=2 * MiB, times=1)
    leader = Download(pc.host, blob_path("secret/a", layer), ALICE)
    leader.start()
    try:
        assert fault_proxy.stalled.wait(30) and leader.first_byte.wait(30)
        across = Download(pc.host, f"/v2/anything/blobs/{layer}", BOB)
        across.start()
        across.join(20)
        assert across.status == 503 and across.digest != layer
        b = get(pc, blob_path("secret/b", layer))
        assert b.status == 404 and b.error_codes == ["BLOB_UNKNOWN"]
        joiner = Download(pc.host, blob_path("secret/c", layer), ALICE)
        joiner.start()
        assert joiner.first_byte.wait(30)     # confirmed, then tailing the same fill
        assert fault_proxy.count("HEAD", f"/secret/c/blobs/{layer}") == 1
    finally:
        fault_proxy.release()
    for download in (leader, joiner):
        download.join(60)
        assert download.status == 200 and download.digest == layer
    assert fault_proxy.count("GET", layer) == 1
    pc.wait_committed(layer)
    # The joiner's link was recorded with the commit: no HEAD the next time.
    assert get(pc, blob_path("secret/c", layer)).sha256 == layer
    assert fault_proxy.count("HEAD", f"/secret/c/blobs/{layer}") == 1
    assert get(pc, blob_path("secret/b", layer)).status == 404


def test_links_survive_a_restart_and_go_with_removed_content(tenants, registry, fault_proxy):
    image = build_image("links-restart", layer_sizes=(40_000,))
    push(registry, "secret/a", "v1", image)
    push(registry, "secret/c", "v1", image)
    pc = tenants()
    layer = image.layers[0].digest
    assert get(pc, manifest_path("secret/a", "v1")).body == image.manifest
    assert get(pc, blob_path("secret/a", layer)).sha256 == layer
    pc.wait_committed(layer)
    assert get(pc, blob_path("secret/c", layer)).sha256 == layer
    assert fault_proxy.count("HEAD", f"/secret/c/blobs/{layer}") == 1

    pc.restart()
    fault_proxy.reset_counts()
    assert get(pc, blob_path("secret/c", layer)).sha256 == layer
    assert get(pc, blob_path("secret/a", layer)).sha256 == layer
    assert fault_proxy.count() == 0                  # the links were in the index

    removed = cli_json(pc, "cache", "rm", f"{PRIV}/secret/a:v1")
    assert removed["removed_files"] == 2 and not blob_file(pc, layer).exists()   # +manifest
    assert get(pc, blob_path("secret/a", layer)).sha256 == layer   # fetched again for a
    committed(pc, layer, 2)
    assert fault_proxy.count("GET", layer) == 1
    assert get(pc, blob_path("secret/c", layer)).sha256 == layer
    assert fault_proxy.count("HEAD", f"/secret/c/blobs/{layer}") == 1   # c's link went


def test_eviction_takes_the_links_with_it(tenants, registry, fault_proxy):
    images = [build_raw_blob_image(f"links-evict-{i}", MiB) for i in range(5)]
    for i, image in enumerate(images):
        push(registry, "secret/a", f"v{i}", image)
    push(registry, "secret/c", "v0", images[0])
    pc = tenants(max_size="4MiB", high_watermark=0.9, low_watermark=0.5)
    first = images[0].layers[0].digest
    assert get(pc, blob_path("secret/a", first)).sha256 == first
    pc.wait_committed(first)
    assert get(pc, blob_path("secret/c", first)).sha256 == first
    for image in images[1:]:
        layer = image.layers[0].digest
        assert get(pc, blob_path("secret/a", layer)).sha256 == layer
        pc.wait_committed(layer)
    wait_until(lambda: not blob_file(pc, first).exists(), 10, "the first blob's eviction")
    assert get(pc, blob_path("secret/a", first)).sha256 == first
    committed(pc, first, 2)
    heads = fault_proxy.count("HEAD", f"/secret/c/blobs/{first}")
    assert get(pc, blob_path("secret/c", first)).sha256 == first
    assert fault_proxy.count("HEAD", f"/secret/c/blobs/{first}") == heads + 1 == 2
