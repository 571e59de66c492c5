"""Operators drive the cache (issue #12): warm, pins, rm, verify, ls/stats, the cache-dir
lock; against the real registry behind the counting fault proxy, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from pullcache.cache.lock import CacheLock
from pullcache.cli.client import AdminClient
from pullcache.ops.warm import MAX_WARM_JOBS
from tests.integration.test_cache_engine import Download
from tests.support.binaries import require
from tests.support.daemon import ROOT, Pullcache, UpstreamSpec
from tests.support.http import request
from tests.support.images import build_image, build_index, build_raw_blob_image, push
from tests.support.ports import wait_until

MiB = 1024 * 1024


def cli(pc, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLCACHE_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "pullcache", *args, "--config",
                           str(pc.workdir / "pullcache.toml")], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def cli_json(pc, *args: str) -> dict:
    return json.loads(cli(pc, *args, "--json").stdout)


def blob_file(pc, digest: str):
    return pc.cache_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]


def test_warm_one_platform_then_all_then_skopeo_needs_no_upstream_blob(counted, registry,
                                                                       fault_proxy, tmp_path):
    amd, arm = (build_image(f"warm-{a}", arch=a, layer_sizes=(30_000, 60_000))
                for a in ("amd64", "arm64"))
    index = build_index([amd, arm])
    push(registry, "ops/multi", "v1", index)
    ref = f"{fault_proxy.host}/ops/multi:v1"

    one = cli_json(counted, "warm", ref, "--platform", "linux/arm64")
    [image] = one["images"]
    assert one["state"] == "done" and image["digest"] == index.digest
    assert image["platforms"] == ["linux/arm64"]
    assert image["layers_total"] == image["layers_done"] == len(arm.blobs())
    assert image["fetched_bytes"] == sum(b.size for b in arm.blobs())
    for blob in arm.blobs():
        assert fault_proxy.count("GET", f"/blobs/{blob.digest}") == 1
    assert not any(blob_file(counted, b.digest).exists() for b in amd.blobs())

    both = cli_json(counted, "warm", ref, "--all-platforms")["images"][0]
    assert sorted(both["platforms"]) == ["linux/amd64", "linux/arm64"]
    assert both["cached_bytes"] == sum(b.size for b in arm.blobs())
    assert both["fetched_bytes"] == sum(b.size for b in amd.blobs())

    fault_proxy.reset_counts()
    subprocess.run([require("skopeo"), "--insecure-policy", "copy", "--all", "--src-tls-verify=false",
                    f"docker://{counted.host}/ops/multi:v1", f"oci:{tmp_path / 'out'}:v1"],
                   check=True, capture_output=True, timeout=120)
    assert fault_proxy.count("GET", "/blobs/") == 0, fault_proxy.requests


def test_warm_and_a_concurrent_pull_share_one_upstream_get_per_layer(counted, registry,
                                                                     fault_proxy):
    image = build_raw_blob_image("warm-herd", 8 * MiB)
    push(registry, "ops/herd", "v1", image)
    layer = image.layers[0]
    fault_proxy.set_fault("stall", match=layer.digest, at_byte=2 * MiB, times=1)
    warm = subprocess.Popen([sys.executable, "-m", "pullcache", "warm", "--json", "--config",
                             str(counted.workdir / "pullcache.toml"),
                             f"{fault_proxy.host}/ops/herd:v1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert fault_proxy.stalled.wait(30)
        pull = Download(counted.host, f"/v2/ops/herd/blobs/{layer.digest}")
        pull.start()
        assert pull.first_byte.wait(30)   # the pull tails the warm's fill
        fault_proxy.release()
        out, err = warm.communicate(timeout=60)
    finally:
        fault_proxy.clear_fault()
        if warm.poll() is None:
            warm.kill()
    assert warm.returncode == 0, err
    pull.join(30)
    assert pull.digest == layer.digest
    assert json.loads(out)["images"][0]["state"] == "done"
    for blob in image.blobs():
        assert fault_proxy.count("GET", f"/blobs/{blob.digest}") == 1


def test_warm_reports_failures_and_exits_1_with_plain_lines_off_a_terminal(counted,
                                                                           registry, tmp_path):
    image = build_image("warm-plain", layer_sizes=(10_000,))
    push(registry, "ops/plain", "v1", image)
    listing = tmp_path / "images.txt"
    listing.write_text("# what CI needs\nops/plain:v1\n\nops/missing:v1  # gone\n")
    proc = cli(counted, "warm", "--file", str(listing), check=False)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(line.startswith("warm ops/plain:v1: done, 2/2 layers") for line in lines), lines
    assert any(line.startswith("warm ops/missing:v1: failed: MANIFEST_UNKNOWN")
               for line in lines), lines
    summary = [line for line in lines if line.startswith("│ ops/")]
    assert len(summary) == 2 and "ok" in summary[0] and "MANIFEST_UNKNOWN" in summary[1]
    assert "warm ops/missing:v1: MANIFEST_UNKNOWN" in proc.stderr
    again = cli_json(counted, "warm", "ops/plain:v1")["images"][0]
    assert again["fetched_bytes"] == 0 and again["cached_bytes"] == sum(
        b.size for b in image.blobs())


def test_pinned_images_survive_an_eviction_storm(make_pullcache, registry):
    pinned = build_raw_blob_image("pin-storm", int(1.5 * MiB))
    push(registry, "ops/pinned", "v1", pinned)
    pc = make_pullcache(UpstreamSpec(registry.host, registry.url), max_size="6MiB",
                        high_watermark=0.9, low_watermark=0.6,
                        pin=[f"{registry.host}/ops/pinned:v1"])
    wait_until(lambda: _pin(pc)["digest"] == pinned.digest and not _pin(pc)["warming"],
               timeout=30, what="pin warmed")
    assert pc.metric("pullcache_pinned_bytes") >= pinned.layers[0].size
    others = [build_raw_blob_image(f"storm-{i}", MiB) for i in range(8)]
    for i, image in enumerate(others):
        push(registry, "ops/storm", f"v{i}", image)
        r = request(pc.url, f"/v2/ops/storm/blobs/{image.layers[0].digest}")
        assert (r.status, r.sha256) == (200, image.layers[0].digest)
    assert pc.metric("pullcache_evicted_files_total") >= 4
    for blob in pinned.blobs():
        assert blob_file(pc, blob.digest).exists(), "a pinned blob was evicted"
    listed = cli_json(pc, "cache", "pins")
    assert listed["pins"][0]["digest"] == pinned.digest
    human = cli(pc, "cache", "pins").stdout
    assert "ops/pinned:v1" in human and "warm" in human
    rows = {r["repository"]: r for r in cli_json(pc, "cache", "ls")["images"]}
    assert list(rows) == ["ops/pinned"] and rows["ops/pinned"]["pinned"]
    assert rows["ops/pinned"]["size"] == pinned.size + sum(b.size for b in pinned.blobs())


def test_pins_larger_than_the_budget_are_reported_at_start_and_in_readyz(make_pullcache,
                                                                         registry):
    big = build_raw_blob_image("pin-too-big", 2 * MiB)
    push(registry, "ops/too-big", "v1", big)
    pc = make_pullcache(UpstreamSpec(registry.host, registry.url), max_size="1MiB",
                        pin=[f"{registry.host}/ops/too-big:v1"])
    wait_until(lambda: request(pc.admin_url, "/readyz").json()["detail"], timeout=30,
               what="readyz detail")
    ready = request(pc.admin_url, "/readyz").json()
    assert ready["status"] == "ok" and "more than cache.max_size (1.0 MiB)" in ready["detail"][0]
    assert pc.events("pins_exceeded_budget")


def test_a_pinned_tag_that_moves_is_rewarmed_and_the_old_digest_unpinned(make_pullcache,
                                                                        registry):
    v1, v2 = (build_raw_blob_image(f"pin-move-{i}", int(1.2 * MiB)) for i in (1, 2))
    push(registry, "ops/moving", "stable", v1)
    pc = make_pullcache(UpstreamSpec(registry.host, registry.url, extra={"tag_ttl": "1s"}),
                        max_size="6MiB", high_watermark=0.9, low_watermark=0.6,
                        pin=[f"{registry.host}/ops/moving:stable"])
    wait_until(lambda: _pin(pc)["digest"] == v1.digest, timeout=30, what="v1 pinned")
    push(registry, "ops/moving", "stable", v2)
    wait_until(lambda: _pin(pc)["digest"] == v2.digest and not _pin(pc)["warming"],
               timeout=30, what="v2 pinned")
    assert blob_file(pc, v2.layers[0].digest).exists()
    assert pc.events("pin_moved")[-1]["new"] == v2.digest
    # v1 is no longer held: an eviction storm takes it, and v2 stays.
    for i in range(6):
        image = build_raw_blob_image(f"move-storm-{i}", MiB)
        push(registry, "ops/storm2", f"v{i}", image)
        r = request(pc.url, f"/v2/ops/storm2/blobs/{image.layers[0].digest}")
        assert (r.status, r.sha256) == (200, image.layers[0].digest)   # a storm that ran
    assert not blob_file(pc, v1.layers[0].digest).exists(), "the old digest is still pinned"
    assert blob_file(pc, v2.layers[0].digest).exists()


def _pin(pc) -> dict:
    pins = request(pc.admin_url, "/admin/pins").json()["pins"]
    return pins[0] if pins else {"digest": None, "warming": None}


def test_cache_rm_during_an_in_flight_download_completes_it(counted, registry, fault_proxy):
    image = build_raw_blob_image("rm-inflight", 8 * MiB)
    push(registry, "ops/rm", "v1", image)
    keep = build_image("rm-other")
    push(registry, "ops/keep", "v1", keep)
    for repo in ("ops/rm", "ops/keep"):
        assert request(counted.url, f"/v2/{repo}/manifests/v1").status == 200
    assert request(counted.url, f"/v2/ops/rm/blobs/{image.config.digest}").status == 200
    layer = image.layers[0]
    fault_proxy.set_fault("stall", match=layer.digest, at_byte=2 * MiB, times=1)
    pull = Download(counted.host, f"/v2/ops/rm/blobs/{layer.digest}")
    pull.start()
    try:
        assert fault_proxy.stalled.wait(30) and pull.first_byte.wait(30)
        removed = cli_json(counted, "cache", "rm", f"{fault_proxy.host}/ops/rm:v1")
        assert removed["not_cached"] == [] and removed["removed_files"] == 2  # manifest+config
    finally:
        fault_proxy.release()
        fault_proxy.clear_fault()
    pull.join(30)
    assert pull.status == 200 and pull.digest == layer.digest
    listed = cli_json(counted, "cache", "ls")["images"]
    assert [(r["repository"], r["tag"]) for r in listed] == [("ops/keep", "v1")]
    human = cli(counted, "cache", "ls", "--repo", "ops/*").stdout
    assert "ops/keep" in human and "ops/rm" not in human and "hit ratio" in human


def test_cache_verify_finds_and_repairs_a_corrupted_blob_and_runs_offline(pullcache,
                                                                          registry):
    image = build_image("verify", layer_sizes=(50_000, 70_000))
    push(registry, "ops/verify", "v1", image)
    assert request(pullcache.url, "/v2/ops/verify/manifests/v1").status == 200
    for blob in image.blobs():
        assert request(pullcache.url, f"/v2/ops/verify/blobs/{blob.digest}").status == 200
    pullcache.wait_committed(*(blob.digest for blob in image.blobs()))
    bad = image.layers[1]
    with open(blob_file(pullcache, bad.digest), "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    found = cli(pullcache, "cache", "verify", "--json", check=False)
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert [b["key"] for b in report["bad"]] == [f"blob:{bad.digest}"]
    assert report["files_done"] == report["files_total"] >= len(image.blobs())
    repaired = json.loads(cli(pullcache, "cache", "verify", "--repair", "--json").stdout)
    assert repaired["bad"][0]["removed"] and not blob_file(pullcache, bad.digest).exists()
    assert request(pullcache.url, f"/v2/ops/verify/blobs/{bad.digest}").sha256 == bad.digest

    # Without a daemon: verify, stats and ls work on the directory, holding its lock.
    pullcache.stop()
    offline = json.loads(cli(pullcache, "cache", "verify", "--json").stdout)
    assert offline["bad"] == [] and offline["files_done"] >= len(image.blobs())
    stats = cli_json(pullcache, "cache", "stats")
    assert stats["daemon"] is False and stats["entries"] >= len(image.blobs())
    assert "n/a (no daemon)" in cli(pullcache, "cache", "stats").stdout
    [row] = cli_json(pullcache, "cache", "ls")["images"]
    assert (row["repository"], row["tag"], row["digest"]) == ("ops/verify", "v1", image.digest)
    assert cli_json(pullcache, "cache", "gc")["freed_bytes"] == 0
    rm = cli(pullcache, "cache", "rm", "ops/verify:v1", check=False)
    assert rm.returncode == 1 and "needs the running daemon" in rm.stderr


def test_the_cache_lock_keeps_a_daemon_from_starting_beside_an_offline_command(pullcache):
    pullcache.stop()
    with CacheLock(pullcache.cache_dir, "a test"):
        with pytest.raises(RuntimeError, match="refusing to start: .*in use by a test"):
            pullcache.start(timeout=10)
    pullcache.start()
    locked = cli(pullcache, "cache", "stats", "--json")   # through the daemon: no lock
    assert json.loads(locked.stdout)["daemon"] is True


def test_stats_and_readyz_report_the_daemons_figures(pullcache, registry):
    image = build_image("stats", layer_sizes=(20_000,))
    push(registry, "ops/stats", "v1", image)
    for _ in range(2):
        request(pullcache.url, f"/v2/ops/stats/blobs/{image.layers[0].digest}")
    stats = cli_json(pullcache, "cache", "stats")
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["hit_ratio"] == 0.5
    human = cli(pullcache, "cache", "stats").stdout
    assert "50.0%" in human and "GiB" in human
    ready = request(pullcache.admin_url, "/readyz").json()
    assert ready["status"] == "ok" and ready["detail"] == []
    bad = request(pullcache.admin_url, "/admin/warm", method="POST", body=b"{}",
                  headers={"Content-Type": "application/json", "Content-Length": "2"})
    assert bad.status == 400 and bad.error_codes == ["INVALID_REQUEST"]
    assert request(pullcache.admin_url, "/admin/jobs/nope").status == 404


def test_cache_rm_of_one_tag_keeps_the_content_another_tag_names(counted, registry,
                                                                 fault_proxy):
    """Issue 26 #19: alpine:3.19 and alpine:latest on one digest; rm 3.19 drops its tag
    record only, and latest is still a full cache hit."""
    image = build_image("rm-shared", layer_sizes=(20_000, 30_000))
    for tag in ("3.19", "latest"):
        push(registry, "ops/shared", tag, image)
        assert request(counted.url, f"/v2/ops/shared/manifests/{tag}").status == 200
    for blob in image.blobs():
        assert request(counted.url, f"/v2/ops/shared/blobs/{blob.digest}").status == 200
    counted.wait_committed(*(blob.digest for blob in image.blobs()))
    removed = cli_json(counted, "cache", "rm", f"{fault_proxy.host}/ops/shared:3.19")
    assert removed["tags_removed"] >= 1 and removed["removed_files"] == 0, removed
    assert removed["kept_shared"] == 1 + len(image.blobs())
    rows = [(r["tag"], r["digest"], r["files"]) for r in cli_json(counted, "cache", "ls")["images"]]
    assert rows == [("latest", image.digest, 1 + len(image.blobs()))]
    for blob in image.blobs():
        assert blob_file(counted, blob.digest).exists()
    fault_proxy.reset_counts()
    assert request(counted.url, "/v2/ops/shared/manifests/latest").sha256 == image.digest
    for blob in image.blobs():
        assert request(counted.url, f"/v2/ops/shared/blobs/{blob.digest}").sha256 == blob.digest
    assert fault_proxy.count("GET") == 0, fault_proxy.requests


def test_cache_rm_forgets_the_tag_record_held_in_memory(counted, registry, fault_proxy):
    """Issue 21 #6: a removed tag is asked upstream again (within tag_ttl), so a tag that
    moved meanwhile is answered with its new digest, not memory's old record. The tag's
    manifest stays cached (a cached index names it), so only the record can answer."""
    amd, arm = (build_image(f"rm-hot-{a}", arch=a, layer_sizes=(10_000,))
                for a in ("amd64", "arm64"))
    index = build_index([amd, arm])
    push(registry, "ops/hot", "multi", index)
    push(registry, "ops/hot", "v", amd)
    assert request(counted.url, "/v2/ops/hot/manifests/multi").sha256 == index.digest
    assert request(counted.url, f"/v2/ops/hot/manifests/{amd.digest}").sha256 == amd.digest
    assert request(counted.url, "/v2/ops/hot/manifests/v").sha256 == amd.digest
    push(registry, "ops/hot", "v", arm)     # the tag moves upstream
    assert request(counted.url, "/v2/ops/hot/manifests/v").sha256 == amd.digest  # fresh: a hit
    removed = cli_json(counted, "cache", "rm", "ops/hot:v")
    assert removed["tags_removed"] >= 1 and removed["removed_files"] == 0, removed
    assert request(counted.url, "/v2/ops/hot/manifests/v").sha256 == arm.digest


def test_offline_gc_honours_min_free(pullcache, registry):
    """Issue 26 #20: without a daemon, gc evicted to max_size alone and ignored min_free."""
    image = build_image("gc-min-free", layer_sizes=(40_000, 50_000))
    push(registry, "ops/gcfree", "v1", image)
    for blob in image.blobs():
        assert request(pullcache.url, f"/v2/ops/gcfree/blobs/{blob.digest}").status == 200
    pullcache.wait_committed(*(blob.digest for blob in image.blobs()))
    pullcache.stop()
    pullcache.cache["min_free"] = "1000TiB"   # more than any disk: the budget is 0
    pullcache.write_config()
    gc = cli_json(pullcache, "cache", "gc")
    assert gc["max_size"] == 0 and gc["entries"] == 0
    assert gc["freed_bytes"] == sum(b.size for b in image.blobs())
    assert not any(blob_file(pullcache, b.digest).exists() for b in image.blobs())


def test_warm_all_platforms_warms_what_exists_and_reports_a_missing_child(counted, registry,
                                                                          fault_proxy):
    """Issue 26 #13: one child manifest the upstream does not have (404) failed the whole
    image and warmed no layer."""
    amd, arm = (build_image(f"warm-gap-{a}", arch=a, layer_sizes=(20_000,))
                for a in ("amd64", "arm64"))
    index = build_index([amd, arm])
    push(registry, "ops/gap", "v1", index)
    fault_proxy.set_fault("status", match=f"/manifests/{amd.digest}", status=404)
    proc = cli(counted, "warm", "ops/gap:v1", "--all-platforms", "--json", check=False)
    assert proc.returncode == 0, proc.stderr
    [image] = json.loads(proc.stdout)["images"]
    assert image["state"] == "done" and image["platforms"] == ["linux/arm64"]
    assert [(m["platform"], m["digest"]) for m in image["missing"]] == [
        ("linux/amd64", amd.digest)]
    assert "MANIFEST_UNKNOWN" in image["missing"][0]["error"]
    assert f"warm ops/gap:v1: linux/amd64 ({amd.digest}) is missing upstream" in proc.stderr
    assert image["layers_done"] == len(arm.blobs())
    assert all(blob_file(counted, b.digest).exists() for b in arm.blobs())
    human = cli(counted, "warm", "ops/gap:v1", "--all-platforms", check=False)
    assert human.returncode == 0 and "1 platform missing" in human.stdout, human.stdout

    # None of the index's manifests there at all: the image fails, as before.
    push(registry, "ops/gone", "v1", build_index([build_image("warm-gone", arch="s390x")]))
    fault_proxy.set_fault("status", match="/ops/gone/manifests/sha256:", status=404)
    gone = cli(counted, "warm", "ops/gone:v1", "--all-platforms", "--json", check=False)
    assert gone.returncode == 1 and json.loads(gone.stdout)["images"][0]["state"] == "failed"


def test_warm_jobs_beyond_the_cap_get_429_with_an_oci_error(counted, registry, fault_proxy):
    """Issue 26 #14: warm jobs were not capped; now MAX_WARM_JOBS run and one more is
    refused with 429 TOOMANYREQUESTS (in the OCI envelope) until one ends."""
    image = build_image("warm-cap", layer_sizes=(10_000,))
    push(registry, "ops/cap", "v1", image)
    admin = AdminClient(counted.admin_url)
    fault_proxy.set_fault("stall", match="/ops/cap/manifests/")
    try:
        jobs = [admin.post("/admin/warm", {"images": ["ops/cap:v1"]})
                for _ in range(MAX_WARM_JOBS)]
        assert fault_proxy.stalled.wait(30)
        over = urllib.request.Request(counted.admin_url + "/admin/warm", method="POST",
                                      data=b'{"images": ["ops/cap:v1"]}',
                                      headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(over, timeout=30)
        assert refused.value.code == 429
        [error] = json.loads(refused.value.read())["errors"]
        assert error["code"] == "TOOMANYREQUESTS" and "warm jobs are running" in error["message"]
    finally:
        fault_proxy.clear_fault()
    for job in jobs:
        assert admin.follow(job, lambda j: None)["state"] == "done"
    assert admin.post("/admin/warm", {"images": ["ops/cap:v1"]})["state"] == "running"


def keys(value):
    """The key structure of a JSON document: what must not depend on the daemon running."""
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys(value[0])] if value else []
    return None


def test_json_output_has_one_schema_whether_the_daemon_runs_or_not(pullcache, registry):
    """Issue 26 #16: stats and the ls totals had only some keys offline; tier status had
    ``enabled`` only online, ``in_flight`` only online, ``repositories`` in two shapes."""
    image = build_image("schema", layer_sizes=(10_000,))
    push(registry, "ops/schema", "v1", image)
    assert request(pullcache.url, "/v2/ops/schema/manifests/v1").status == 200
    for blob in image.blobs():
        assert request(pullcache.url, f"/v2/ops/schema/blobs/{blob.digest}").status == 200
    pullcache.wait_committed(*(blob.digest for blob in image.blobs()))

    def outputs() -> dict:
        out = {what: cli_json(pullcache, "cache", what) for what in ("stats", "ls", "pins",
                                                                     "verify", "gc")}
        out["tier"] = json.loads(cli(pullcache, "tier", "status").stdout)
        return out
    online = outputs()
    pullcache.stop()
    offline = outputs()
    assert online["stats"]["daemon"] is True and offline["stats"]["daemon"] is False
    assert (online["tier"]["source"], offline["tier"]["source"]) == ("daemon", "offline")
    for what in online:
        assert keys(online[what]) == keys(offline[what]), what
    for key in ("dir", "bytes", "entries", "pinned_bytes"):
        assert online["stats"][key] == offline["stats"][key] == offline["ls"]["totals"][key]
    assert offline["stats"]["hits"] is None and online["stats"]["hits"] == 0
    assert online["ls"]["images"] == offline["ls"]["images"]
    assert {k: v for k, v in online["tier"].items() if k != "source"} == {
        k: v for k, v in offline["tier"].items() if k != "source"} == {
        "enabled": False, "pending": 0, "in_flight": 0, "failed": 0, "queue": {},
        "repositories": {}, "repositories_error": None}


BROKEN_INDEX = """
import sqlite3
from pullcache.ops.verify import Verifier


def _broken(self):
    raise sqlite3.DatabaseError("injected: database disk image is malformed")


Verifier._inventory = _broken
"""


def test_cache_verify_through_the_daemon_exits_1_when_the_job_itself_failed(tmp_path,
                                                                          registry):
    """Issue 26 #15: the daemon's verify job failed (its index unreadable, injected in the
    daemon only), and ``cache verify`` printed no error and exited 0."""
    fault = tmp_path / "fault"
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(BROKEN_INDEX)
    pc = Pullcache(tmp_path / "pc", [UpstreamSpec(registry.host, registry.url, default=True)])
    pc.env = {"PYTHONPATH": f"{fault}:{ROOT}"}
    pc.workdir.mkdir()
    pc.start()
    try:
        proc = cli(pc, "cache", "verify", check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert ("cache verify did not finish (failed): injected: database disk image is "
                "malformed") in proc.stderr
        job = json.loads(cli(pc, "cache", "verify", "--json", check=False).stdout)
        assert job["state"] == "failed" and "malformed" in job["error"]
    finally:
        pc.stop()
