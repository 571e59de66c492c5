"""Pure parts of the operator's tools: image references, platforms, manifest references,
the pin set (and the evictor keeping it), human sizes and ages, the cache-dir lock."""

from __future__ import annotations

import asyncio
import json

import pytest

from pullcache.cache.lock import CacheLock, CacheLocked
from pullcache.cache.pins import Pin, PinSet
from pullcache.cache.store import BlobStore, Budget
from pullcache.errors import DigestInvalid, NameInvalid, NameUnknown, TooManyRequests
from pullcache.oci import Digest
from pullcache.ops.graph import references
from pullcache.ops.jobs import Jobs
from pullcache.ops.pinning import Pinning
from pullcache.ops.refs import Platform, parse_image
from pullcache.ops.warm import MAX_WARM_JOBS, Warmer, start_warm
from pullcache.gate.routing import UpstreamTable
from pullcache.units import human_age, human_size
from tests.support.ports import eventually

TABLE = UpstreamTable([("docker.io", ["index.docker.io"]), ("ghcr.io", []),
                       ("127.0.0.1:5000", [])], "docker.io")
D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, upstream, repo, reference", [
    ("python:3.12-slim", "docker.io", "library/python", "3.12-slim"),
    ("python", "docker.io", "library/python", "latest"),
    ("docker.io/library/python:3.12-slim", "docker.io", "library/python", "3.12-slim"),
    ("index.docker.io/grafana/grafana:11", "docker.io", "grafana/grafana", "11"),
    (f"ghcr.io/org/app@{D}", "ghcr.io", "org/app", D),
    ("127.0.0.1:5000/team/app", "127.0.0.1:5000", "team/app", "latest"),
    ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1"),
    # Renovate's pin form: the digest is the reference, the tag is checked and dropped.
    (f"python:3.12-slim@{D}", "docker.io", "library/python", D),
    (f"127.0.0.1:5000/team/app:v1@{D}", "127.0.0.1:5000", "team/app", D),
    ("alpine:3.19_rc.1-x", "docker.io", "library/alpine", "3.19_rc.1-x"),
])
def test_image_references_as_people_type_them(text, upstream, repo, reference):
    ref = parse_image(TABLE, text)
    assert (ref.route.upstream, ref.route.repo, ref.reference) == (upstream, repo, reference)


@pytest.mark.parametrize("text, error", [
    ("quay.io/org/app:1", NameUnknown),            # no such upstream configured
    ("Bad Name", NameInvalid),
    ("alpine:tag!!", NameInvalid),                 # the pull path's tag grammar
    ("alpine:" + "t" * 129, NameInvalid),          # tags are at most 128 characters
    ("alpine:.hidden", NameInvalid),
    ("alpine:", NameInvalid),
    ("Alpine:3", NameInvalid),                     # names are lower case
    (f"@{D}", NameInvalid),                        # a digest without a name
    (":3.19", NameInvalid),
    ("alpine@sha256:abc", DigestInvalid),          # not 64 hex digits
    ("alpine@md5:" + "a" * 32, DigestInvalid),     # an algorithm the cache cannot verify
    (f"alpine:bad!tag@{D}", NameInvalid),          # the tag of tag@digest is checked too
    ("alpine@", DigestInvalid),
])
def test_image_references_refused(text, error):
    with pytest.raises(error):
        parse_image(TABLE, text)


def test_platforms_match_index_entries():
    assert Platform.parse("linux/arm64").matches({"os": "linux", "architecture": "arm64",
                                                  "variant": "v8"})
    assert not Platform.parse("linux/arm/v7").matches({"os": "linux", "architecture": "arm",
                                                       "variant": "v6"})
    assert not Platform.parse("linux/amd64").matches({"os": "unknown",
                                                      "architecture": "unknown"})
    assert str(Platform.parse("linux/arm/v7")) == "linux/arm/v7"
    with pytest.raises(NameInvalid):
        Platform.parse("linux")


def test_references_of_an_index_a_manifest_and_garbage():
    index = json.dumps({"manifests": [{"digest": D, "platform": {"os": "linux"}}]}).encode()
    assert references(index).children == ((D, {"os": "linux"}),)
    manifest = json.dumps({"config": {"digest": D, "size": 5},
                           "layers": [{"digest": D, "size": 5}, {"digest": "x", "size": 7}]})
    assert references(manifest.encode()).blobs == ((D, 5), ("x", 7))
    assert references(b"not json").blobs == ()


async def test_the_evictor_keeps_pinned_keys_and_the_pin_set_persists(tmp_path):
    store = BlobStore(tmp_path, Budget(100_000, 0.9, 0.5))
    await store.open()
    digests = []
    for n in range(4):
        data = bytes([n]) * 30_000
        digests.append(Digest.of(data))
        await store.put_bytes("blob", digests[-1], data)
    pins = PinSet(tmp_path)
    pins.put(Pin("base:1", "sha256:x", {f"blob:{digests[0]}": 30_000}))
    store.index.keeps = pins.keeps
    await store.make_room(incoming=30_000)
    assert f"blob:{digests[0]}" in store.index         # the oldest, but pinned
    assert f"blob:{digests[1]}" not in store.index     # the oldest unpinned went
    pins.save()
    again = PinSet(tmp_path).load()
    assert again.keeps(f"blob:{digests[0]}") and again.pinned_bytes() == 30_000
    again.retain(set())
    assert not again.keeps(f"blob:{digests[0]}")
    await store.close()


def test_shared_keys_count_once_in_pinned_bytes(tmp_path):
    pins = PinSet(tmp_path)
    pins.put(Pin("a", sizes={"blob:1": 10, "blob:2": 5}))
    pins.put(Pin("b", sizes={"blob:1": 10, "blob:3": 1}, pending=("blob:4",)))
    assert pins.pinned_bytes() == 16 and pins.keeps("blob:4")


def test_the_cache_lock_is_exclusive_and_names_its_holder(tmp_path):
    with CacheLock(tmp_path, "pullcache serve"):
        with pytest.raises(CacheLocked, match=r"in use by pullcache serve \(pid \d+\)"):
            CacheLock(tmp_path, "pullcache cache gc").acquire()
    CacheLock(tmp_path, "again").acquire().release()


def test_human_sizes_and_ages():
    assert [human_size(n) for n in (12, 1536, 5 * 2**20, 150 * 2**30)] == [
        "12 B", "1.5 KiB", "5.0 MiB", "150 GiB"]
    assert [human_age(s) for s in (None, 5, 300, 7200, 3 * 86400)] == [
        "-", "5s", "5m", "2h", "3d"]


def test_the_status_page_and_the_dashboard_count_the_same_hits() -> None:
    """The status page's hit ratio (ops.samples) and the shipped dashboard's and alert's
    queries name the same outcomes as hits, and leave out the same ones."""
    import json
    import re
    from pathlib import Path

    from pullcache.metrics import Metrics
    from pullcache.ops import samples

    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "deploy/grafana/pullcache.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs.append((root / "deploy/prometheus/alerts.yml").read_text())
    ratios = [e for e in exprs if 'outcome=~"' in e and "pullcache_requests_total" in e]
    assert ratios, "no hit-ratio query found in the dashboard and alerts"
    for expr in ratios:
        for listed in re.findall(r'outcome=~"([^"]+)"', expr):
            if "hit" in listed.split("|"):
                assert set(listed.split("|")) == set(samples.HITS), listed
    metrics = Metrics()
    for outcome, n in (("hit", 3), ("swr", 1), ("miss", 2), ("denied", 5)):
        for _ in range(n):
            metrics.requests.inc("blob", outcome)
    assert samples.request_counts(metrics) == (4, 2)


async def test_a_pin_over_the_budget_is_reported_from_its_plan_on(tmp_path):
    """Issue 26 #13: ``_check_budget(extra=…)`` ignored the planned keys, so a pin bigger
    than the budget went unreported while it warmed."""
    seen = []

    class Planner:   # a warm that plans 2 KiB of keys, then fails (the cache is too small)
        async def warm(self, ref, progress, *, platforms, all_platforms, on_plan):
            on_plan({"manifest:m": 48, "blob:a": 1024, "blob:b": 1000})
            seen.append(pinning.over_budget)
            raise NameUnknown(ref)

    pins = PinSet(tmp_path)
    pins.put(Pin("other:1", "sha256:o", {"blob:a": 1024}))   # shared keys count once
    gauge = []
    pinning = Pinning(pins, Planner(), ("big:1",), platforms=None, all_platforms=False,
                      interval=60, max_size=1500, on_bytes=gauge.append)
    await pinning.refresh("big:1")
    assert seen == ["pinned images need 2.0 KiB, more than cache.max_size (1.5 KiB)"]
    assert gauge[0] == 2072
    assert pinning.over_budget is None and gauge[-1] == 1024   # the failed plan is let go


async def test_a_warm_job_owns_its_image_tasks_whatever_they_raise(tmp_path):
    """Issue 26 #14: an image whose warm raised something other than a domain error failed
    the job at once and left the other images running, owned by no job: ``Jobs.close``
    never cancelled them."""
    hanging, cancelled = asyncio.Event(), []

    class Proxy:   # the upstream side of a warm: one image hits a defect, one never answers
        async def manifest(self, route, reference, accept):
            if route.repo == "team/crash":
                raise RuntimeError("a defect, not a domain error")
            hanging.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(route.repo)
                raise

    jobs = Jobs()
    warmer = Warmer(Proxy(), TABLE, None, host_platform=Platform("linux", "amd64"))
    job = start_warm(jobs, warmer, ["127.0.0.1:5000/team/crash", "127.0.0.1:5000/team/hang"],
                     platforms=None, all_platforms=False)
    await eventually(lambda: hanging.is_set() and job.snapshot()["images"][0]["state"]
                     == "failed", what="one image failed, the other in flight")
    crash, hang = job.snapshot()["images"]
    assert crash["error"] == "a defect, not a domain error" and hang["state"] == "resolving"
    assert job.state == "running"     # the job waits for every image it started
    await jobs.close()
    assert cancelled == ["team/hang"] and job.state == "cancelled"
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("warm ")]


async def test_warm_jobs_beyond_the_cap_are_refused():
    class Proxy:
        async def manifest(self, route, reference, accept):
            await asyncio.Event().wait()
    jobs = Jobs()
    warmer = Warmer(Proxy(), TABLE, None, host_platform=Platform("linux", "amd64"))
    for _ in range(MAX_WARM_JOBS):
        start_warm(jobs, warmer, ["python"], platforms=None, all_platforms=False)
    with pytest.raises(TooManyRequests, match="4 warm jobs are running already"):
        start_warm(jobs, warmer, ["python"], platforms=None, all_platforms=False)
    await jobs.close()
    start_warm(jobs, warmer, ["python"], platforms=None, all_platforms=False)  # room again
    await jobs.close()
