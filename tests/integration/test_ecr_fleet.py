"""The ECR tier across a fleet: every manifest shared, zero origin manifest GETs for what any
node already has, blob HEADs from the tier, one upload per (repository, digest), and a
write-behind queue that survives SIGKILL.

The origin's request log (a counting FaultProxy) is counted in every test; so is the data
plane's (the FaultProxy in front of the registry that stands in for ECR).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.daemon import ROOT
from tests.support.ecr import AWS_ENV
from tests.support.ecr_fleet import *  # noqa: F401,F403 - the fixtures
from tests.support.ecr_fleet import (completed_uploads, ecr_auth, ecr_repo, origin_counts,
                                     pull, pull_child, wait_written)
from tests.support.http import request
from tests.support.images import build_image, build_index, push
from tests.support.ports import wait_until


def test_node_b_gets_every_manifest_from_the_tier(node, origin, registry, ecr_front,
                                                   ecr_registry):
    amd64 = build_image("fleet-amd64", layer_sizes=(9_000_000, 40_000), arch="amd64")  # 2 PATCHes
    arm64 = build_image("fleet-arm64", layer_sizes=(250_000, 30_000), arch="arm64")
    index = build_index([amd64, arm64])
    push(registry, "fleet/multi", "v1", index)

    a = node("a")
    pull_child(a, "fleet/multi", "v1", index, amd64)
    # Jobs: the index (with its tag), the amd64 manifest, amd64's blobs.
    wait_written(a, 2 + len(amd64.blobs()))
    # The arm64 manifest, which no node pulled, was fetched from the origin once, by the
    # write-behind: a manifest, never its layers.
    assert origin.count("GET", f"/manifests/{arm64.digest}") == 1
    for blob in arm64.blobs():
        assert origin.count("GET", blob.digest) == 0

    origin.reset_counts()
    b = node("b")
    pull_child(b, "fleet/multi", "v1", index, arm64)
    pull_child(b, "fleet/multi", "v1", index, amd64)
    counts = origin_counts(origin)
    # The tag is still the origin's to say: one HEAD (free on Docker Hub); no manifest GET.
    assert counts["manifest GET"] == 0, (counts, origin.requests)
    assert counts["manifest HEAD"] == 1, origin.requests
    # Only arm64's layers and config come from the origin, each once; nothing of amd64.
    assert counts["blob GET"] == len(arm64.blobs()), origin.requests
    for blob in arm64.blobs():
        assert origin.count("GET", blob.digest) == 1
    assert counts["blob HEAD"] == 0
    assert b.metric("pullcache_tier_reads_total", kind="manifest", outcome="hit") == 3
    # Counted once each fill commits, which may follow the client's last byte.
    b.wait_committed(*(blob.digest for blob in amd64.blobs() + arm64.blobs()))
    assert b.metric("pullcache_tier_reads_total", kind="blob", outcome="hit") == \
        len(amd64.blobs())
    # arm64's blobs were tier misses: normal, so logged at info, never as a warning.
    skipped = b.events("fill_source_skipped")
    assert len(skipped) == len(arm64.blobs()) and {e["level"] for e in skipped} == {"info"}

    # B writes back what it took from the origin (arm64's blobs), and completes what the tier
    # held only as artifacts: arm64's manifest, then the index, with the tag B saw.
    wait_written(b, len(arm64.blobs()) + 2)
    uploads = completed_uploads(ecr_front)
    assert uploads and max(uploads.values()) == 1, uploads   # no blob uploaded twice
    mirrored = ecr_repo(origin, "fleet/multi")
    for blob in (*amd64.blobs(), *arm64.blobs()):
        assert uploads[(mirrored, blob.digest)] == 1, blob.digest
    # The metrics count real uploads, and match the data plane's log.
    metric = sum(pc.metric("pullcache_tier_uploads_total", kind="blob", outcome="completed")
                 for pc in (a, b))
    assert metric == sum(uploads.values())
    # A pushed amd64 as an image, and the index and arm64 (no layers in the tier then) as
    # artifacts that read back by digest: the artifact's one blob is the manifest itself.
    for obj in (index, arm64):
        got = request(ecr_registry.url, f"/v2/pullcache/manifests/blobs/{obj.digest}",
                      headers=ecr_auth(ecr_registry))
        assert got.status == 200 and got.body == obj.manifest
    # After B, every manifest is in the mirror as itself, and v1 names the index.
    for ref, obj in ((amd64.digest, amd64), (arm64.digest, arm64), ("v1", index)):
        got = request(ecr_registry.url, f"/v2/{mirrored}/manifests/{ref}",
                      headers=ecr_auth(ecr_registry, f"{index.media_type}, {amd64.media_type}"))
        assert got.status == 200 and got.body == obj.manifest, ref


def test_a_third_node_fetches_no_manifest_from_the_origin(node, origin, registry):
    amd64 = build_image("fleet3-amd64", layer_sizes=(20_000,), arch="amd64")
    arm64 = build_image("fleet3-arm64", layer_sizes=(20_000,), arch="arm64")
    index = build_index([amd64, arm64])
    push(registry, "fleet/third", "v1", index)
    a = node("a")
    pull_child(a, "fleet/third", "v1", index, amd64)
    wait_written(a, 2 + len(amd64.blobs()))
    origin.reset_counts()
    b = node("b")
    pull_child(b, "fleet/third", "v1", index, arm64)
    wait_written(b, len(arm64.blobs()) + 2)
    # Neither B's pull nor its write-back fetched a manifest: the fleet had them all.
    assert origin.count("GET", "/manifests/") == 0, origin.requests
    origin.reset_counts()
    c = node("c")
    for child in (amd64, arm64):
        pull_child(c, "fleet/third", "v1", index, child)
    assert origin_counts(origin) == {"manifest GET": 0, "manifest HEAD": 1, "blob GET": 0,
                                     "blob HEAD": 0}, origin.requests


def test_blob_head_is_served_from_the_tier(node, origin, registry):
    image = build_image("fleet-head", layer_sizes=(120_000,))
    push(registry, "fleet/head", "v1", image)
    a = node("a")
    pull(a, "fleet/head", "v1", image)
    wait_written(a, len(image.blobs()) + 1)
    origin.reset_counts()
    b = node("b")
    layer = image.layers[0]
    r = request(b.url, f"/v2/fleet/head/blobs/{layer.digest}", method="HEAD")
    assert r.status == 200 and int(r.headers["content-length"]) == layer.size
    assert origin_counts(origin) == {"manifest GET": 0, "manifest HEAD": 0, "blob GET": 0,
                                     "blob HEAD": 0}, origin.requests
    assert b.metric("pullcache_tier_reads_total", kind="blob_head", outcome="hit") == 1
    # A blob the tier lacks: the origin answers the HEAD (the tier said "miss").
    missing = build_image("fleet-head-2", layer_sizes=(1000,))
    push(registry, "fleet/head", "v2", missing)
    r = request(b.url, f"/v2/fleet/head/blobs/{missing.layers[0].digest}", method="HEAD")
    assert r.status == 200 and origin.count("HEAD", "/blobs/") == 1
    assert b.metric("pullcache_tier_reads_total", kind="blob_head", outcome="miss") == 1


def tier_status(pc) -> dict:
    """``pullcache tier status``: from the daemon's admin API while it runs, else offline
    (the durable queue and DescribeRepositories)."""
    out = subprocess.run([sys.executable, "-m", "pullcache", "tier", "status", "--config",
                          str(pc.workdir / "pullcache.toml")], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                        **AWS_ENV}, timeout=60, check=True)
    return json.loads(out.stdout)


def test_queued_pushes_survive_sigkill(node, origin, registry, ecr_front, ecr_registry):
    image = build_image("fleet-crash", layer_sizes=(200_000, 50_000))
    push(registry, "fleet/crash", "v1", image)
    # The data plane takes no upload: every push hangs.
    ecr_front.set_fault("blackhole", match="/blobs/uploads/")
    a = node("a", header_timeout="30s")
    pull(a, "fleet/crash", "v1", image)
    assert origin_counts(origin) == {"manifest GET": 1, "manifest HEAD": 1,
                                     "blob GET": len(image.blobs()), "blob HEAD": 0}
    mirrored = ecr_repo(origin, "fleet/crash")
    jobs = len(image.blobs()) + 1

    def queued() -> bool:
        queue = tier_status(a)["queue"].get(mirrored, {})
        return queue.get("pending", 0) + queue.get("in_flight", 0) == jobs
    wait_until(queued, 30, "every job in the durable queue")
    a.kill()
    ecr_front.clear_fault()
    ecr_front.reset_counts()
    a.start()
    wait_written(a, jobs)
    assert a.events("tier_queue_resumed")[-1]["jobs"] == jobs
    # Resumed from the local cache: the origin was asked nothing more.
    assert origin_counts(origin)["blob GET"] == len(image.blobs())
    assert origin_counts(origin)["manifest GET"] == 1
    assert tier_status(a)["queue"] == {}
    status = tier_status(a)
    assert mirrored in status["repositories"]
    auth = ecr_auth(ecr_registry, image.media_type)
    assert request(ecr_registry.url, f"/v2/{mirrored}/manifests/v1",
                   headers=auth).body == image.manifest
    uploads = completed_uploads(ecr_front)
    assert {digest for (_, digest) in uploads} == {b.digest for b in image.blobs()}
    assert max(uploads.values()) == 1


def test_tier_status_has_one_schema_from_the_daemon_and_offline(node, origin, registry,
                                                                 ecr_front):
    """Issue 26 #16: ``enabled`` and ``in_flight`` were only in the daemon's answer, and
    ``repositories`` had two shapes (states online, settings offline)."""
    image = build_image("fleet-schema", layer_sizes=(20_000,))
    push(registry, "fleet/schema", "v1", image)
    ecr_front.set_fault("blackhole", match="/blobs/uploads/")   # the pushes stay queued
    a = node("a", drain_timeout="1s")
    pull(a, "fleet/schema", "v1", image)
    mirrored = ecr_repo(origin, "fleet/schema")
    jobs = len(image.blobs()) + 1

    def queued(status: dict) -> int:
        return status["queue"].get(mirrored, {}).get("pending", 0) + \
            status["queue"].get(mirrored, {}).get("in_flight", 0)
    wait_until(lambda: queued(tier_status(a)) == jobs, 30, "every job queued")
    online = tier_status(a)
    a.stop()
    ecr_front.clear_fault()
    offline = tier_status(a)
    assert (online["source"], offline["source"]) == ("daemon", "offline")
    assert online["enabled"] is offline["enabled"] is True
    assert offline["pending"] == jobs and offline["in_flight"] == 0

    def shape(status: dict) -> dict:   # offline lists every repository of the (shared) moto
        return {k: type(v).__name__ for k, v in status.items()}
    assert shape(online) == shape(offline)
    assert mirrored in online["repositories"] and mirrored in offline["repositories"]
    assert set(online["queue"][mirrored]) == set(offline["queue"][mirrored]) == {
        "pending", "in_flight", "failed"}
    assert set(online["repositories"][mirrored]) == set(offline["repositories"][mirrored])
    assert online["repositories"][mirrored]["state"] == "created"
    assert offline["repositories"][mirrored]["state"] == "existing"
    assert offline["repositories"][mirrored]["encryption"] == "AES256"
