"""An S3-compatible store, offline: moto in server mode (the same moto the ECR tests use) is
the store, behind a FaultProxy that counts every request and injects faults.

Import the fixtures into a test module: ``from tests.support.s3 import *``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from urllib.parse import urlsplit

import pytest

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.ecr import AWS_ENV, REGION, start_moto
from tests.support.ecr_fleet import origin  # noqa: F401 - the origin fixture, re-exported
from tests.support.faultproxy import FaultProxy

__all__ = ["moto_s3", "store", "s3_front", "s3_node", "s3_config", "S3Store",
           "completed_puts", "origin"]
_names = itertools.count()


class S3Store:
    """moto's S3 (``url``) and one bucket of this test's."""

    def __init__(self, url: str, bucket: str) -> None:
        self.url = url
        self.bucket = bucket

    def client(self):
        import boto3
        return boto3.client("s3", region_name=REGION, endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create(self) -> "S3Store":
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def get(self, key: str) -> dict:
        return self.client().get_object(Bucket=self.bucket, Key=key)

    def put(self, key: str, body: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body)


def s3_config(url: str, bucket: str, **extra) -> dict:
    """``[backing.s3]`` for a bucket at ``url`` (moto, or a FaultProxy in front of it)."""
    return {"enabled": True, "bucket": bucket, "region": REGION, "endpoint_url": url,
            "addressing_style": "path", "drain_timeout": "2s", "header_timeout": "2s",
            **extra}


def completed_puts(front: FaultProxy, bucket: str) -> Counter:
    """Object key → uploads that stored it: single PUTs (no query) and multipart
    completions (``POST …?uploadId=``), as the store's front saw them."""
    done: Counter = Counter()
    for method, path_qs in front.requests:
        parts = urlsplit(path_qs)
        key = parts.path.removeprefix(f"/{bucket}/")
        if (method == "PUT" and not parts.query) or \
                (method == "POST" and "uploadId=" in parts.query):
            done[key] += 1
    return done


@pytest.fixture(scope="module")
def moto_s3():
    server, moto = start_moto()
    yield moto.url
    server.stop()


@pytest.fixture
def store(moto_s3) -> S3Store:
    """A fresh bucket for this test."""
    return S3Store(moto_s3, f"pullcache-test-{next(_names)}").create()


@pytest.fixture
def s3_front(moto_s3):
    """The store behind a counting, fault-injecting proxy."""
    with FaultProxy(moto_s3) as proxy:
        yield proxy


@pytest.fixture
def s3_node(tmp_path, origin, s3_front, store):
    """Factory: a pullcache node (own cache dir) with the S3 tier in front of the origin."""
    nodes: list[Pullcache] = []

    def make(name: str, cache: dict | None = None, upstream: dict | None = None,
             **backing) -> Pullcache:
        workdir = tmp_path / name
        workdir.mkdir()
        backing = {"write_retries": 3, **backing}
        pc = Pullcache(workdir, [UpstreamSpec(origin.host, origin.url, default=True,
                                              extra=upstream or {})],
                       backing=s3_config(s3_front.url, store.bucket, **backing), tier="s3",
                       env=AWS_ENV, cache=cache or {})
        nodes.append(pc)
        return pc.start()
    yield make
    for pc in nodes:
        pc.stop()
