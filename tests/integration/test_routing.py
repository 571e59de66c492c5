"""Many upstreams in one process: every routing shape real clients use, Docker Hub naming,
content shared across routes, tags kept per upstream; redirects and rate-limit headers."""

from __future__ import annotations

import pytest

from tests.support.daemon import UpstreamSpec
from tests.support.faultproxy import FaultProxy
from tests.support.http import basic_auth, request
from tests.support.images import build_image, build_index, push

D_M = "application/vnd.docker.distribution.manifest.v2+json"
D_L = "application/vnd.docker.distribution.manifest.list.v2+json"


@pytest.fixture(scope="module")
def seeded(registry, registry_token):
    hub = build_image("route-hub", layer_sizes=(30_000,))
    ghcr = build_image("route-ghcr", layer_sizes=(30_000,))
    push(registry, "library/alpine", "3.20", hub)
    push(registry_token, "o/app", "1", ghcr, username="alice", password="s3cret")
    # The same tag name on both registries names different images.
    push(registry_token, "library/alpine", "3.20", ghcr, username="alice", password="s3cret")
    return {"hub": hub, "ghcr": ghcr}


@pytest.fixture
def routed(make_pullcache, registry, registry_token):
    return make_pullcache(
        UpstreamSpec("docker.io", registry.url, default=True,
                     extra={"aliases": ["index.docker.io", "registry-1.docker.io"]}),
        UpstreamSpec("ghcr.io", registry_token.url, "alice", "s3cret"))


@pytest.mark.parametrize("path, upstream, namespace", [
    ("/v2/library/alpine/manifests/3.20", "hub", None),                 # classic dockerd
    ("/v2/alpine/manifests/3.20", "hub", None),                         # library/ added
    ("/v2/library/alpine/manifests/3.20?ns=docker.io", "hub", "docker.io"),   # containerd
    ("/v2/alpine/manifests/3.20?ns=index.docker.io", "hub", "index.docker.io"),
    ("/v2/o/app/manifests/1?ns=ghcr.io", "ghcr", "ghcr.io"),
    ("/ghcr.io/v2/o/app/manifests/1", "ghcr", "ghcr.io"),                # dockerd ≥ 25 path
    ("/v2/ghcr.io/o/app/manifests/1", "ghcr", "ghcr.io"),                # podman location
    ("/v2/ghcr.io/o/app/manifests/1?ns=ghcr.io", "ghcr", "ghcr.io"),     # override_path
    ("/docker.io/v2/alpine/manifests/3.20", "hub", "docker.io"),
    ("/v2/library/alpine/manifests/3.20?ns=ghcr.io", "ghcr", "ghcr.io"),  # tag per upstream
])
def test_every_routing_shape(routed, seeded, path, upstream, namespace):
    image = seeded[upstream]
    r = request(routed.url, path)
    assert r.status == 200, r.body
    assert r.headers["docker-content-digest"] == image.digest and r.body == image.manifest
    assert r.headers.get("oci-namespace") == namespace


def test_unknown_namespace_is_name_unknown(routed, seeded):
    for path in ("/v2/o/app/manifests/1?ns=quay.io", "/quay.io/v2/o/app/manifests/1",
                 "/v2/quay.io/o/app/manifests/1", "/quay.io/v2/"):
        r = request(routed.url, path)
        assert r.status == 404 and r.error_codes == ["NAME_UNKNOWN"], path


def test_blobs_are_shared_across_routes_where_each_upstream_has_them(routed, seeded,
                                                                   registry_token):
    layer = seeded["hub"].layers[0]
    push(registry_token, "o/shared", "1", seeded["hub"], username="alice", password="s3cret")
    cold = request(routed.url, f"/v2/alpine/blobs/{layer.digest}?ns=docker.io")  # a fill
    assert cold.sha256 == layer.digest and cold.headers["oci-namespace"] == "docker.io"
    routed.wait_committed(layer.digest)
    # Same digest under another upstream: served from the one stored copy once that
    # upstream confirms it holds it there (a HEAD: pullcache/proxy/links.py), else its 404.
    r = request(routed.url, f"/v2/o/shared/blobs/{layer.digest}?ns=ghcr.io")
    assert r.status == 200 and r.sha256 == layer.digest
    missing = request(routed.url, f"/v2/o/app/blobs/{layer.digest}?ns=ghcr.io")
    assert missing.status == 404 and missing.error_codes == ["BLOB_UNKNOWN"]
    files = [p for p in (routed.cache_dir / "blobs").rglob("*") if p.is_file()
             and p.name == layer.digest.split(":")[1]]
    assert len(files) == 1
    assert [e["digest"] for e in routed.events("fill_committed")].count(layer.digest) == 1
    assert routed.metric("pullcache_requests_total", kind="blob", outcome="hit") >= 1


def test_client_without_list_types_gets_the_platform_manifest(make_pullcache, registry):
    """Forward the client's Accept: an old client gets what the upstream would give it, and
    that representation is cached under its own digest beside the list."""
    amd64 = build_image("accept-amd64", arch="amd64", docker=True)
    arm64 = build_image("accept-arm64", arch="arm64", docker=True)
    mlist = build_index([amd64, arm64], docker=True)
    push(registry, "accept/multi", "v1", mlist)
    pc = make_pullcache(UpstreamSpec(registry.host, registry.url))
    for _ in range(2):
        old = request(pc.url, "/v2/accept/multi/manifests/v1", headers={"Accept": D_M})
        assert old.status == 200 and old.headers["docker-content-digest"] == amd64.digest
        assert old.body == amd64.manifest and old.headers["content-type"] == D_M
        new = request(pc.url, "/v2/accept/multi/manifests/v1",
                      headers=[("Accept", D_M), ("Accept", D_L)])
        assert new.headers["docker-content-digest"] == mlist.digest and new.body == mlist.manifest


def test_rate_limit_headers_are_recorded(make_pullcache, registry):
    image = build_image("ratelimit")
    push(registry, "rl/app", "v1", image)
    with FaultProxy(registry.url) as hub:
        hub.extra_headers = {"ratelimit-limit": "100;w=21600",
                             "ratelimit-remaining": "42;w=21600"}
        pc = make_pullcache(UpstreamSpec(hub.host, hub.url))
        assert request(pc.url, "/v2/rl/app/manifests/v1").status == 200
        assert pc.metric("pullcache_upstream_ratelimit_remaining", upstream=hub.host) == 42
        assert pc.metric("pullcache_upstream_ratelimit_limit", upstream=hub.host) == 100
        hub.extra_headers = {"ratelimit-limit": "100;w=21600",
                             "ratelimit-remaining": "41;w=21600"}
        assert request(pc.url, f"/v2/rl/app/manifests/{build_image('x').digest}").status == 404
        changes = [e["remaining"] for e in pc.events("ratelimit_changed")]
        assert changes == [42, 41]


def test_redirects_are_followed_without_leaking_authorization(make_pullcache, registry_basic):
    """Docker Hub sends blobs to a CDN and ECR to S3: pullcache follows the redirect itself,
    and its upstream credentials never reach the other host."""
    image = build_image("redirect", layer_sizes=(80_000,))
    push(registry_basic, "redir/app", "v1", image, username="alice", password="s3cret")
    with FaultProxy(registry_basic.url) as origin:
        origin.set_fault("redirect", match="/blobs/")
        origin.cdn_authorization = basic_auth("alice", "s3cret")
        pc = make_pullcache(UpstreamSpec(origin.host, origin.url, "alice", "s3cret"))
        for blob in image.blobs():
            r = request(pc.url, f"/v2/redir/app/blobs/{blob.digest}")
            assert r.status == 200 and r.sha256 == blob.digest
        assert len(origin.cdn_requests) == len(image.blobs())
        for seen in origin.cdn_requests:
            assert seen["host"].startswith("localhost:")
            assert "Authorization" not in seen and "Cookie" not in seen
