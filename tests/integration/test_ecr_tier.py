"""The ECR tier under AWS's limits: a blob bigger than the cache and the pass-through window,
uploads and token refreshes throttled, least-privilege IAM, a name ECR refuses.

moto (behind ``AwsFront``, which injects AWS errors per operation) is the ECR API; a
Distribution registry behind a FaultProxy is the ECR data plane.
"""

from __future__ import annotations

import os
import time

from tests.support.ecr_fleet import *  # noqa: F401,F403 - the fixtures
from tests.support.ecr_fleet import completed_uploads, ecr_repo, pull, wait_written
from tests.support.http import request
from tests.support.images import build_image, push
from tests.support.ports import wait_until

MiB = 1 << 20
# TEST_BIG_TIER_BLOB=1: the figures of the issue (a 150 MB blob, a 100 MB budget, the
# default 64 MiB window); else the same shape, smaller.
BIG = os.environ.get("TEST_BIG_TIER_BLOB") == "1"
THROTTLE_SECONDS = float(os.environ.get("TEST_THROTTLE_SECONDS", "0"))


def origin_gets(origin, digest: str) -> int:
    return origin.count("GET", f"/blobs/{digest}")


def test_a_tier_blob_bigger_than_the_window_is_served_from_the_origin(node, origin, registry):
    """Node B's budget cannot hold the blob, so its fill passes through memory; the tier's
    copy is held back until verified and cannot fit the window whole, so the fill hands
    over to the origin, which streams: byte-exact, no reader cut."""
    # The window is well above what a client on a loaded machine falls behind the origin.
    size, budget, window = (150_000_000, "100MB", "64MiB") if BIG else (24 * MiB, "16MiB",
                                                                        "12MiB")
    image = build_image("tier-big", layer_sizes=(size,))
    push(registry, "tier/big", "v1", image)
    a = node("a")
    pull(a, "tier/big", "v1", image)
    wait_written(a, len(image.blobs()) + 1, timeout=120)
    layer = image.blobs()[-1]
    assert layer.size >= size and origin_gets(origin, layer.digest) == 1
    b = node("b", cache={"max_size": budget, "min_free": "0", "passthrough_window": window})
    r = request(b.url, f"/v2/tier/big/blobs/{layer.digest}", timeout=120)
    assert r.status == 200 and r.sha256 == layer.digest and len(r.body) == layer.size
    [skipped] = [e for e in b.events("fill_source_skipped") if e["digest"] == layer.digest]
    assert skipped["source"] == "ecr" and "cannot pass through" in skipped["error"]
    assert origin_gets(origin, layer.digest) == 2       # B's one fill, from the origin
    assert not b.events("fill_failed")


def test_throttled_uploads_and_token_refreshes_leave_reads_working(node, origin, registry,
                                                                   aws, ecr_front):
    """GetAuthorizationToken and every upload PATCH throttled (429) for a while: node A's
    write breaker opens, its reads from the tier go on (with the token it has), and every
    queued job lands once the throttling stops."""
    settings = dict(token_min_refresh="1s", breaker_failures=2, breaker_cooldown="1s",
                    write_retries=2)
    shared = build_image("tier-throttle-shared", layer_sizes=(40_000, 41_000))
    own = build_image("tier-throttle-own", layer_sizes=(30_000, 31_000, 32_000))
    first = build_image("tier-throttle-first", layer_sizes=(10_000,))
    for repo, image in (("thr/shared", shared), ("thr/own", own), ("thr/first", first)):
        push(registry, repo, "v1", image)
    b = node("b", **settings)
    pull(b, "thr/shared", "v1", shared)              # into the tier, by another node
    wait_written(b, len(shared.blobs()) + 1)
    a = node("a", **settings)
    pull(a, "thr/first", "v1", first)                # A holds a token
    wait_written(a, len(first.blobs()) + 1)

    aws.fail["GetAuthorizationToken"] = ("ThrottlingException", "Rate exceeded")
    ecr_front.set_fault("status", status=429, match="/blobs/uploads/", method="PATCH")
    throttled_at = time.monotonic()
    fetched = aws.count("GetAuthorizationToken")
    pull(a, "thr/own", "v1", own)                    # its uploads are throttled
    wait_until(lambda: ecr_front.fault_hits >= 2 and
               aws.count("GetAuthorizationToken") > fetched, 30,
               "throttled uploads and a throttled token refresh")
    pull(a, "thr/shared", "v1", shared)              # reads: from the tier all the same
    assert [origin_gets(origin, blob.digest) for blob in shared.blobs()] == \
        [1] * len(shared.blobs())                    # B's fills only
    wait_until(lambda: a.metric("pullcache_tier_reads_total", kind="blob", outcome="hit") ==
               len(shared.blobs()), 10, "the tier hits counted as their fills commit")

    assert a.events("token_refresh_failed")
    # The throttling is the fault: held for THROTTLE_SECONDS in all (20 s is the issue's
    # figure; the suite holds it only as long as the checks above take).
    time.sleep(max(0.0, THROTTLE_SECONDS - (time.monotonic() - throttled_at)))
    aws.fail.clear()
    ecr_front.clear_fault()
    wait_written(a, len(first.blobs()) + 1 + len(own.blobs()) + 1, timeout=60)
    assert a.metric("pullcache_tier_writes_total", outcome="failed") == 0
    name = ecr_repo(origin, "thr/own")
    done = completed_uploads(ecr_front)
    assert all(done[(name, blob.digest)] == 1 for blob in own.blobs()), done


def test_least_privilege_iam_with_pre_created_repositories(node, origin, registry, moto, aws,
                                                           ecr_front):
    """CreateRepository denied (AWS checks IAM before existence), the repository made
    beforehand (Terraform): DescribeRepositories finds it, and the writes land."""
    image = build_image("tier-iam", layer_sizes=(20_000, 21_000))
    push(registry, "tier/iam", "v1", image)
    name = ecr_repo(origin, "tier/iam")
    moto.client().create_repository(repositoryName=name)
    aws.deny.add("CreateRepository")
    a = node("a")
    pull(a, "tier/iam", "v1", image)
    wait_written(a, len(image.blobs()) + 1)
    assert a.metric("pullcache_tier_writes_total", outcome="denied") == 0
    assert a.metric("pullcache_tier_writes_total", outcome="pushed") == len(image.blobs()) + 1
    done = completed_uploads(ecr_front)
    assert all(done[(name, blob.digest)] == 1 for blob in image.blobs())
    assert aws.count("CreateRepository") == 1 and aws.count("DescribeRepositories") >= 1
    assert a.events("ecr_repository_used_as_is")


def test_a_name_ecr_refuses_is_skipped_once_never_retried(node, origin, registry, aws,
                                                          ecr_front):
    message = ("Invalid parameter at 'repositoryName' failed to satisfy constraint: 'must "
               "satisfy regular expression '(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+"
               "(?:[._-][a-z0-9]+)*''")
    aws.fail["CreateRepository"] = ("InvalidParameterException", message)
    image = build_image("tier-invalid", layer_sizes=(5_000, 6_000))
    push(registry, "tier/invalid", "v1", image)
    a = node("a")
    pull(a, "tier/invalid", "v1", image)
    wait_written(a, len(image.blobs()) + 1)
    assert aws.count("CreateRepository") == 1
    assert a.metric("pullcache_tier_writes_total", outcome="skipped") == len(image.blobs()) + 1
    assert a.metric("pullcache_tier_writes_total", outcome="failed") == 0
    [line] = a.events("ecr_repository_skipped")
    assert "InvalidParameterException" in line["error"] and "regular expression" in line["error"]
    assert ecr_front.count("POST") == 0


def test_tier_sync_queues_failed_jobs_again(node, origin, registry, ecr_front):
    """Jobs that failed for good (an IAM mistake: uploads denied) reach the tier after
    ``pullcache tier sync`` (the periodic pass does the same on its own, once the write
    breaker is closed; an outage keeps jobs waiting, not failed)."""
    import json
    import subprocess
    import sys

    from tests.support.daemon import ROOT
    from tests.support.ecr import AWS_ENV
    image = build_image("tier-sync", layer_sizes=(7_000, 8_000))
    push(registry, "tier/sync", "v1", image)
    a = node("a")
    ecr_front.set_fault("status", status=403, match="/blobs/uploads/")
    pull(a, "tier/sync", "v1", image)
    wait_written(a, len(image.blobs()) + 1)
    assert a.metric("pullcache_tier_writes_total", outcome="denied") == len(image.blobs()) + 1
    ecr_front.clear_fault()
    out = subprocess.run([sys.executable, "-m", "pullcache", "tier", "sync", "--config",
                          str(a.workdir / "pullcache.toml")], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                        **AWS_ENV}, timeout=60, check=True)
    assert json.loads(out.stdout) == {"source": "daemon", "queued": len(image.blobs()) + 1}
    wait_written(a, 2 * (len(image.blobs()) + 1))
    done = completed_uploads(ecr_front)
    name = ecr_repo(origin, "tier/sync")
    assert all(done[(name, blob.digest)] == 1 for blob in image.blobs()), done


def test_a_cut_tier_transfer_resumes_with_range(node, origin, registry, ecr_front):
    """Node B's download from the tier is cut midway: it goes on from where it was cut (a
    Range request), verified as one blob; the origin is not asked."""
    image = build_image("tier-resume", layer_sizes=(6 * MiB,))
    push(registry, "tier/resume", "v1", image)
    a = node("a")
    pull(a, "tier/resume", "v1", image)
    wait_written(a, len(image.blobs()) + 1)
    layer = image.blobs()[-1]
    b = node("b")
    ecr_front.set_fault("truncate", match=f"/blobs/{layer.digest}", method="GET",
                        at_byte=2 * MiB, times=1)
    r = request(b.url, f"/v2/tier/resume/blobs/{layer.digest}")
    assert r.status == 200 and r.sha256 == layer.digest
    assert ecr_front.fault_hits == 1
    assert origin_gets(origin, layer.digest) == 1                # A's fill only
    [resumed] = b.events("fill_resumed")
    assert resumed["source"] == "ecr" and resumed["offset"] >= 1
