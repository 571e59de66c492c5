"""Amazon ECR as the shared backing tier of a fleet, and as an upstream, offline: moto is
the ECR API, a real Distribution registry (htpasswd user AWS) the ECR registry endpoint."""

from __future__ import annotations

import pytest

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.ecr import AWS_ENV, backing_config
from tests.support.ecr_fleet import *  # noqa: F401,F403 - the fixtures
from tests.support.ecr_fleet import ecr_auth, ecr_repo, pull, wait_written
from tests.support.http import request
from tests.support.images import build_image, push
from tests.support.ports import wait_until


def assert_tier_tried(pc: Pullcache, image) -> None:
    """The tier was asked first, and failed, for the manifest and for every blob."""
    assert pc.metric("pullcache_tier_reads_total", kind="manifest", outcome="error") == 1
    skipped = {e["digest"] for e in pc.events("fill_source_skipped") if e["source"] == "ecr"}
    assert skipped == {blob.digest for blob in image.blobs()}


def test_two_nodes_share_the_tier(node, origin, registry, moto, ecr_registry):
    image = build_image("ecr-fleet", layer_sizes=(400_000, 90_000))
    push(registry, "fleet/app", "v1", image)
    a = node("a")
    pull(a, "fleet/app", "v1", image)
    wait_written(a, len(image.blobs()) + 1)
    # Landed in ECR: the repository exists (API), the content is in the registry.
    mirrored = ecr_repo(origin, "fleet/app")
    assert mirrored in moto.repositories()
    auth = ecr_auth(ecr_registry, image.media_type)
    tagged = request(ecr_registry.url, f"/v2/{mirrored}/manifests/v1", headers=auth)
    assert tagged.status == 200 and tagged.body == image.manifest
    for blob in image.blobs():
        assert request(ecr_registry.url, f"/v2/{mirrored}/blobs/{blob.digest}",
                       method="HEAD", headers=auth).status == 200

    blob_gets = origin.count("GET", "/blobs/")
    b = node("b")
    pull(b, "fleet/app", "v1", image)
    assert origin.count("GET", "/blobs/") == blob_gets, "node B fetched blobs from the origin"
    # Counted once each fill commits, which may follow the client's last byte.
    wait_until(lambda: b.metric("pullcache_tier_reads_total", kind="blob",
                                outcome="hit") == len(image.blobs()), 30, "tier reads counted")
    # The origin still decides what the tag means (a HEAD), and nothing is written back.
    assert b.metric("pullcache_tier_writes_total", kind="blob") == 0


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 429, "retry_after": 1},
    {"kind": "reset"},
])
def test_tier_trouble_falls_back_to_the_origin(node, origin, registry, ecr_front, fault):
    image = build_image(f"ecr-down-{fault['kind']}-{fault.get('status')}",
                        layer_sizes=(50_000,))
    push(registry, "fleet/down", "v1", image)
    kind = fault.pop("kind")
    ecr_front.set_fault(kind, match="/v2/", **fault)
    pc = node("c")
    pull(pc, "fleet/down", "v1", image)   # no client-visible error
    assert ecr_front.fault_hits >= 1 + len(image.blobs())   # the manifest and every blob
    assert_tier_tried(pc, image)
    assert origin.count("GET", "/blobs/") == len(image.blobs())
    assert "Traceback" not in pc.log()


def test_tier_unreachable_falls_back_to_the_origin(node, origin, registry, moto, tmp_path):
    image = build_image("ecr-unreachable", layer_sizes=(50_000,))
    push(registry, "fleet/gone", "v1", image)
    workdir = tmp_path / "gone"
    workdir.mkdir()
    pc = Pullcache(workdir, [UpstreamSpec(origin.host, origin.url, default=True)],
                   backing=backing_config(moto, "http://127.0.0.1:9"), env=AWS_ENV).start()
    try:
        pull(pc, "fleet/gone", "v1", image)
        assert_tier_tried(pc, image)
        assert origin.count("GET", "/blobs/") == len(image.blobs())
    finally:
        pc.stop()


def test_corrupt_blob_in_the_tier_is_never_served(node, origin, registry, ecr_front):
    image = build_image("ecr-corrupt", layer_sizes=(300_000,))
    push(registry, "fleet/corrupt", "v1", image)
    a = node("a")
    pull(a, "fleet/corrupt", "v1", image)
    wait_written(a, len(image.blobs()) + 1)
    layer = image.layers[0]
    ecr_front.set_fault("corrupt", match=layer.digest, at_byte=1000)
    gets = origin.count("GET", layer.digest)
    b = node("b")
    r = request(b.url, f"/v2/fleet/corrupt/blobs/{layer.digest}")
    assert r.status == 200 and r.sha256 == layer.digest      # the origin's verified copy
    assert origin.count("GET", layer.digest) == gets + 1
    assert b.events("digest_mismatch") and b.events("fill_source_skipped")


def test_expired_token_is_refreshed_not_an_error(node, origin, registry, ecr_front):
    image = build_image("ecr-expired", layer_sizes=(60_000,))
    push(registry, "fleet/expired", "v1", image)
    a = node("a")
    pull(a, "fleet/expired", "v1", image)
    wait_written(a, len(image.blobs()) + 1)
    b = node("b", token_min_refresh="0s")
    assert request(b.url, "/v2/").status == 200
    # The ECR registry refuses the token once, as it does when a token has expired.
    ecr_front.set_fault("status", status=401, match="/blobs/", times=1)
    gets = origin.count("GET", "/blobs/")
    refreshed = len(b.events("token_refreshed"))
    pull(b, "fleet/expired", "v1", image)
    assert ecr_front.fault_hits == 1                       # the 401 was answered …
    assert len(b.events("token_refreshed")) > refreshed    # … with a fresh token
    assert origin.count("GET", "/blobs/") == gets, "fell back to the origin instead"
    assert not b.events("fill_source_skipped")


def test_ecr_as_an_upstream(make_pullcache, moto, ecr_registry):
    """``auth = "ecr"``: Basic credentials from GetAuthorizationToken."""
    image = build_image("ecr-upstream", layer_sizes=(40_000,))
    push(ecr_registry, "team/service", "v1", image, username="AWS",
         password=ecr_registry.password)
    spec = UpstreamSpec(ecr_registry.host, ecr_registry.url, default=True, extra={
        "auth": "ecr", "region": "us-east-1", "registry_id": "123456789012",
        "aws_endpoint_url": moto.url})
    pc = make_pullcache(spec)
    pc.stop()
    pc.env = AWS_ENV
    pc.start()
    pull(pc, "team/service", "v1", image)
    assert pc.events("token_refreshed")
