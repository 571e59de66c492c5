"""Host faults under the cache: a full disk, a budget larger than the disk, the cache
directory removed under the running daemon, a read-only filesystem. Pulls succeed
byte-exact through all of them (pass-through), and never answer 500.

Disk-full, read-only and the budget larger than the disk mount a small tmpfs: they need
root, and skip without it (CI runs ``make test`` as root, so there they always run).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.http import request
from tests.support.images import build_image, build_raw_blob_image, push
from tests.support.ports import wait_until

MiB = 1 << 20
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="mounting a tmpfs needs root (CI runs make test as root)")


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def started(workdir: Path, registry, **cache) -> Pullcache:
    pc = Pullcache(workdir, [UpstreamSpec(registry.host, registry.url, default=True)], cache)
    return pc.start()


def remove_tree(path: Path, timeout: float = 10.0) -> None:
    """``rm -rf`` under a running daemon: it may write a file (its index's journal, a
    recency flush) between rmtree's listing and its rmdir, so go again until it is gone."""
    deadline = time.monotonic() + timeout
    while path.exists():
        shutil.rmtree(path, ignore_errors=True)
        assert time.monotonic() < deadline, f"{path} keeps coming back"


def stream_sha256(pc: Pullcache, path: str) -> tuple[int, int, str]:
    """(status, bytes, sha256) of a GET, hashed as it streams (a 150 MB body stays small)."""
    conn = http.client.HTTPConnection("127.0.0.1", pc.port, timeout=120)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        hasher, got = hashlib.sha256(), 0
        while chunk := resp.read(1 << 20):
            hasher.update(chunk)
            got += len(chunk)
        assert resp.getheader("Content-Length") in (None, str(got)), "transfer cut short"
        return resp.status, got, "sha256:" + hasher.hexdigest()
    finally:
        conn.close()


def readyz(pc: Pullcache) -> dict:
    try:
        with urllib.request.urlopen(pc.admin_url + "/readyz", timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def no_500(pc: Pullcache) -> None:
    assert not [r for r in pc.events("request") if r.get("status") == 500]
    assert not pc.events("request_failed") and not pc.events("fill_crashed")


@pytest.fixture(scope="module")
def big(registry):
    image = build_raw_blob_image("disk-big", 150 * MiB)
    push(registry, "disk/big", "v1", image)
    return image


@needs_root
def test_disk_full_mid_fill_passes_through_byte_exact(registry, big, tmp_path):
    """A 150 MB blob through a cache whose disk something else fills after start-up (the
    budget, read at start, still had room): ENOSPC mid-fill turns the fill into a
    pass-through; the pull succeeds byte-exact through a cache that cannot hold it."""
    with tmpfs(tmp_path / "cache", "200m") as mount:
        pc = started(tmp_path, registry, max_size="8GiB", min_free="0")
        try:
            # Another tenant of the filesystem leaves ~80 MB: less than the blob.
            (mount / "other-tenant").write_bytes(b"\0" * (120 * MiB))
            layer = big.layers[0]
            status, size, digest = stream_sha256(pc, f"/v2/disk/big/blobs/{layer.digest}")
            assert (status, size, digest) == (200, layer.size, layer.digest)
            [event] = pc.events("fill_passthrough")
            assert "No space left" in event["error"]
            assert pc.metric("pullcache_fill_passthroughs_total") == 1
            assert not list((pc.cache_dir / "tmp").iterdir()), "temp file left behind"
            assert not list((pc.cache_dir / "blobs").rglob(layer.digest.split(":")[1]))
            ready = readyz(pc)
            assert ready["status"] == "degraded" and ready["degraded"] == "disk", ready
            # A blob that fits commits, and the cache is healthy again.
            small = build_image("disk-small")
            push(registry, "disk/small", "v1", small)
            for blob in small.blobs():
                r = request(pc.url, f"/v2/disk/small/blobs/{blob.digest}")
                assert r.status == 200 and r.sha256 == blob.digest
            assert readyz(pc)["status"] == "ok"
            no_500(pc)
        finally:
            pc.stop()


@needs_root
def test_budget_knows_the_disk(registry, big, tmp_path):
    """max_size 8 GiB on a 100 MB disk: the budget is what the disk holds less min_free, and
    a blob larger than that passes through from the start (no temp file, no ENOSPC)."""
    with tmpfs(tmp_path / "cache", "100m"):
        pc = started(tmp_path, registry, max_size="8GiB", min_free="10MiB")
        try:
            # 100 MB less min_free; not 0 (the gauge is on /metrics, and not empty).
            budget = pc.metric("pullcache_cache_budget_bytes", required=True)
            assert 50 * MiB < budget <= 90 * MiB, budget
            layer = big.layers[0]
            status, size, digest = stream_sha256(pc, f"/v2/disk/big/blobs/{layer.digest}")
            assert (status, size, digest) == (200, layer.size, layer.digest)
            [event] = pc.events("fill_passthrough")
            assert "cannot fit" in event["reason"] and event["error"] is None
            assert readyz(pc)["status"] == "ok"   # the disk refused nothing
            r = request(pc.url, f"/v2/disk/big/blobs/{big.config.digest}")
            assert r.status == 200 and r.sha256 == big.config.digest
            pc.wait_committed(big.config.digest)   # the client has the last byte first
            assert list((pc.cache_dir / "blobs").rglob(big.config.digest.split(":")[1]))
            no_500(pc)
        finally:
            pc.stop()


def test_cache_dir_removed_under_the_daemon(make_pullcache, registry):
    image = build_image("disk-rmrf", layer_sizes=(300_000, 2000))
    push(registry, "disk/rmrf", "v1", image)
    pc = make_pullcache(UpstreamSpec(registry.host, registry.url))

    def pull_all() -> None:
        r = request(pc.url, "/v2/disk/rmrf/manifests/v1")
        assert r.status == 200 and r.body == image.manifest, (r.status, r.body[:200])
        r = request(pc.url, f"/v2/disk/rmrf/manifests/{image.digest}")
        assert r.status == 200 and r.body == image.manifest, (r.status, r.body[:200])
        for blob in image.blobs():
            b = request(pc.url, f"/v2/disk/rmrf/blobs/{blob.digest}")
            assert b.status == 200 and b.sha256 == blob.digest, (b.status, b.body[:200])
    pull_all()
    remove_tree(pc.cache_dir)
    assert pc.metric("pullcache_cache_budget_bytes") > 0   # the admin side answers too
    pull_all()              # served throughout: refetched, passed through
    # The repair runs after the passed-through fill has verified, behind the response (and a
    # pull right after may join that same fill): wait for it, then pull again to cache.
    wait_until(lambda: pc.events("cache_root_recreated"), 30, "cache_root_recreated")
    pull_all()
    layer = image.layers[0].digest.split(":")[1]
    wait_until(lambda: list((pc.cache_dir / "blobs").rglob(layer)), 30, "the layer cached again")
    assert (pc.cache_dir / "index").is_dir()
    assert readyz(pc)["status"] == "ok"
    no_500(pc)


@needs_root
def test_read_only_filesystem_passes_through(registry, tmp_path):
    cached, fresh = build_image("disk-ro-a"), build_image("disk-ro-b", layer_sizes=(2 * MiB,))
    push(registry, "disk/ro", "a", cached)
    push(registry, "disk/ro", "b", fresh)
    with tmpfs(tmp_path / "cache", "50m") as mount:
        pc = started(tmp_path, registry, min_free="0")
        try:
            assert request(pc.url, "/v2/disk/ro/manifests/a").status == 200
            # Read-only from now on: a read-only bind mount over the cache dir (a tmpfs
            # with files open for writing cannot be remounted ro; the daemon's new opens
            # resolve to the bind mount, so every new write meets EROFS).
            subprocess.run(["mount", "--bind", str(mount), str(mount)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
            # Cached content still serves; new content passes through, verified.
            for image, tag in ((cached, "a"), (fresh, "b")):
                r = request(pc.url, f"/v2/disk/ro/manifests/{tag}")
                assert r.status == 200 and r.body == image.manifest
                for blob in image.blobs():
                    b = request(pc.url, f"/v2/disk/ro/blobs/{blob.digest}")
                    assert b.status == 200 and b.sha256 == blob.digest
            assert pc.events("cache_readonly")
            ready = readyz(pc)
            assert ready["status"] == "degraded" and "read-only" in ready["mode"], ready
            assert pc.metric("pullcache_cache_disk_degraded") == 1   # the alert's input
            no_500(pc)
            # Started on the read-only filesystem: it still starts, in pass-through mode.
            pc.restart()
            assert pc.events("cache_passthrough_mode")
            for blob in fresh.blobs():
                b = request(pc.url, f"/v2/disk/ro/blobs/{blob.digest}")
                assert b.status == 200 and b.sha256 == blob.digest
            assert readyz(pc)["status"] == "degraded"
            no_500(pc)
        finally:
            pc.stop()
            subprocess.run(["umount", "-l", str(mount)], check=False)   # the bind mount
