"""The S3 tier's pure parts: botocore errors → verdicts, the layout's keys, parts of a
multipart upload."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from pullcache.backing.contract import TierError, Verdict
from pullcache.backing.s3.client import ConditionUnsupported, PreconditionFailed, translate
from pullcache.backing.s3.layout import Layout, repository, tag_class
from pullcache.backing.s3.writes import _Parts
from pullcache.oci import DOCKER_LIST, DOCKER_MANIFEST, DOCKER_V1_SIGNED, OCI_INDEX, Digest


def _error(code: str, status: int, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("code, status, verdict, throttled", [
    ("NoSuchKey", 404, Verdict.MISSING, False),
    ("404", 404, Verdict.MISSING, False),          # a HEAD's miss has no body
    ("SlowDown", 503, Verdict.RETRY, True),
    ("503", 503, Verdict.RETRY, True),
    ("InternalError", 500, Verdict.RETRY, False),
    ("NoSuchBucket", 404, Verdict.MISSING, False),
    ("AccessDenied", 403, Verdict.DENIED, False),
    ("InvalidAccessKeyId", 403, Verdict.DENIED, False),
    ("KMS.DisabledException", 400, Verdict.DENIED, False),
    ("InvalidStorageClass", 400, Verdict.SKIP, False),
])
def test_errors_become_verdicts(code, status, verdict, throttled):
    error = translate("put_object", _error(code, status))
    assert isinstance(error, TierError)
    assert error.verdict == verdict and error.throttled == throttled


def test_a_denial_names_the_action():
    named = translate("put_object", _error(
        "AccessDenied", 403, "User: arn:aws:sts::1:assumed-role/node is not authorized to "
        "perform: kms:GenerateDataKey on resource: arn:aws:kms:…"))
    assert named.action == "kms:GenerateDataKey"
    assert translate("put_object", _error("AccessDenied", 403)).action == "s3:PutObject"
    assert translate("abort_multipart_upload", _error("403", 403)).action == \
        "s3:AbortMultipartUpload"


def test_conditional_put_outcomes():
    assert isinstance(translate("put_object", _error("PreconditionFailed", 412)),
                      PreconditionFailed)
    assert isinstance(translate("put_object", _error("NotImplemented", 501)),
                      ConditionUnsupported)


def test_layout_keys():
    digest = Digest.of(b"x")
    layout = Layout("pc/prod")
    repo = repository("127.0.0.1:5000", "library/alpine")
    assert layout.blob(digest) == f"pc/prod/blobs/sha256/{digest.hex}"
    assert layout.manifest(digest) == f"pc/prod/manifests/sha256/{digest.hex}"
    assert layout.link(repo, "blob", digest) == \
        f"pc/prod/links/127.0.0.1:5000/library/alpine/_blobs/sha256/{digest.hex}"
    assert layout.tag(repo, "3.20", "index") == \
        "pc/prod/tags/127.0.0.1:5000/library/alpine/_tags/3.20/index"
    assert Layout("").blob(digest) == f"blobs/sha256/{digest.hex}"
    assert (Layout("").root(), layout.root()) == ("", "pc/prod/")
    # Distinct repositories never share a key: "_" never starts a name component.
    assert repository("a", "b/_blobs") != repository("a", "b")
    assert [tag_class(t) for t in (OCI_INDEX, DOCKER_LIST, DOCKER_MANIFEST,
                                   DOCKER_V1_SIGNED)] == ["index", "index", "manifest", "v1"]


@pytest.mark.parametrize("chunks, size, want", [
    ([b"abc", b"defgh", b"ij"], 4, [b"abcd", b"efgh", b"ij"]),
    ([b"abcd"], 4, [b"abcd"]),
    ([b"abcdefghij"], 3, [b"abc", b"def", b"ghi", b"j"]),
    ([], 4, [b""]),
])
async def test_parts(chunks, size, want):
    async def source():
        for chunk in chunks:
            yield chunk
    parts = _Parts(source(), size)
    got = [await parts.next()]
    while not parts.ended:
        got.append(await parts.next())
    assert [p for p in got if p] == [w for w in want if w] and b"".join(got) == b"".join(chunks)


class _Stopped(Exception):
    pass


@pytest.mark.parametrize("style, url", [
    ("path", "http://s3.store.test:9000/fleet-cache/pullcache/blobs/sha256/x"),
    ("virtual", "http://fleet-cache.s3.store.test:9000/pullcache/blobs/sha256/x"),
])
async def test_addressing_style_reaches_the_request(style, url, monkeypatch):
    """The request as botocore would send it (stopped before any connection: the .test
    names resolve nowhere): the bucket in the path, or in the host."""
    from pullcache.backing.s3.client import S3Api
    from pullcache.config import loads
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = loads(f'[backing.s3]\nenabled = true\nbucket = "fleet-cache"\nregion = "r"\n'
                   f'endpoint_url = "http://s3.store.test:9000"\naddressing_style = "{style}"\n'
                   f'access_key_id = "a"\nsecret_access_key = "b"\n', env={}).backing_s3
    seen: list[str] = []

    def stop(request, **_):
        seen.append(request.url)
        raise _Stopped
    async with S3Api(config) as api:
        api._client.meta.events.register("before-send.s3", stop)
        with pytest.raises(_Stopped):
            await api.call("head_object", None, 5, Key="pullcache/blobs/sha256/x")
    assert seen == [url]
