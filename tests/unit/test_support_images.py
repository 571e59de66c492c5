"""Pure (socket-free) checks of tests/support: image building, layouts, challenges, JWT shape."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import jwt
import pytest

from tests.support.images import (
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST, build_image, build_index, build_raw_blob_image,
    parse_www_authenticate, random_bytes, read_oci_layout_digests, write_oci_layout,
)
from tests.support.tokenrealm import Scope, TokenRealm, libtrust_key_id


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_random_bytes_is_deterministic_and_seeded() -> None:
    assert random_bytes(1000, "a") == random_bytes(1000, "a")
    assert random_bytes(1000, "a") != random_bytes(1000, "b")
    assert len(random_bytes(0, "a")) == 0
    assert len(gzip.compress(random_bytes(100_000, "a"))) > 100_000  # incompressible


@pytest.mark.parametrize("docker", [False, True])
def test_build_image_is_consistent(docker: bool) -> None:
    image = build_image("unit", layer_sizes=(10, 20, 30), docker=docker)
    assert image == build_image("unit", layer_sizes=(10, 20, 30), docker=docker)
    manifest = json.loads(image.manifest)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == image.media_type == (DOCKER_MANIFEST if docker else OCI_MANIFEST)
    assert image.digest == sha(image.manifest)
    assert manifest["config"] == {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                                  "digest": sha(image.config.data), "size": len(image.config.data)}
    config = json.loads(image.config.data)
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    diff_ids = []
    for desc, layer, size in zip(manifest["layers"], image.layers, (10, 20, 30)):
        assert desc["mediaType"] == (DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP)
        assert desc["digest"] == sha(layer.data) and desc["size"] == layer.size == len(layer.data)
        tar_bytes = gzip.decompress(layer.data)
        diff_ids.append(sha(tar_bytes))
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            (member,) = tar.getmembers()
            assert member.size == size
    assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    assert image.blobs() == (image.config, *image.layers)


def test_platforms_differ_in_config_but_share_layers() -> None:
    amd = build_image("plat")
    arm = build_image("plat", arch="arm64", variant="v8")
    assert amd.digest != arm.digest and amd.layers == arm.layers
    assert arm.platform == {"architecture": "arm64", "os": "linux", "variant": "v8"}


@pytest.mark.parametrize("docker", [False, True])
def test_build_index(docker: bool) -> None:
    children = (build_image("i", docker=docker), build_image("i", docker=docker, arch="arm64"))
    index = build_index(children, docker=docker)
    doc = json.loads(index.manifest)
    assert doc["mediaType"] == index.media_type == (DOCKER_MANIFEST_LIST if docker else OCI_INDEX)
    assert doc["schemaVersion"] == 2 and index.digest == sha(index.manifest)
    assert [m["digest"] for m in doc["manifests"]] == [c.digest for c in children]
    assert [m["platform"]["architecture"] for m in doc["manifests"]] == ["amd64", "arm64"]
    assert [m["mediaType"] for m in doc["manifests"]] == [c.media_type for c in children]


def test_raw_blob_image() -> None:
    image = build_raw_blob_image("raw", 12345)
    (layer,) = image.layers
    assert layer.media_type == OCI_LAYER_TAR and layer.size == 12345
    assert layer.data == random_bytes(12345, "raw/raw")


def test_oci_layout_roundtrip(tmp_path) -> None:
    index = build_index([build_image("l"), build_image("l", arch="arm64")])
    write_oci_layout(tmp_path, index, "multi")
    write_oci_layout(tmp_path, build_image("single"), "one")
    write_oci_layout(tmp_path, build_image("single2"), "one")  # replaces the ref
    layout = read_oci_layout_digests(tmp_path)
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert layout["refs"] == {"multi": index.digest, "one": build_image("single2").digest}
    assert layout["manifests"][:3] == [index.digest, *(c.digest for c in index.children)]
    for blob in index.blobs():
        assert layout["blobs"][blob.digest] == blob.size


@pytest.mark.parametrize("header, expected", [
    ('Bearer realm="http://h/token",service="svc",scope="repository:a/b:pull,push"',
     ("bearer", {"realm": "http://h/token", "service": "svc", "scope": "repository:a/b:pull,push"})),
    ('Basic realm="x"', ("basic", {"realm": "x"})),
    ('Bearer realm=unquoted, service="a\\"b"', ("bearer", {"realm": "unquoted", "service": 'a"b'})),
])
def test_parse_www_authenticate(header, expected) -> None:
    assert parse_www_authenticate(header) == expected


def test_scope_parse() -> None:
    assert Scope.parse("repository:a/b:pull,push") == Scope("repository", "a/b", ("pull", "push"))
    assert Scope.parse("repository:host:5000/a:pull").name == "host:5000/a"
    with pytest.raises(ValueError):
        Scope.parse("nonsense")


@pytest.mark.parametrize("key_type, alg", [("EC", "ES256"), ("RSA", "RS256")])
def test_token_shape_distribution_accepts(key_type: str, alg: str) -> None:
    """The JWT header/claims Distribution 2.8 requires (checked against a real registry in integration)."""
    realm = TokenRealm(key_type=key_type)  # not started: issuing needs no server
    token = realm.issue("alice", [{"type": "repository", "name": "a", "actions": ["pull"]}], expires_in=60)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg and header["typ"] == "JWT"
    assert header["kid"] == libtrust_key_id(realm.public_key)
    assert len(header["kid"].split(":")) == 12
    claims = realm.decode(token)
    assert claims["aud"] == "pullcache-test-registry"  # a string, not a list
    assert claims["iss"] == "pullcache-test-issuer" and claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 60 and claims["nbf"] <= claims["iat"] and claims["jti"]
    assert realm.grant(None, ["repository:x:pull,push", "registry:catalog:*"]) == [
        {"type": "repository", "name": "x", "actions": ["pull"]}]
