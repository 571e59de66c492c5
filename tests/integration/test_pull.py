"""Pulling through pullcache from a real Distribution registry: the OCI pull surface."""

from __future__ import annotations

import pytest

from tests.support.daemon import UpstreamSpec
from tests.support.http import request
from tests.support.images import build_image, build_index, push
from tests.support.ports import wait_until

OCI_M = "application/vnd.oci.image.manifest.v1+json"
OCI_I = "application/vnd.oci.image.index.v1+json"
D_M = "application/vnd.docker.distribution.manifest.v2+json"
D_L = "application/vnd.docker.distribution.manifest.list.v2+json"
# dockerd and containers/image: one Accept line per type (docs/protocol.md §1.1, §1.3).
ACCEPT_LINES = [("Accept", t) for t in (OCI_M, D_M, D_L, OCI_I,
                                        "application/vnd.docker.distribution.manifest.v1+prettyjws",
                                        "application/json")]
# containerd: one comma-separated line with */*.
ACCEPT_CONTAINERD = {"Accept": f"{D_M}, {D_L}, {OCI_M}, {OCI_I}, */*"}


@pytest.fixture(scope="module")
def images(registry):
    """Everything the tests pull, pushed once to the anonymous registry."""
    oci = build_image("pull-oci", layer_sizes=(300_000, 4096))
    docker = build_image("pull-docker", layer_sizes=(100_000,), docker=True)
    index = build_index([build_image("pull-amd64", arch="amd64"),
                         build_image("pull-arm64", arch="arm64")])
    mlist = build_index([build_image("pull-d-amd64", arch="amd64", docker=True),
                         build_image("pull-d-arm64", arch="arm64", docker=True)], docker=True)
    push(registry, "test/oci", "v1", oci)
    push(registry, "test/docker", "v1", docker)
    push(registry, "test/index", "v1", index)
    push(registry, "test/list", "v1", mlist)
    return {"oci": oci, "docker": docker, "index": index, "list": mlist}


def test_ping(pullcache):
    r = request(pullcache.url, "/v2/")
    assert r.status == 200 and r.json() == {}
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize("accept", [ACCEPT_LINES, ACCEPT_CONTAINERD], ids=["lines", "comma"])
@pytest.mark.parametrize("name", ["oci", "docker", "index", "list"])
def test_manifest_by_tag_is_byte_identical(pullcache, images, name, accept):
    image = images[name]
    repo = {"oci": "test/oci", "docker": "test/docker", "index": "test/index",
            "list": "test/list"}[name]
    for _ in range(2):  # miss, then hit
        r = request(pullcache.url, f"/v2/{repo}/manifests/v1", headers=accept)
        assert r.status == 200, r.body
        assert r.body == image.manifest
        assert r.headers["content-type"] == image.media_type
        assert r.headers["docker-content-digest"] == image.digest
        h = request(pullcache.url, f"/v2/{repo}/manifests/v1", method="HEAD", headers=accept)
        assert h.status == 200 and h.body == b""
        assert h.headers["content-length"] == str(len(image.manifest))
        assert h.headers["docker-content-digest"] == image.digest
        assert h.headers["content-type"] == image.media_type


def test_index_children_and_blobs_verify(pullcache, images):
    index = images["index"]
    r = request(pullcache.url, f"/v2/test/index/manifests/{index.digest}")
    assert r.status == 200 and r.sha256 == index.digest
    for child in index.children:
        m = request(pullcache.url, f"/v2/test/index/manifests/{child.digest}",
                    headers={"Accept": f"{child.media_type}, */*"})
        assert m.status == 200 and m.body == child.manifest
        for blob in child.blobs():
            b = request(pullcache.url, f"/v2/test/index/blobs/{blob.digest}")
            assert b.status == 200 and b.sha256 == blob.digest
            assert b.headers["docker-content-digest"] == blob.digest
            assert b.headers["content-length"] == str(blob.size)


def test_blob_get_head_range_miss_and_hit(pullcache, images):
    layer = images["oci"].layers[0]
    path = f"/v2/test/oci/blobs/{layer.digest}"
    head = request(pullcache.url, path, method="HEAD")
    assert head.status == 200 and head.headers["content-length"] == str(layer.size)
    # Range on a miss is served from the fill as it arrives; on a hit from the cached file.
    for state, source in (("miss", "fill"), ("hit", "cache")):
        served = pullcache.metric("pullcache_served_bytes_total", source=source)
        r = request(pullcache.url, path, headers={"Range": "bytes=1000-1999",
                                                  "X-Request-Id": f"range-{state}"})
        assert r.status == 206, state
        assert r.body == layer.data[1000:2000]
        assert r.headers["content-range"] == f"bytes 1000-1999/{layer.size}"
        assert access_line(pullcache, f"range-{state}")["cache"] == state
        assert pullcache.metric("pullcache_served_bytes_total", source=source) == \
            served + 1000, f"the {state} was not served from the {source}"
        full = request(pullcache.url, path)
        assert full.status == 200 and full.body == layer.data
        pullcache.wait_committed(layer.digest)   # the client has the last byte first
    tail = request(pullcache.url, path, headers={"Range": f"bytes={layer.size - 10}-"})
    assert tail.status == 206 and tail.body == layer.data[-10:]
    beyond = request(pullcache.url, path, headers={"Range": f"bytes={layer.size}-"})
    assert beyond.status == 416


def access_line(pc, rid: str) -> dict:
    """The access line of the request sent with ``X-Request-Id: rid`` (written once the
    response was sent)."""
    lines: list[dict] = []
    wait_until(lambda: lines.extend(e for e in pc.events("request")
                                    if e.get("request_id") == rid) or lines,
               10, f"the access line of request {rid}")
    return lines[0]


def test_tag_revalidates_with_head_only(make_pullcache, registry, fault_proxy, images):
    """After tag_ttl the tag is checked with a HEAD; an unchanged digest costs no GET."""
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                     extra={"tag_ttl": 0, "stale_while_revalidate": "0s"}))
    image = images["oci"]
    first = request(pc.url, "/v2/test/oci/manifests/v1", headers=ACCEPT_LINES)
    assert first.status == 200
    gets = fault_proxy.count("GET", "/manifests/")
    heads = fault_proxy.count("HEAD", "/manifests/")
    for _ in range(3):
        r = request(pc.url, "/v2/test/oci/manifests/v1", headers=ACCEPT_LINES)
        assert r.status == 200 and r.body == image.manifest
    assert fault_proxy.count("GET", "/manifests/") == gets
    assert fault_proxy.count("HEAD", "/manifests/") == heads + 3
    # By digest: never upstream at all.
    before = len(fault_proxy.requests)
    r = request(pc.url, f"/v2/test/oci/manifests/{image.digest}")
    assert r.status == 200 and len(fault_proxy.requests) == before


def test_tag_moves_to_new_digest(make_pullcache, registry, images):
    pc = make_pullcache(UpstreamSpec(registry.host, registry.url,
                                     extra={"tag_ttl": 0, "stale_while_revalidate": "0s"}))
    a, b = build_image("moving-a"), build_image("moving-b")
    push(registry, "test/moving", "latest", a)
    assert request(pc.url, "/v2/test/moving/manifests/latest").headers[
        "docker-content-digest"] == a.digest
    push(registry, "test/moving", "latest", b)
    r = request(pc.url, "/v2/test/moving/manifests/latest")
    assert r.headers["docker-content-digest"] == b.digest and r.body == b.manifest


@pytest.mark.parametrize("flavour", ["registry_basic", "registry_token"])
def test_authenticated_upstreams(request_fixture, make_pullcache, flavour):
    reg = request_fixture(flavour)
    image = build_image(f"auth-{flavour}", layer_sizes=(50_000,))
    push(reg, "private/app", "v1", image, username=reg.username, password=reg.password)
    pc = make_pullcache(UpstreamSpec(reg.host, reg.url, reg.username, reg.password))
    r = request(pc.url, "/v2/private/app/manifests/v1", headers=ACCEPT_CONTAINERD)
    assert r.status == 200 and r.body == image.manifest
    for blob in image.blobs():
        b = request(pc.url, f"/v2/private/app/blobs/{blob.digest}")
        assert b.status == 200 and b.sha256 == blob.digest


def test_token_is_cached_per_scope(make_pullcache, registry_token, token_realm):
    image = build_image("token-cache", layer_sizes=(1000, 2000, 3000))
    push(registry_token, "tc/app", "v1", image, username="alice", password="s3cret")
    pc = make_pullcache(UpstreamSpec(registry_token.host, registry_token.url, "alice", "s3cret"))
    before = token_realm.request_count
    assert request(pc.url, "/v2/tc/app/manifests/v1").status == 200
    for blob in image.blobs():
        assert request(pc.url, f"/v2/tc/app/blobs/{blob.digest}").status == 200
    assert token_realm.request_count - before == 1   # one token for repository:tc/app:pull
    assert pc.events("token_refreshed")


def test_wrong_credentials_are_an_oci_error(make_pullcache, registry_basic):
    pc = make_pullcache(UpstreamSpec(registry_basic.host, registry_basic.url, "alice", "wrong"))
    r = request(pc.url, "/v2/private/app/manifests/v1")
    assert r.status == 401 and r.error_codes == ["UNAUTHORIZED"]


def test_tags_list_paginates_with_link(pullcache, registry):
    image = build_image("tags")
    for tag in ("a", "b", "c"):
        push(registry, "test/tags", tag, image)
    r = request(pullcache.url, "/v2/test/tags/tags/list?n=2")
    assert r.status == 200 and r.json() == {"name": "test/tags", "tags": ["a", "b"]}
    link = r.headers["link"]
    assert link.startswith("</v2/test/tags/tags/list?") and 'rel="next"' in link
    nxt = request(pullcache.url, link[1:link.index(">")])
    assert nxt.json()["tags"] == ["c"]


def test_unknown_content_is_404(pullcache, images):
    missing = "sha256:" + "0" * 64
    assert request(pullcache.url, "/v2/test/oci/manifests/nope").error_codes == [
        "MANIFEST_UNKNOWN"]
    r = request(pullcache.url, f"/v2/test/oci/blobs/{missing}")
    assert r.status == 404 and r.error_codes == ["BLOB_UNKNOWN"]
    r = request(pullcache.url, f"/v2/test/oci/blobs/{missing}", method="HEAD")
    assert r.status == 404 and r.body == b""


@pytest.fixture
def request_fixture(request):
    return request.getfixturevalue
