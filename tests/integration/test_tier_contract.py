"""One behavioural suite for every tier (``backing.contract.Tier``), as gomods/athens runs one
suite against every storage backend: read, write, resume, corrupt object, store down, slow
store, access denied, duplicates.

ECR: moto's ECR API, and a Distribution registry (htpasswd user AWS) as its data plane.
S3: moto's S3. Each store sits behind a FaultProxy that counts requests and injects faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import aiohttp
import pytest

from pullcache import errors
from pullcache.backing.content import bytes_source
from pullcache.backing.contract import TierError, Verdict
from pullcache.config import UpstreamConfig, loads
from pullcache.oci import Digest
from tests.support.ecr import AWS_ENV, start_ecr_registry, start_moto
from tests.support.ecr_fleet import completed_uploads
from tests.support.faultproxy import FaultProxy
from tests.support.images import build_image, random_bytes
from tests.support.s3 import S3Store, completed_puts, s3_config

UPSTREAM, REPO = "origin.test", "contract/app"
TIMEOUT = 2.0    # the tier's short timeout in this suite (moto shares this process)


@dataclass
class Harness:
    """A tier under test, its store's front, and how to read what reached the store."""
    name: str
    tier: object
    front: FaultProxy
    blob_path: str        # a substring of a blob's GET path at the store
    upload_path: str      # ... of a blob upload's
    uploads: Callable[[], Counter]

    @property
    def repo(self) -> str:
        return self.tier.repository(UPSTREAM, REPO)


@pytest.fixture(scope="module")
def moto_url():
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)     # the SDK in this process looks nowhere but 127.0.0.1
    server, moto = start_moto()
    yield moto.url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def ecr_data_plane(tmp_path_factory):
    reg = start_ecr_registry(tmp_path_factory.mktemp("contract-ecr"))
    yield reg
    reg.stop()


@pytest.fixture(params=["ecr", "s3"])
async def make(request, moto_url):
    """Factory: a tier of the parameter's kind (a second call: a second node, same store)."""
    async with _maker(request.param, request, moto_url) as build:
        yield build


@pytest.fixture
async def make_s3(request, moto_url):
    """Factory: an S3 tier, for what only S3 does (conditional puts, read-only)."""
    async with _maker("s3", request, moto_url) as build:
        yield build


@contextlib.asynccontextmanager
async def _maker(kind: str, request, moto_url: str):
    stack = []
    fronts: dict[str, FaultProxy] = {}
    session = aiohttp.ClientSession(auto_decompress=False)

    def front_of(url: str) -> FaultProxy:
        if url not in fronts:
            fronts[url] = FaultProxy(url).start()
        return fronts[url]
    bucket = f"contract-{next(_buckets)}"
    if kind == "s3":
        S3Store(moto_url, bucket).create()

    async def build() -> Harness:
        if kind == "s3":
            return await _s3(moto_url, bucket, front_of(moto_url), stack)
        reg = request.getfixturevalue("ecr_data_plane")
        return await _ecr(moto_url, front_of(reg.url), session, stack)
    try:
        yield build
    finally:
        for close in reversed(stack):
            await close()
        await session.close()
        for front in fronts.values():
            front.stop()


_buckets = itertools.count()


async def _s3(moto_url: str, bucket: str, front: FaultProxy, stack) -> Harness:
    from pullcache.backing.s3.client import S3Api
    from pullcache.backing.s3.tier import S3Tier
    section = _s3_section(front.url, bucket)
    api = await S3Api(section).open()
    stack.append(api.close)
    tier = S3Tier(api, section)
    stack.append(tier.writes.close)
    return Harness("s3", tier, front, "/blobs/sha256/", "/blobs/sha256/",
                   lambda: Counter({k: n for k, n in completed_puts(front, bucket).items()
                                    if "/blobs/" in k}))


def _s3_section(url: str, bucket: str):
    keys = {**s3_config(url, bucket), "header_timeout": f"{TIMEOUT}s",
            "breaker_failures": 2, "breaker_cooldown": "30s", "denied_for": "1m"}
    text = "[backing.s3]\n" + "\n".join(
        f"{k} = {v!r}".replace("'", '"').replace("True", "true") for k, v in keys.items())
    return loads(text, env={}).backing_s3


async def _ecr(moto_url: str, front: FaultProxy, session, stack) -> Harness:
    from pullcache.backing.ecr import EcrApi, EcrCredentials
    from pullcache.backing.tier import EcrTier
    from pullcache.upstream.client import RegistryClient, UpstreamSettings
    api = await EcrApi("us-east-1", registry_id="123456789012", endpoint_url=moto_url).open()
    stack.append(api.close)
    credentials = EcrCredentials(api.token)

    def client(host: str) -> RegistryClient:
        return RegistryClient(UpstreamSettings.from_config(UpstreamConfig(
            host=host, url=front.url, header_timeout=TIMEOUT, read_timeout=TIMEOUT,
            breaker_failures=2, breaker_cooldown=30.0)), session, basic_first=True,
            credentials=credentials)
    tier = EcrTier(api, client("ecr-tier"), "contract", writer=client("ecr-tier-writes"))
    stack.append(tier.writes.close)
    return Harness("ecr", tier, front, "/blobs/sha256:", "/blobs/uploads/",
                   lambda: Counter({d: n for (_, d), n in completed_uploads(front).items()}))


async def _pushed(h: Harness, seed: str, size: int = 300_000) -> tuple[bytes, Digest]:
    data = random_bytes(size, seed + h.name)
    digest = Digest.of(data)
    await h.tier.writes.prepare(h.repo)
    assert await h.tier.writes.blob(h.repo, digest, bytes_source(data)) == "pushed"
    return data, digest


async def _read(stream) -> bytes:
    try:
        return b"".join([bytes(c) async for c in stream.chunks()])
    finally:
        await stream.close()


async def test_write_then_read(make):
    h = await make()
    image = build_image(f"contract-rw-{h.name}", layer_sizes=(120_000,))
    await h.tier.writes.prepare(h.repo)
    for blob in image.blobs():
        digest = Digest.parse(blob.digest)
        assert await h.tier.writes.blob(h.repo, digest, bytes_source(blob.data)) == "pushed"
        assert await h.tier.head_blob(UPSTREAM, REPO, digest) == blob.size
        assert await _read(await h.tier.open_blob(UPSTREAM, REPO, digest)) == blob.data
    digest = Digest.parse(image.digest)
    assert await h.tier.writes.manifest(h.repo, digest, image.manifest,
                                        image.media_type) == "pushed"
    got = await h.tier.get_manifest(UPSTREAM, REPO, digest)
    assert got.body == image.manifest and got.content_type == image.media_type
    assert await h.tier.writes.has_manifest(h.repo, digest)


async def test_a_miss_is_missing(make):
    h = await make()
    await h.tier.writes.prepare(h.repo)
    absent = Digest.of(b"never stored " + h.name.encode())
    for read in (h.tier.head_blob, h.tier.get_manifest):
        with pytest.raises(TierError) as caught:
            await read(UPSTREAM, REPO, absent)
        assert caught.value.verdict == Verdict.MISSING
    assert not h.tier.read_breaker.is_open


async def test_a_cut_transfer_resumes_from_where_it_was_cut(make):
    h = await make()
    data, digest = await _pushed(h, "resume")
    h.front.set_fault("truncate", match=h.blob_path, method="GET", at_byte=100_000, times=1)
    stream = await h.tier.open_blob(UPSTREAM, REPO, digest)
    received = bytearray()
    with pytest.raises((errors.UpstreamError, errors.UpstreamTimeout)):
        async for chunk in stream.chunks():
            received += chunk
    await stream.close()
    assert 0 < len(received) < len(data)
    rest = await h.tier.open_blob(UPSTREAM, REPO, digest, len(received))
    assert rest.size == len(data) - len(received)
    assert bytes(received) + await _read(rest) == data


async def test_a_corrupt_object_is_never_taken_for_the_content(make):
    h = await make()
    data, digest = await _pushed(h, "corrupt")
    h.front.set_fault("corrupt", match=h.blob_path, method="GET", at_byte=5, times=1)
    got = await _read(await h.tier.open_blob(UPSTREAM, REPO, digest))
    # The tier hands over what the store sent, held back (the fill verifies it).
    assert h.tier.passthrough is False
    assert len(got) == len(data) and not digest.matches(got)
    image = build_image(f"contract-corrupt-{h.name}", layer_sizes=(1000,))
    for blob in image.blobs():
        await h.tier.writes.blob(h.repo, Digest.parse(blob.digest), bytes_source(blob.data))
    manifest = Digest.parse(image.digest)
    await h.tier.writes.manifest(h.repo, manifest, image.manifest, image.media_type)
    h.front.set_fault("corrupt", match="/manifests/", method="GET", at_byte=3)
    try:
        got = await h.tier.get_manifest(UPSTREAM, REPO, manifest)
    except errors.DigestMismatch:
        pass    # checked by the tier (S3); else by the caller, which stores only what matches
    else:
        assert not manifest.matches(got.body)


async def test_a_store_that_is_down_opens_the_read_breaker(make):
    h = await make()
    _, digest = await _pushed(h, "down")
    h.front.reset_counts()
    h.front.set_fault("status", match="/", status=503)
    for _ in range(2):
        began = time.monotonic()
        with pytest.raises(TierError) as caught:
            await h.tier.head_blob(UPSTREAM, REPO, digest)
        assert caught.value.verdict == Verdict.RETRY and caught.value.sent
        # One try: no retry (and its backoff) inside the SDK before the origin is asked.
        assert time.monotonic() - began < 0.5 and h.front.count("HEAD") <= 2 * (_ + 1)
    assert h.tier.read_breaker.is_open
    began = time.monotonic()
    with pytest.raises(TierError) as caught:
        await h.tier.open_blob(UPSTREAM, REPO, digest)
    assert caught.value.verdict == Verdict.RETRY and not caught.value.sent
    assert time.monotonic() - began < 0.2
    assert not h.tier.write_breaker.is_open     # reads failing never stop writes


async def test_a_slow_store_costs_at_most_the_short_timeout(make):
    h = await make()
    _, digest = await _pushed(h, "slow")
    h.front.set_fault("blackhole", match="/")
    began = time.monotonic()
    with pytest.raises(TierError) as caught:
        await h.tier.head_blob(UPSTREAM, REPO, digest)
    took = time.monotonic() - began
    assert caught.value.verdict == Verdict.RETRY
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 1.0, took
    assert h.tier.read_breaker.is_open      # a timeout trips it: the next pull goes on at once


async def test_access_denied_on_write_is_denied_and_names_the_action(make):
    h = await make()
    data, digest = await _pushed(h, "denied-first")
    h.front.set_fault("status", match=h.upload_path, status=403,
                      method="POST" if h.name == "ecr" else "PUT")
    other = Digest.of(b"denied " + h.name.encode())
    with pytest.raises(TierError) as caught:
        await h.tier.writes.blob(h.repo, other, bytes_source(b"denied " + h.name.encode()))
    assert caught.value.verdict == Verdict.DENIED
    if h.name == "s3":
        assert caught.value.action == "s3:PutObject"
    # Reads go on.
    assert await _read(await h.tier.open_blob(UPSTREAM, REPO, digest)) == data
    assert not h.tier.read_breaker.is_open


async def test_s3_read_only_after_a_denial(make_s3):
    h = await make_s3()
    h.front.set_fault("status", match="/blobs/", status=403, method="PUT", times=1)
    with pytest.raises(TierError) as caught:
        await h.tier.writes.blob(h.repo, Digest.of(b"a"), bytes_source(b"a"))
    assert caught.value.verdict == Verdict.DENIED and caught.value.sent
    sent = h.front.count("PUT")
    with pytest.raises(TierError) as caught:       # read-only now: nothing is sent
        await h.tier.writes.blob(h.repo, Digest.of(b"b"), bytes_source(b"b"))
    assert caught.value.verdict == Verdict.DENIED and not caught.value.sent
    assert caught.value.action == "s3:PutObject"
    assert h.front.count("PUT") == sent
    assert h.tier.writes.status() and "read-only" in next(iter(h.tier.writes.status().values()))
    h.tier.writes.forgive()        # ``pullcache tier sync``: the operator fixed the policy
    assert await h.tier.writes.blob(h.repo, Digest.of(b"b"), bytes_source(b"b")) == "pushed"


async def test_duplicates_are_uploaded_once_across_nodes(make):
    a, b = await make(), await make()
    data = random_bytes(200_000, "dup" + a.name)
    digest = Digest.of(data)
    await a.tier.writes.prepare(a.repo)
    await b.tier.writes.prepare(b.repo)
    # Jobs of one node that meet: one flight, one upload.
    outcomes = await asyncio.gather(*(a.tier.writes.blob(a.repo, digest, bytes_source(data))
                                      for _ in range(3)))
    assert outcomes == ["pushed"] * 3
    # Another node: the store has it, so nothing goes up.
    assert await b.tier.writes.blob(b.repo, digest, bytes_source(data)) == "present"
    assert a.uploads()[_upload_key(a, digest)] == 1, a.uploads()


async def test_s3_a_put_racing_another_node_keeps_the_first(make_s3):
    """Both nodes' HEADs said "absent": the second conditional put is refused (412). (ECR
    has no conditional put: its HEAD before the upload is the guard.)"""
    a, b = await make_s3(), await make_s3()
    data = random_bytes(200_000, "race")
    digest = Digest.of(data)
    assert await a.tier.writes.blob(a.repo, digest, bytes_source(data)) == "pushed"
    # B's HEAD answered before A's put landed.
    b.front.set_fault("status", match="/blobs/sha256/", method="HEAD", status=404, times=1)
    assert await b.tier.writes.blob(b.repo, digest, bytes_source(data)) == "present"
    assert b.front.count("PUT", "/blobs/sha256/") == 2     # sent, and refused by the store
    assert b.front.count("PUT", "/links/") == 2            # each node links its repository


def _upload_key(h: Harness, digest: Digest) -> str:
    return f"pullcache/blobs/{digest.algorithm}/{digest.hex}" if h.name == "s3" \
        else str(digest)

