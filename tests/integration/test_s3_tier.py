"""What only the S3 tier does, against moto's S3 (and KMS) server: multipart uploads (parts,
abort on failure), SSE-KMS and storage classes, a store that refuses conditional puts, and
``pullcache tier init`` (the lifecycle rule, or the JSON to apply by hand).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from aiohttp.abc import AbstractResolver

from pullcache.backing.content import bytes_source
from pullcache.backing.contract import TierError, Verdict
from pullcache.config import loads
from pullcache.oci import Digest
from tests.support.daemon import ROOT, _toml
from tests.support.ecr import AWS_ENV, REGION
from tests.support.images import random_bytes
from tests.support.s3 import *  # noqa: F401,F403 - the fixtures
from tests.support.s3 import s3_config

REPO = "origin.test/app"
MiB = 1 << 20


def section(url: str, bucket: str, **extra):
    keys = {**s3_config(url, bucket), **extra}
    return loads("[backing.s3]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in keys.items()),
                 env={}).backing_s3


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
async def tier_of():
    """Factory: an open S3 tier for a section; closed at the end."""
    from pullcache.backing.s3.client import S3Api
    from pullcache.backing.s3.tier import S3Tier
    opened = []

    async def make(config):
        api = await S3Api(config).open()
        opened.append(api)
        return S3Tier(api, config)
    yield make
    for api in opened:
        await api.close()


async def test_a_large_blob_goes_up_in_parts(tier_of, store, s3_front):
    tier = await tier_of(section(s3_front.url, store.bucket, part_size="8MiB"))
    data = random_bytes(20 * MiB + 123, "multipart")
    digest = Digest.of(data)
    assert await tier.writes.blob(REPO, digest, bytes_source(data)) == "pushed"
    assert s3_front.count("POST", "?uploads") == 1
    parts = [p for m, p in s3_front.requests if m == "PUT" and "partNumber=" in p]
    assert len(parts) == 3                                 # 8 + 8 + 4 MiB
    assert s3_front.count("POST", "uploadId=") == 1        # completed once
    key = f"pullcache/blobs/sha256/{digest.hex}"
    assert store.get(key)["Body"].read() == data


async def test_a_failed_part_aborts_the_upload(tier_of, store, s3_front):
    tier = await tier_of(section(s3_front.url, store.bucket, part_size="8MiB"))
    data = random_bytes(17 * MiB, "abort")
    digest = Digest.of(data)
    s3_front.set_fault("status", match="/blobs/sha256/", method="PUT", status=500)   # a part
    with pytest.raises(TierError) as caught:
        await tier.writes.blob(REPO, digest, bytes_source(data))
    assert caught.value.verdict == Verdict.RETRY
    assert s3_front.count("DELETE", "uploadId=") == 1      # AbortMultipartUpload
    assert store.client().list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert f"pullcache/blobs/sha256/{digest.hex}" not in store.keys()
    s3_front.clear_fault()
    assert await tier.writes.blob(REPO, digest, bytes_source(data)) == "pushed"


async def test_sse_kms_and_storage_class_on_every_object(tier_of, store, moto_s3):
    import boto3
    kms = boto3.client("kms", region_name=REGION, endpoint_url=moto_s3,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    key_arn = kms.create_key(Description="pullcache tier")["KeyMetadata"]["Arn"]
    tier = await tier_of(section(moto_s3, store.bucket, server_side_encryption="aws:kms",
                                 kms_key=key_arn, storage_class="STANDARD_IA",
                                 part_size="8MiB"))
    small, large = b"small object", random_bytes(9 * MiB, "kms")
    for data in (small, large):                        # a single put, and a multipart one
        digest = Digest.of(data)
        assert await tier.writes.blob(REPO, digest, bytes_source(data)) == "pushed"
        head = store.client().head_object(Bucket=store.bucket,
                                          Key=f"pullcache/blobs/sha256/{digest.hex}")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == key_arn
        assert head.get("StorageClass") == "STANDARD_IA"
        got = await tier.open_blob("origin.test", "app", digest)
        body = b"".join([c async for c in got.chunks()])
        await got.close()
        assert body == data


async def test_a_store_without_conditional_puts_gets_a_head_first(tier_of, store, s3_front):
    tier = await tier_of(section(s3_front.url, store.bucket))
    s3_front.set_fault("status", match="/blobs/sha256/", method="PUT", status=501, times=1)
    data = b"no conditions here"
    assert await tier.writes.blob(REPO, Digest.of(data), bytes_source(data)) == "pushed"
    assert store.get(f"pullcache/blobs/sha256/{Digest.of(data).hex}")["Body"].read() == data
    other = b"and none asked for"
    s3_front.reset_counts()
    assert await tier.writes.blob(REPO, Digest.of(other), bytes_source(other)) == "pushed"
    assert s3_front.count("HEAD", "/blobs/sha256/") == 1 and s3_front.count("PUT") == 2


def _tier_init(pc_config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pullcache", "tier", "init", "--config",
                           str(pc_config)], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **AWS_ENV},
                          timeout=60)


def _config(tmp_path, url: str, bucket: str):
    path = tmp_path / "pullcache.toml"
    keys = s3_config(url, bucket)
    path.write_text("[backing.s3]\n" + "\n".join(f"{k} = {_toml(v)}"
                                                  for k, v in keys.items()) + "\n")
    return path


def test_tier_init_sets_the_lifecycle_rule(tmp_path, store):
    client = store.client()
    client.put_bucket_lifecycle_configuration(Bucket=store.bucket, LifecycleConfiguration={
        "Rules": [{"ID": "theirs", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
                   "Expiration": {"Days": 30}}]})
    for _ in range(2):     # twice: idempotent
        done = _tier_init(_config(tmp_path, store.url, store.bucket))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["applied"] is True
    rules = client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]
    ours = [r for r in rules if r["ID"] == "pullcache-abort-incomplete-multipart-uploads"]
    assert len(ours) == 1 and [r["ID"] for r in rules].count("theirs") == 1
    assert ours[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert ours[0]["Filter"] == {"Prefix": "pullcache/"}


def test_tier_init_without_permission_prints_the_rule(tmp_path, store, s3_front):
    # (The proxy matches paths: the bucket's own PUT is PutBucketLifecycleConfiguration.)
    s3_front.set_fault("status", match=f"/{store.bucket}", method="PUT", status=403)
    done = _tier_init(_config(tmp_path, s3_front.url, store.bucket))
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert out["applied"] is False and out["action"] == "s3:PutLifecycleConfiguration"
    rule = out["lifecycle"]["Rules"][0]
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert "put-bucket-lifecycle-configuration" in done.stderr
    # What it printed is what the bucket takes.
    store.client().put_bucket_lifecycle_configuration(Bucket=store.bucket,
                                                      LifecycleConfiguration=out["lifecycle"])


async def test_a_manifest_stored_for_another_repository_is_linked_when_this_one_has_it(
        tier_of, store):
    tier = await tier_of(section(store.url, store.bucket))
    body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
    digest = Digest.of(body)
    await tier.writes.manifest("origin.test/one", digest, body,
                               "application/vnd.oci.image.manifest.v1+json")
    with pytest.raises(TierError) as caught:      # not linked to "two": a miss there
        await tier.get_manifest("origin.test", "two", digest)
    assert caught.value.verdict == Verdict.MISSING
    # The write-behind of "two" (whose index names it) finds it stored: linked, not fetched.
    assert await tier.writes.has_manifest("origin.test/two", digest)
    assert (await tier.get_manifest("origin.test", "two", digest)).body == body


async def test_an_object_expired_in_the_store_is_written_again(tier_of, store):
    tier = await tier_of(section(store.url, store.bucket))
    data = b"expired by a lifecycle rule"
    digest = Digest.of(data)
    assert await tier.writes.blob(REPO, digest, bytes_source(data)) == "pushed"
    store.client().delete_object(Bucket=store.bucket, Key=f"pullcache/blobs/sha256/{digest.hex}")
    with pytest.raises(TierError) as caught:      # the read finds it gone...
        await tier.open_blob("origin.test", "app", digest)
    assert caught.value.verdict == Verdict.MISSING
    # ...and the write-behind no longer takes it for present.
    assert await tier.writes.blob(REPO, digest, bytes_source(data)) == "pushed"


class _Loopback(AbstractResolver):
    """Every ``*.test`` name is 127.0.0.1: a virtual-hosted bucket's name without DNS."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        if not host.endswith(".test"):
            raise OSError(f"{host}: only .test names here")
        return [{"hostname": host, "host": "127.0.0.1", "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


async def test_virtual_hosted_addressing_end_to_end(store, moto_s3):
    """The bucket in the host name (moto reads it from there), against moto on 127.0.0.1."""
    from pullcache.backing.s3.client import S3Api
    from pullcache.backing.s3.tier import S3Tier
    port = moto_s3.rpartition(":")[2]
    config = section(f"http://s3.store.test:{port}", store.bucket,
                     addressing_style="virtual")
    hosts: list[str] = []
    async with S3Api(config, resolver=_Loopback()) as api:
        api._client.meta.events.register(
            "before-send.s3", lambda request, **_: hosts.append(urlsplit(request.url).netloc))
        tier = S3Tier(api, config)
        data = b"addressed by host"
        digest = Digest.of(data)
        assert await tier.writes.blob(REPO, digest, bytes_source(data)) == "pushed"
        got = await tier.open_blob("origin.test", "app", digest)
        assert b"".join([c async for c in got.chunks()]) == data
        await got.close()
    assert hosts and set(hosts) == {f"{store.bucket}.s3.store.test:{port}"}
    assert store.get(f"pullcache/blobs/sha256/{digest.hex}")["Body"].read() == data
