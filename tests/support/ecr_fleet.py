"""Fixtures and helpers for tests of the ECR tier: moto (behind ``AwsFront``) is the ECR API,
a Distribution registry (htpasswd user AWS, behind a FaultProxy) the ECR data plane, another
Distribution registry (behind a counting FaultProxy) the origin.

Import the fixtures into a test module: ``from tests.support.ecr_fleet import *``.
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.ecr import (AWS_ENV, AwsFront, backing_config, start_ecr_registry,
                               start_moto)
from tests.support.faultproxy import FaultProxy
from tests.support.http import basic_auth, request
from tests.support.ports import wait_until

__all__ = ["moto", "aws_front", "aws", "ecr_registry", "origin", "ecr_front", "node", "pull",
           "pull_child", "wait_written", "origin_counts", "ecr_repo", "completed_uploads",
           "ecr_auth"]


@pytest.fixture(scope="module")
def moto():
    server, ecr = start_moto()
    yield ecr
    server.stop()


@pytest.fixture(scope="module")
def aws_front(moto):
    front = AwsFront(moto).start()
    yield front
    front.stop()


@pytest.fixture
def aws(aws_front):
    """The ECR API as the nodes see it: no denial armed, operations counted from here."""
    aws_front.deny.clear()
    aws_front.fail.clear()
    aws_front.operations.clear()
    yield aws_front
    aws_front.deny.clear()
    aws_front.fail.clear()


@pytest.fixture(scope="module")
def ecr_registry(tmp_path_factory):
    reg = start_ecr_registry(tmp_path_factory.mktemp("ecr-registry"))
    yield reg
    reg.stop()


@pytest.fixture
def origin(registry):
    """The origin registry behind a counting proxy."""
    with FaultProxy(registry.url) as proxy:
        yield proxy


@pytest.fixture
def ecr_front(ecr_registry):
    """The ECR registry endpoint behind a fault proxy."""
    with FaultProxy(ecr_registry.url) as proxy:
        yield proxy


@pytest.fixture
def node(tmp_path, origin, aws, ecr_front):
    """Factory: a pullcache node (own cache dir) with the ECR tier in front of the origin."""
    nodes: list[Pullcache] = []

    def make(name: str, cache: dict | None = None, **backing) -> Pullcache:
        workdir = tmp_path / name
        workdir.mkdir()
        # Few retries: a manifest that waits for its layers or children gives up sooner.
        backing = {"write_retries": 3, **backing}
        pc = Pullcache(workdir, [UpstreamSpec(origin.host, origin.url, default=True)],
                       backing=backing_config(aws, ecr_front.url, **backing), env=AWS_ENV,
                       cache=cache or {})
        nodes.append(pc)
        return pc.start()
    yield make
    for pc in nodes:
        pc.stop()


def pull(pc: Pullcache, repo: str, tag: str, image) -> None:
    """What a client does: the manifest by tag, then every blob; all verified."""
    r = request(pc.url, f"/v2/{repo}/manifests/{tag}")
    assert r.status == 200 and r.body == image.manifest, r.body
    for blob in image.blobs():
        b = request(pc.url, f"/v2/{repo}/blobs/{blob.digest}")
        assert b.status == 200 and b.sha256 == blob.digest


def pull_child(pc: Pullcache, repo: str, tag: str, index, child) -> None:
    """A client on ``child``'s platform: the index by tag, its manifest by digest, its blobs."""
    accept = {"Accept": f"{index.media_type}, {child.media_type}"}
    r = request(pc.url, f"/v2/{repo}/manifests/{tag}", headers=accept)
    assert r.status == 200 and r.body == index.manifest, r.body
    r = request(pc.url, f"/v2/{repo}/manifests/{child.digest}", headers=accept)
    assert r.status == 200 and r.body == child.manifest, r.body
    for blob in child.blobs():
        b = request(pc.url, f"/v2/{repo}/blobs/{blob.digest}")
        assert b.status == 200 and b.sha256 == blob.digest


def wait_written(pc: Pullcache, jobs: int, timeout: float = 60) -> None:
    """Until ``jobs`` write-behind jobs ended and none is left (queued, waiting, running)."""
    def done() -> bool:
        return pc.metric("pullcache_tier_write_queue") == 0 and \
            pc.metric("pullcache_tier_writes_total") >= jobs
    wait_until(done, timeout, "the write-behind to land in ECR")


def origin_counts(origin: FaultProxy) -> dict[str, int]:
    """The origin's request log, counted: manifest GETs (what Docker Hub's limit counts),
    manifest HEADs (free), blob GETs and blob HEADs."""
    return {"manifest GET": origin.count("GET", "/manifests/"),
            "manifest HEAD": origin.count("HEAD", "/manifests/"),
            "blob GET": origin.count("GET", "/blobs/"),
            "blob HEAD": origin.count("HEAD", "/blobs/")}


def ecr_repo(origin: FaultProxy, repo: str) -> str:
    from pullcache.backing.ecr import repository_name
    return repository_name("pullcache", origin.host, repo)


def completed_uploads(ecr_front: FaultProxy) -> Counter:
    """(repository, digest) → blob uploads finished (the ``PUT …?digest=`` of each)."""
    done: Counter = Counter()
    for method, path_qs in ecr_front.requests:
        parts = urlsplit(path_qs)
        digest = parse_qs(parts.query).get("digest")
        if method == "PUT" and "/blobs/uploads/" in parts.path and digest:
            repo = unquote(parts.path).removeprefix("/v2/").partition("/blobs/uploads/")[0]
            done[(repo, digest[0])] += 1
    return done


def ecr_auth(ecr_registry, accept: str = "") -> dict:
    auth = {"Authorization": basic_auth("AWS", ecr_registry.password)}
    return {**auth, "Accept": accept} if accept else auth
