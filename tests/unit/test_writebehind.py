"""The write-behind against an in-memory registry: one upload per (repository, digest), the
durable journal resumed after a stop, manifests ECR refuses kept as artifacts, status."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from pullcache import errors
from pullcache.backing.content import artifact_tag, stored_media_type
from pullcache.backing.journal import Job, Journal
from pullcache.backing.repositories import RepositorySettings
from pullcache.backing.tier import EcrTier
from pullcache.backing.writebehind import WriteBehind
from pullcache.metrics import Metrics
from pullcache.oci import OCI_INDEX, OCI_MANIFEST, Digest
from pullcache.upstream.breaker import Breaker
from tests.support.ports import eventually


class MemoryRegistry:
    """The registry API the write-behind uses, in memory; ``gate`` holds every blob PUT."""

    def __init__(self, *, validate: bool = True) -> None:
        self.breaker = Breaker(5, 15.0, name="memory")
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.completed: Counter = Counter()
        self.gate: asyncio.Event | None = None
        self.validate = validate   # refuse a manifest whose blobs are absent, as ECR does

    async def exists(self, repo, kind, ref) -> bool:
        return (repo, str(ref)) in (self.blobs if kind == "blobs" else self.manifests)

    async def push_blob(self, repo, digest, chunks) -> None:
        data = b"".join([c async for c in chunks])
        if self.gate is not None:
            await self.gate.wait()
        self.completed[(repo, str(digest))] += 1
        self.blobs[(repo, str(digest))] = data

    async def push_manifest(self, repo, reference, body, media_type) -> None:
        doc = json.loads(body)
        refs = [d["digest"] for d in [doc.get("config", {}), *doc.get("layers", [])]
                if d.get("digest")]
        if self.validate and any((repo, r) not in self.blobs for r in refs):
            refused = errors.UpstreamError("MANIFEST_BLOB_UNKNOWN: blob unknown to registry")
            refused.remote_code = "MANIFEST_BLOB_UNKNOWN"   # as failures.error_for sets it
            raise refused
        self.manifests[(repo, reference)] = body
        self.manifests[(repo, str(Digest.of(body)))] = body


class Api:
    async def create_repository(self, name, settings) -> bool:
        return True


class Local:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests: dict[str, tuple[bytes, str]] = {}

    def add_blob(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        (self.root / digest.hex).write_bytes(data)
        return digest

    def add_manifest(self, doc: dict, media_type: str = OCI_MANIFEST) -> tuple[Digest, bytes]:
        body = json.dumps(doc).encode()
        self.manifests[str(Digest.of(body))] = (body, media_type)
        return Digest.of(body), body

    async def blob_path(self, digest):
        path = self.root / digest.hex
        return path if path.exists() else None

    async def manifest(self, digest):
        return self.manifests.get(str(digest))

    async def origin_manifest(self, upstream, repo, digest):
        return None

    async def tag_digests(self, upstream, repo, tag):
        return set()


def image(local: Local, *payloads: bytes) -> tuple[Digest, bytes, list[Digest]]:
    blobs = [local.add_blob(p) for p in payloads]
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"digest": str(blobs[0]), "size": 1, "mediaType": "x"},
           "layers": [{"digest": str(b), "size": 1, "mediaType": "y"} for b in blobs[1:]]}
    digest, body = local.add_manifest(doc)
    return digest, body, blobs


def writer(registry, local, journal=None, metrics=None, **kw) -> WriteBehind:
    tier = EcrTier(Api(), registry, "pc", RepositorySettings(), metrics=metrics)
    return WriteBehind(tier, local, journal, metrics=metrics, drain_timeout=kw.pop("drain", 5),
                       sleep=lambda _: asyncio.sleep(0), **kw)


REPO = "pc/up/team/app"


async def test_one_upload_per_repository_and_digest(tmp_path):
    registry, local, metrics = MemoryRegistry(), Local(tmp_path), Metrics()
    registry.gate = asyncio.Event()
    digest, _, blobs = image(local, b"config", b"layer" * 1000)
    writes = await writer(registry, local, metrics=metrics, concurrency=4).open()
    # The blob jobs and the manifest job (which pushes what it references) race.
    for blob in blobs:
        writes.blob("up", "team/app", blob)
    writes.manifest("up", "team/app", digest, "v1")
    await eventually(lambda: writes.status()["in_flight"] >= min(4, len(blobs) + 1),
                     what="every worker holding a job")
    registry.gate.set()
    await writes.idle()
    await writes.close()
    assert set(registry.completed.values()) == {1}
    assert (REPO, "v1") in registry.manifests
    uploads = metrics.tier_uploads.labels("blob", "completed")._value.get()
    assert uploads == sum(registry.completed.values()) == 2


async def test_the_journal_resumes_what_a_stop_left(tmp_path):
    local = Local(tmp_path)
    digest, _, blobs = image(local, b"c", b"l")
    stuck = MemoryRegistry()
    stuck.gate = asyncio.Event()    # never set: ECR takes no upload
    journal = Journal(tmp_path / "q")
    writes = await writer(stuck, local, journal, drain=0.05).open()
    writes.blob("up", "team/app", blobs[1])
    writes.manifest("up", "team/app", digest, "v1")
    # admitted (on disk), then taken by a worker
    await eventually(lambda: writes.status()["in_flight"] >= 1, what="a job in flight")
    await writes.close()                       # drain times out: the jobs stay on disk
    assert len(Journal(tmp_path / "q").open().pending()) == 2

    registry = MemoryRegistry()
    again = await writer(registry, local, Journal(tmp_path / "q")).open()
    await again.idle()
    await again.close()
    assert (REPO, "v1") in registry.manifests and (REPO, str(blobs[1])) in registry.blobs
    assert Journal(tmp_path / "q").open().pending() == []


async def test_a_refused_manifest_is_kept_as_an_artifact(tmp_path):
    registry, local = MemoryRegistry(), Local(tmp_path)
    digest, body, blobs = image(local, b"cfg", b"layer")
    (tmp_path / blobs[1].hex).unlink()         # this node never had the layer
    writes = await writer(registry, local, retries=0).open()
    writes.manifest("up", "team/app", digest, "v1")
    await writes.idle()
    await writes.close()
    assert registry.blobs[("pc/manifests", str(digest))] == body
    assert ("pc/manifests", artifact_tag(digest)) in registry.manifests
    assert (REPO, "v1") not in registry.manifests    # no tag for what is not an image


async def test_an_index_goes_up_with_every_child(tmp_path):
    registry, local = MemoryRegistry(), Local(tmp_path)
    pulled, _, _ = image(local, b"cfg-amd64", b"layer-amd64")
    other = {"schemaVersion": 2, "config": {"digest": str(Digest.of(b"x")), "size": 1},
             "layers": []}
    other_body = json.dumps(other).encode()
    fetched: list[str] = []

    async def origin_manifest(upstream, repo, digest):
        fetched.append(str(digest))
        return other_body, OCI_MANIFEST
    local.origin_manifest = origin_manifest
    index, index_body = local.add_manifest({"schemaVersion": 2, "manifests": [
        {"digest": str(pulled), "size": 1}, {"digest": str(Digest.of(other_body)), "size": 1}]},
        OCI_INDEX)
    writes = await writer(registry, local, retries=0).open()
    writes.manifest("up", "team/app", index, "v1")
    await writes.idle()
    await writes.close()
    assert fetched == [str(Digest.of(other_body))]              # a manifest, fetched once
    assert (REPO, str(pulled)) in registry.manifests            # the pulled one, as an image
    for body in (other_body, index_body):                       # the others, as artifacts
        assert registry.blobs[("pc/manifests", str(Digest.of(body)))] == body


async def test_failures_are_kept_with_their_error(tmp_path):
    class Broken(MemoryRegistry):
        async def push_blob(self, repo, digest, chunks):
            raise errors.Denied("push denied")
    local = Local(tmp_path)
    blob = local.add_blob(b"data")
    journal = Journal(tmp_path / "q")
    writes = await writer(Broken(), local, journal).open()
    writes.blob("up", "team/app", blob)
    await writes.idle()
    [failed] = writes.status()["queue"][REPO]["failed"]
    assert "push denied" in failed["error"] and failed["kind"] == "blob"
    await writes.close()
    assert "push denied" in Journal(tmp_path / "q").open().failed()[0]["error"]


def test_journal_keys_and_bounds(tmp_path):
    journal = Journal(tmp_path / "q").open()
    job = Job("manifest", "docker.io", "library/alpine", "sha256:" + "a" * 64, "3.20")
    journal.add(job)
    journal.add(job)
    assert journal.pending() == [job]
    journal.ack(job)
    assert journal.pending() == []
    journal.close()


@pytest.mark.parametrize("doc, expected", [
    ({"mediaType": "application/vnd.docker.distribution.manifest.list.v2+json"},
     "application/vnd.docker.distribution.manifest.list.v2+json"),
    ({"schemaVersion": 2, "manifests": []}, OCI_INDEX),
    ({"schemaVersion": 2, "config": {}, "layers": []}, OCI_MANIFEST),
])
def test_stored_media_type(doc, expected):
    assert stored_media_type(json.dumps(doc).encode()) == expected


async def test_a_denied_push_is_logged_once_per_repository(tmp_path, capsys):
    class Refusing(MemoryRegistry):
        async def push_blob(self, repo, digest, chunks):
            raise errors.Denied("not authorized to perform: ecr:InitiateLayerUpload")
    local = Local(tmp_path)
    writes = await writer(Refusing(), local).open()
    for payload in (b"one", b"two", b"three"):
        writes.blob("up", "team/app", local.add_blob(payload))
    await writes.idle()
    await writes.close()
    assert writes.status()["failed"] == 3
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("tier_write_denied") == 1


async def test_a_blob_evicted_between_lookup_and_read_is_skipped_not_pushed(tmp_path):
    """The write-behind found the file, then eviction removed it before the upload read it:
    the job ends "skipped" (a later origin fill queues it again), nothing half-pushed."""
    registry, metrics = MemoryRegistry(), Metrics()

    class Evicting(Local):
        async def blob_path(self, digest):
            path = await super().blob_path(digest)
            if path is not None:
                path.unlink()          # eviction wins the race right after the lookup
            return path
    local = Evicting(tmp_path)
    blob = local.add_blob(b"layer" * 1000)
    writes = await writer(registry, local, metrics=metrics).open()
    writes.blob("up", "team/app", blob)
    await asyncio.wait_for(writes.idle(), 10)
    await writes.close()
    assert registry.blobs == {} and registry.completed == Counter()
    assert metrics.tier_writes.labels("blob", "skipped")._value.get() == 1
    assert metrics.tier_uploads.labels("blob", "completed")._value.get() == 0
    assert writes.status()["failed"] == 0


class FlakyJournal(Journal):
    """A journal on a full disk: each operation named in ``failing`` raises, until cleared."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.failing: set[str] = set()

    def _maybe(self, op: str) -> None:
        if op in self.failing:
            raise OSError(28, "No space left on device")

    def add(self, job):
        self._maybe("add")
        super().add(job)

    def ack(self, job):
        self._maybe("ack")
        super().ack(job)

    def fail(self, job, error):
        self._maybe("fail")
        super().fail(job, error)


async def test_journal_failures_are_counted_retried_and_leave_the_workers_alive(tmp_path):
    """A full disk under the journal: the jobs run all the same, every worker survives, the
    failures are counted, and the next resync writes what the journal missed."""
    registry, local, metrics = MemoryRegistry(), Local(tmp_path), Metrics()
    journal = FlakyJournal(tmp_path / "q")
    journal.failing = {"add", "ack", "fail"}
    writes = await writer(registry, local, journal, metrics=metrics, concurrency=2).open()
    blobs = [local.add_blob(b"blob %d" % i) for i in range(4)]
    for blob in blobs:
        writes.blob("up", "team/app", blob)
    await asyncio.wait_for(writes.idle(), 5)      # no job stuck "admitting"
    assert all((REPO, str(b)) in registry.blobs for b in blobs)
    assert all(not w.done() for w in writes._workers)
    failures = metrics.tier_journal_failures
    assert failures.labels("add")._value.get() == 4 and failures.labels("ack")._value.get() == 4
    journal.failing.clear()
    await writes.resync()
    assert journal.pending() == [] and writes._record.backlog == {}
    await asyncio.wait_for(writes.close(), 2)


async def test_an_open_write_breaker_spends_no_attempt(tmp_path):
    """Every push refused by an open breaker (no request sent) for longer than the retries'
    backoff would last: the job waits it out and lands."""
    class Tripped(MemoryRegistry):
        refusals = 0

        async def push_blob(self, repo, digest, chunks):
            if self.refusals < 12:
                self.refusals += 1
                raise errors.CircuitOpen("ecr-tier-writes: circuit open for 1s more",
                                         headers={"Retry-After": "1"})
            await super().push_blob(repo, digest, chunks)
    registry, local, metrics = Tripped(), Local(tmp_path), Metrics()
    blob = local.add_blob(b"data")
    writes = await writer(registry, local, metrics=metrics, retries=2).open()
    writes.blob("up", "team/app", blob)
    await asyncio.wait_for(writes.idle(), 5)
    await writes.close()
    assert (REPO, str(blob)) in registry.blobs and registry.refusals == 12
    assert metrics.tier_writes.labels("blob", "pushed")._value.get() == 1


async def test_a_tag_is_pushed_only_while_it_is_the_nodes_view(tmp_path):
    """A replayed job for an older digest neither moves the tag back after a newer push,
    nor pushes a tag the node no longer holds at that digest."""
    registry, local = MemoryRegistry(), Local(tmp_path)
    old, _, _ = image(local, b"cfg-old", b"layer-old")
    new, new_body, _ = image(local, b"cfg-new", b"layer-new")
    views: dict[str, set[str]] = {"v1": {str(new)}}

    async def tag_digests(upstream, repo, tag):
        return views.get(tag, set())
    local.tag_digests = tag_digests
    writes = await writer(registry, local).open()
    writes.manifest("up", "team/app", old, "v1")      # the node moved on to ``new`` since
    await writes.idle()
    assert (REPO, "v1") not in registry.manifests and (REPO, str(old)) in registry.manifests
    writes.manifest("up", "team/app", new, "v1")
    await writes.idle()
    assert registry.manifests[(REPO, "v1")] == new_body
    # The same tag seen earlier, replayed (the journal after a restart): left alone.
    views["v1"] = {str(old), str(new)}
    stale = Job("manifest", "up", "team/app", str(old), "v1", seen=1.0)
    writes._submit(stale)
    await writes.idle()
    await writes.close()
    assert registry.manifests[(REPO, "v1")] == new_body


async def test_failed_jobs_are_queued_again_once_their_cause_cleared(tmp_path):
    class Down(MemoryRegistry):
        down = True

        async def push_blob(self, repo, digest, chunks):
            if self.down:
                raise errors.UpstreamUnavailable("ECR down")
            await super().push_blob(repo, digest, chunks)
    registry, local = Down(), Local(tmp_path)
    blob = local.add_blob(b"cached during an outage")
    journal = Journal(tmp_path / "q")
    writes = await writer(registry, local, journal, retries=1).open()
    writes.blob("up", "team/app", blob)
    await writes.idle()
    assert writes.status()["failed"] == 1
    registry.down = False
    assert await writes.resync() == 1
    await writes.idle()
    await writes.close()
    assert (REPO, str(blob)) in registry.blobs and writes.status()["failed"] == 0
    assert Journal(tmp_path / "q").open().failed() == []


def test_offline_tier_sync_makes_failed_jobs_pending_for_the_next_start(tmp_path):
    from pullcache.backing.journal import JOURNAL_DIR
    from pullcache.backing.report import requeue_failed
    journal = Journal(tmp_path / JOURNAL_DIR).open()
    job = Job("blob", "docker.io", "library/alpine", "sha256:" + "b" * 64)
    journal.add(job)
    journal.fail(job, "ECR down")
    journal.close()
    assert requeue_failed(tmp_path) == 1
    again = Journal(tmp_path / JOURNAL_DIR).open()
    assert again.pending() == [job] and again.failed() == []
    again.close()
    assert requeue_failed(tmp_path / "nothing-here") == 0
