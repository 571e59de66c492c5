"""The S3 tier across a fleet: what node A pulled, node B pulls with no origin blob GET and no
origin manifest GET by digest; no object is stored twice; a store that is down or slow costs
node B at most the tier's short timeout; a repository never gets content it is not linked to.

The origin's request log (a counting FaultProxy) is counted; so is the store's (a FaultProxy
in front of moto's S3).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.ecr_fleet import origin_counts, pull, pull_child
from tests.support.daemon import ROOT, Pullcache, UpstreamSpec
from tests.support.ecr import AWS_ENV
from tests.support.http import request
from tests.support.images import build_image, build_index, push
from tests.support.ports import wait_until
from tests.support.s3 import *  # noqa: F401,F403 - the fixtures
from tests.support.s3 import completed_puts


def wait_stored(pc, store, *objects) -> None:
    """Until the write-behind is idle and the bucket holds ``objects`` (manifests and blobs)
    and their links: which job pushes a child manifest (the index's, or the child's own)
    depends on the order the client asks."""
    wanted = {f"pullcache/{'manifests' if hasattr(o, 'manifest') else 'blobs'}/sha256/"
              f"{o.digest.partition(':')[2]}" for o in objects}

    def done() -> bool:
        return pc.metric("pullcache_tier_write_queue") == 0 and wanted <= set(store.keys())
    wait_until(done, 60, "the write-behind to land in the bucket")


def test_node_b_pulls_a_multi_platform_image_from_the_tier(s3_node, origin, registry, store,
                                                           s3_front):
    amd64 = build_image("s3-amd64", layer_sizes=(9_500_000, 40_000), arch="amd64")  # multipart
    arm64 = build_image("s3-arm64", layer_sizes=(250_000, 30_000), arch="arm64")
    index = build_index([amd64, arm64])
    push(registry, "fleet/s3multi", "v1", index)

    a = s3_node("a", part_size="8MiB")
    for child in (amd64, arm64):
        pull_child(a, "fleet/s3multi", "v1", index, child)
    wait_stored(a, store, index, amd64, arm64, *amd64.blobs(), *arm64.blobs())
    assert s3_front.count("POST", "?uploads") >= 1   # the 9.5 MB layer went up in parts

    origin.reset_counts()
    b = s3_node("b")
    for child in (amd64, arm64):
        pull_child(b, "fleet/s3multi", "v1", index, child)
    counts = origin_counts(origin)
    # Not even the tag's HEAD: A checked it within tag_ttl, and the tier keeps A's record.
    assert counts == {"manifest GET": 0, "manifest HEAD": 0, "blob GET": 0, "blob HEAD": 0}, \
        origin.requests
    assert b.metric("pullcache_tier_reads_total", kind="tag", outcome="hit") == 1
    blobs = amd64.blobs() + arm64.blobs()
    b.wait_committed(*(blob.digest for blob in blobs))
    assert b.metric("pullcache_tier_reads_total", kind="blob", outcome="hit") == len(blobs)
    assert b.metric("pullcache_tier_reads_total", kind="manifest", outcome="hit") == 3
    # No object stored twice, by either node: B found everything there and wrote nothing.
    puts = completed_puts(s3_front, store.bucket)
    content = {k: n for k, n in puts.items() if "/blobs/" in k or "/manifests/" in k}
    assert len(content) == len(blobs) + 3 and max(content.values()) == 1, puts
    assert b.metric("pullcache_tier_uploads_total") == 0
    # Every object verifies against its digest, and manifests keep their media type.
    for blob in blobs:
        got = store.get(f"pullcache/blobs/sha256/{blob.digest.partition(':')[2]}")
        assert got["Body"].read() == blob.data
    for obj in (index, amd64, arm64):
        got = store.get(f"pullcache/manifests/sha256/{obj.digest.partition(':')[2]}")
        assert got["Body"].read() == obj.manifest and got["ContentType"] == obj.media_type


def test_node_b_revalidates_the_tiers_tag_record_after_tag_ttl(s3_node, origin, registry,
                                                                store, s3_front):
    image = build_image("s3-tag", layer_sizes=(10_000,))
    push(registry, "fleet/s3tag", "v1", image)
    a = s3_node("a")
    pull(a, "fleet/s3tag", "v1", image)
    wait_stored(a, store, image, *image.blobs())
    assert any("/_tags/v1/" in key for key in store.keys())
    origin.reset_counts()
    b = s3_node("b", upstream={"tag_ttl": "8s"})   # A checked the tag less than that ago
    s3_front.reset_counts()
    with ThreadPoolExecutor(8) as pool:               # a herd: one look at the record
        answers = list(pool.map(lambda _: request(b.url, "/v2/fleet/s3tag/manifests/v1"),
                                range(8)))
    assert all(r.status == 200 and r.body == image.manifest for r in answers)
    assert s3_front.count("GET", "/_tags/v1/manifest") == 1, s3_front.requests
    pull(b, "fleet/s3tag", "v1", image)
    assert origin.count("HEAD", "/manifests/v1") == 0

    # Past tag_ttl since A checked it, the origin decides again (a HEAD), as for any record.
    def revalidated() -> bool:
        r = request(b.url, "/v2/fleet/s3tag/manifests/v1")
        assert r.status == 200 and r.body == image.manifest
        return origin.count("HEAD", "/manifests/v1") >= 1
    wait_until(revalidated, 30, "a HEAD to the origin once the record is tag_ttl old")
    assert origin.count("GET", "/manifests/") == 0 and origin.count("GET", "/blobs/") == 0
    # A node whose tag_ttl the record is already past asks the origin at once.
    origin.reset_counts()
    c = s3_node("c", upstream={"tag_ttl": "1s"})
    r = request(c.url, "/v2/fleet/s3tag/manifests/v1")
    assert r.status == 200 and origin.count("HEAD", "/manifests/v1") == 1


def timed_pull(pc, repo: str, tag: str, image) -> float:
    """Seconds ``pull`` took through ``pc``."""
    began = time.monotonic()
    pull(pc, repo, tag, image)
    return time.monotonic() - began


def test_store_down_costs_node_b_at_most_the_tier_timeout(s3_node, origin, registry, tmp_path,
                                                          s3_front):
    image = build_image("s3-down", layer_sizes=(300_000, 20_000, 10_000))
    push(registry, "fleet/s3down", "v1", image)
    plain = Pullcache(tmp_path / "plain", [UpstreamSpec(origin.host, origin.url,
                                                        default=True)])
    (tmp_path / "plain").mkdir()
    plain.start()
    try:
        tierless = timed_pull(plain, "fleet/s3down", "v1", image)
    finally:
        plain.stop()
    for kind in ("blackhole", "status"):   # slow (never answers), then down (503)
        b = s3_node(f"b-{kind}", header_timeout="1s")
        s3_front.set_fault(kind, match="/", status=503)
        try:
            took = timed_pull(b, "fleet/s3down", "v1", image)
        finally:
            s3_front.clear_fault()
        # One short timeout at most (then the read breaker fails fast), plus noise.
        assert took < tierless + 1.0 + 1.5, (kind, took, tierless)
        assert b.metric("pullcache_tier_reads_total", outcome="error") >= 1
        # The tier's breaker: in /readyz detail (still ready), metrics, the status page.
        ready = json.loads(request(b.admin_url, "/readyz").body)
        assert ready["status"] == "ok" and ready["tier"]["read_breaker"] == "open"
        assert "tier s3: read breaker open" in ready["detail"]
        assert b.metric("pullcache_upstream_breaker_state", upstream="s3-tier") == 1
        assert b.metric("pullcache_upstream_breaker_state", upstream="s3-tier-writes") == 0
        page = json.loads(request(b.admin_url, "/admin/status").body)
        assert page["tier"]["name"] == "s3" and page["tier"]["read_breaker"] == "open"


def test_wrong_bytes_in_the_store_fall_back_to_the_origin_and_are_reported(
        s3_node, origin, registry, store, s3_front):
    image = build_image("s3-corrupt", layer_sizes=(400_000,))
    push(registry, "fleet/s3corrupt", "v1", image)
    a = s3_node("a")
    pull(a, "fleet/s3corrupt", "v1", image)
    wait_stored(a, store, image, *image.blobs())
    layer = image.layers[0]
    key = f"pullcache/blobs/sha256/{layer.digest.partition(':')[2]}"
    store.put(key, bytes(b ^ 0xFF for b in layer.data))     # rot, or a bad actor
    origin.reset_counts()
    b = s3_node("b")
    got = request(b.url, f"/v2/fleet/s3corrupt/blobs/{layer.digest}")
    assert got.status == 200 and got.sha256 == layer.digest
    assert origin.count("GET", layer.digest) == 1
    mismatches = [e for e in b.events("digest_mismatch") if e.get("source") == "s3"]
    assert len(mismatches) == 1 and mismatches[0]["level"] == "warning"
    assert b.metric("pullcache_digest_mismatches_total") >= 1


def test_access_denied_on_write_makes_the_tier_read_only(s3_node, origin, registry, store,
                                                          s3_front):
    image = build_image("s3-denied", layer_sizes=(30_000,))
    push(registry, "fleet/s3denied", "v1", image)
    s3_front.set_fault("status", match="/pullcache/", method="PUT", status=403)
    a = s3_node("a")
    pull(a, "fleet/s3denied", "v1", image)

    def logged() -> bool:
        return bool(a.events("tier_read_only"))
    wait_until(logged, 30, "the tier to turn read-only")
    event = a.events("tier_read_only")[0]
    assert event["action"] == "s3:PutObject" and event["level"] == "error"
    assert len(a.events("tier_read_only")) == 1      # logged once, not per job
    ready = json.loads(request(a.admin_url, "/readyz").body)
    assert "read-only" in next(iter(ready["tier"]["writes"].values()))


def test_static_keys_reach_the_store_and_no_log_or_render(s3_node, origin, registry, store):
    secret = "Zt9-secret-access-key-never-shown"
    image = build_image("s3-keys", layer_sizes=(20_000,))
    push(registry, "fleet/s3keys", "v1", image)
    a = s3_node("a", access_key_id="AKIAPULLCACHETEST", secret_access_key=secret)
    pull(a, "fleet/s3keys", "v1", image)
    wait_stored(a, store, image, *image.blobs())
    checked = subprocess.run(
        [sys.executable, "-m", "pullcache", "check-config",
         str(a.workdir / "pullcache.toml")], capture_output=True, text=True, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert 'secret_access_key = "***"' in checked.stdout
    assert "AKIAPULLCACHETEST" not in checked.stdout and secret not in checked.stdout
    assert secret not in a.log() and "AKIAPULLCACHETEST" not in a.log()


def test_a_repository_gets_no_tier_content_it_is_not_linked_to(s3_node, origin, registry,
                                                              store):
    image = build_image("s3-links", layer_sizes=(50_000,))
    push(registry, "team-a/app", "v1", image)
    push(registry, "team-b/app", "v1", image)
    a = s3_node("a")
    pull(a, "team-a/app", "v1", image)
    wait_stored(a, store, image, *image.blobs())
    origin.reset_counts()
    b = s3_node("b")
    layer = image.layers[0]
    # team-b/app never went through the tier: its link is absent, so the origin answers.
    r = request(b.url, f"/v2/team-b/app/blobs/{layer.digest}")
    assert r.status == 200 and r.sha256 == layer.digest
    assert origin.count("GET", layer.digest) == 1
    b.wait_committed(layer.digest)
    skipped = b.events("fill_source_skipped")
    assert [e["source"] for e in skipped] == ["s3"] and skipped[0]["level"] == "info"
    assert b.metric("pullcache_tier_reads_total", kind="blob", outcome="miss") == 1


def _tier_cli(pc, action: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "pullcache", "tier", action, "--config",
                          str(pc.workdir / "pullcache.toml")], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                        **AWS_ENV}, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_tier_status_names_the_bucket_and_its_state(s3_node, origin, registry, store,
                                                   s3_front):
    image = build_image("s3-status", layer_sizes=(20_000,))
    push(registry, "fleet/s3status", "v1", image)
    s3_front.set_fault("status", match="/blobs/", method="HEAD", status=500)   # writes fail
    a = s3_node("a", write_retries=0)
    pull(a, "fleet/s3status", "v1", image)
    wait_until(lambda: _tier_cli(a, "status")["failed"] >= 1, 30, "a failed write")
    status = _tier_cli(a, "status")
    where = f"s3://{store.bucket}/pullcache/"
    assert status["source"] == "daemon" and list(status["repositories"]) == [where]
    assert status["repositories"][where]["state"] == "writable"
    assert f"{origin.host}/fleet/s3status" in status["queue"]
    a.stop()
    offline = _tier_cli(a, "status")
    assert offline["source"] == "offline" and offline["failed"] >= 1
    assert set(offline["queue"]) == {f"{origin.host}/fleet/s3status"}
