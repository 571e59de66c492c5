"""Proves the test-support layer against a real Distribution registry, skopeo and sockets."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import threading
import urllib.parse
from pathlib import Path

import aiohttp
import pytest

from tests.support.binaries import require
from tests.support.faultproxy import FaultProxy
from tests.support.http import basic_auth
from tests.support.images import (
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, Image, Index, PushError,
    RegistryClient, build_image, build_index, build_raw_blob_image, push, read_oci_layout_digests,
    write_oci_layout,
)
from tests.support.ports import wait_until
from tests.support.registry import Registry, start_registry
from tests.support.tokenrealm import TokenRealm

pytestmark = pytest.mark.integration

FLAVOURS = ["anonymous", "basic", "token"]
KINDS = ["oci", "docker", "oci-index", "docker-list"]


@pytest.fixture
def any_registry(request, registry, registry_basic, registry_token) -> Registry:
    return {"anonymous": registry, "basic": registry_basic, "token": registry_token}[request.param]


def make(kind: str, seed: str) -> Image | Index:
    docker = kind.startswith("docker")
    if kind in ("oci", "docker"):
        return build_image(seed, docker=docker)
    amd = build_image(seed, docker=docker)
    arm = build_image(seed, docker=docker, arch="arm64", variant="v8")
    return build_index([amd, arm], docker=docker)


def creds(reg: Registry) -> dict:
    return {"username": reg.username, "password": reg.password}


def raw_get(url: str, headers: dict | None = None, timeout: float = 10) -> tuple[http.client.HTTPResponse, bytes]:
    """One GET with http.client; returns (response, body) and lets read errors propagate."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


# -- registries, images, push ---------------------------------------------------------

@pytest.mark.parametrize("any_registry", FLAVOURS, indirect=True)
@pytest.mark.parametrize("kind", KINDS)
def test_push_and_read_back(any_registry: Registry, kind: str) -> None:
    obj = make(kind, f"roundtrip-{kind}")
    repo = f"support/{kind}"
    push(any_registry, repo, "v1", obj, **creds(any_registry))

    client = RegistryClient(any_registry, repo, **creds(any_registry))
    resp = client.get_manifest("v1")
    assert resp.status == 200
    assert resp.body == obj.manifest
    assert resp.headers["Docker-Content-Digest"] == obj.digest
    assert resp.headers["Content-Type"] == obj.media_type
    children = obj.children if isinstance(obj, Index) else (obj,)
    for child in children:
        assert client.get_manifest(child.digest).body == child.manifest
        for blob in child.blobs():
            got = client.get_blob(blob.digest)
            assert got.status == 200 and hashlib.sha256(got.body).hexdigest() == blob.digest[7:]


@pytest.mark.parametrize("any_registry", ["basic", "token"], indirect=True)
def test_auth_flavours_refuse_anonymous_push(any_registry: Registry) -> None:
    with pytest.raises(PushError) as err:
        push(any_registry, "support/anon", "v1", build_image("anon"))
    assert err.value.status == 401


def test_media_types() -> None:
    assert make("oci", "m").media_type == OCI_MANIFEST
    assert make("docker", "m").media_type == DOCKER_MANIFEST
    assert make("oci-index", "m").media_type == OCI_INDEX
    assert make("docker-list", "m").media_type == DOCKER_MANIFEST_LIST


def test_push_64mib_raw_blob(registry: Registry) -> None:
    image = build_raw_blob_image("big64", 64 << 20)
    push(registry, "support/big", None, image)
    client = RegistryClient(registry, "support/big")
    head = client.request("HEAD", f"/v2/support/big/blobs/{image.layers[0].digest}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == 64 << 20
    assert client.get_manifest(image.digest).status == 200
    # Pushing again skips every blob (HEAD hits).
    push(registry, "support/big", "again", image)


def test_registry_restart_keeps_port_and_storage(tmp_path: Path) -> None:
    image = build_image("restart")
    with start_registry(tmp_path) as reg:
        push(reg, "support/restart", "v1", image)
        url, pid = reg.url, reg.pid
        reg.stop()
        assert not reg.running
        reg.start()
        assert reg.url == url and reg.pid != pid
        assert RegistryClient(reg, "support/restart").get_manifest("v1").body == image.manifest
    assert not reg.running


# -- token realm ----------------------------------------------------------------------

def test_token_realm_counts_and_policy(token_realm: TokenRealm, registry_token: Registry) -> None:
    token_realm.reset_requests()
    push(registry_token, "support/counted", "v1", build_image("counted"), **creds(registry_token))
    reqs = token_realm.requests
    assert len(reqs) == 1, "one token per push: the client reuses it"
    assert reqs[0].username == "alice" and reqs[0].status == 200
    assert {"type": "repository", "name": "support/counted", "actions": ["pull", "push"]} in reqs[0].granted

    resp, body = raw_get(f"{token_realm.token_url}?service={token_realm.service}"
                         "&scope=repository:a/b:pull,push&scope=repository:c:pull")
    doc = json.loads(body)
    assert set(doc) >= {"token", "access_token", "expires_in", "issued_at"} and doc["expires_in"] == 300
    claims = token_realm.decode(doc["token"])
    assert claims["sub"] == "" and isinstance(claims["aud"], str)
    assert claims["access"] == [{"type": "repository", "name": "a/b", "actions": ["pull"]},
                                {"type": "repository", "name": "c", "actions": ["pull"]}]


def test_token_realm_rejects_wrong_password_and_serves_post(token_realm: TokenRealm) -> None:
    bad = http.client.HTTPConnection(token_realm.host, timeout=5)
    bad.request("GET", "/token?scope=repository:x:pull",
                headers={"Authorization": basic_auth("alice", "wrong")})
    assert bad.getresponse().status == 401
    bad.close()

    form = urllib.parse.urlencode({"grant_type": "password", "username": "alice", "password": "s3cret",
                                   "service": token_realm.service, "scope": "repository:x:pull,push",
                                   "client_id": "test", "access_type": "offline"})
    conn = http.client.HTTPConnection(token_realm.host, timeout=5)
    conn.request("POST", "/token", body=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
    doc = json.loads(conn.getresponse().read())
    conn.close()
    assert token_realm.decode(doc["access_token"])["access"][0]["actions"] == ["pull", "push"]
    assert doc["refresh_token"]


def test_rsa_token_realm_is_accepted(tmp_path: Path) -> None:
    with TokenRealm({"bob": "pw"}, key_type="RSA") as realm:
        assert realm.algorithm == "RS256"
        with start_registry(tmp_path, "token", username="bob", password="pw", token_realm=realm) as reg:
            image = build_image("rsa")
            push(reg, "support/rsa", "v1", image, username="bob", password="pw")
            assert RegistryClient(reg, "support/rsa").get_manifest("v1").body == image.manifest


# -- OCI layout + skopeo ---------------------------------------------------------------

def skopeo(*args: str) -> None:
    """Run skopeo (insecure policy: no signature checks, http registries)."""
    proc = subprocess.run([require("skopeo"), "--insecure-policy", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"skopeo {' '.join(args)} failed:\n{proc.stderr}"


def skopeo_creds(reg: Registry, flag: str) -> list[str]:
    return [f"{flag}={reg.username}:{reg.password}"] if reg.username else []


@pytest.mark.parametrize("any_registry", FLAVOURS, indirect=True)
def test_skopeo_copies_written_oci_layout(any_registry: Registry, tmp_path: Path) -> None:
    obj = make("oci-index", "skopeo-index")
    write_oci_layout(tmp_path / "src", obj, "v1")
    dest = f"docker://{any_registry.host}/support/skopeo:v1"
    skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
           *skopeo_creds(any_registry, "--dest-creds"), f"oci:{tmp_path / 'src'}:v1", dest)
    client = RegistryClient(any_registry, "support/skopeo", **creds(any_registry))
    assert client.get_manifest("v1").headers["Docker-Content-Digest"] == obj.digest

    # And back into a fresh layout, which read_oci_layout_digests verifies blob by blob.
    skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false",
           *skopeo_creds(any_registry, "--src-creds"), dest, f"oci:{tmp_path / 'back'}:v1")
    layout = read_oci_layout_digests(tmp_path / "back")
    assert layout["refs"] == {"v1": obj.digest}
    assert layout["manifests"] == [obj.digest, *(c.digest for c in obj.children)]
    expected = {b.digest: b.size for b in obj.blobs()}
    expected.update({m.digest: m.size for m in (obj, *obj.children)})
    assert layout["blobs"] == expected


def test_read_oci_layout_digests_detects_corruption(tmp_path: Path) -> None:
    image = build_image("layout-corrupt", docker=True)
    write_oci_layout(tmp_path, image, "a")
    write_oci_layout(tmp_path, build_image("other"), "b")
    assert set(read_oci_layout_digests(tmp_path)["refs"]) == {"a", "b"}
    victim = tmp_path / "blobs" / "sha256" / image.layers[0].digest[7:]
    victim.write_bytes(b"x" + victim.read_bytes()[1:])
    with pytest.raises(AssertionError, match="hashes to"):
        read_oci_layout_digests(tmp_path)


# -- fault proxy ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pushed(registry: Registry) -> Image:
    """An image whose single layer is 300 KiB (several proxy chunks), pushed to ``registry``."""
    image = build_raw_blob_image("fault-proxy", 300 * 1024)
    push(registry, "support/faults", "v1", image)
    return image


def blob_url(proxy: FaultProxy, image: Image) -> str:
    return f"{proxy.url}/v2/support/faults/blobs/{image.layers[0].digest}"


def test_proxy_passes_through_and_counts(fault_proxy: FaultProxy, pushed: Image) -> None:
    resp, body = raw_get(blob_url(fault_proxy, pushed))
    assert resp.status == 200 and body == pushed.layers[0].data
    assert resp.headers["Content-Length"] == str(pushed.layers[0].size)
    client = RegistryClient(fault_proxy.url, "support/faults")
    assert client.get_manifest("v1").body == pushed.manifest
    assert client.request("HEAD", f"/v2/support/faults/blobs/{pushed.config.digest}").status == 200
    assert fault_proxy.count("GET", "/blobs/") == 1
    assert fault_proxy.count("GET", "/manifests/v1") == 1
    assert fault_proxy.count("HEAD") == 1
    assert fault_proxy.count() == 3
    fault_proxy.reset_counts()
    assert fault_proxy.requests == []


def test_proxy_rewrites_upload_location(fault_proxy: FaultProxy) -> None:
    client = RegistryClient(fault_proxy.url, "support/faults")
    resp = client.request("POST", "/v2/support/faults/blobs/uploads/", b"")
    assert resp.status == 202
    assert resp.headers["Location"].startswith(fault_proxy.url + "/v2/support/faults/blobs/uploads/")
    # A full push through the proxy works (uploads follow the rewritten Location).
    push(fault_proxy.url, "support/through-proxy", "v1", build_image("through-proxy"))
    assert fault_proxy.count("PUT", "/v2/support/through-proxy/manifests/v1") == 1


def test_fault_corrupt_flips_one_byte_once(fault_proxy: FaultProxy, pushed: Image) -> None:
    fault_proxy.set_fault("corrupt", at_byte=100_000, times=1)
    _, body = raw_get(blob_url(fault_proxy, pushed))
    data = pushed.layers[0].data
    assert len(body) == len(data) and body != data
    assert [i for i in range(len(data)) if body[i] != data[i]] == [100_000]
    _, body = raw_get(blob_url(fault_proxy, pushed))
    assert body == data
    assert fault_proxy.fault_hits == 1


def test_fault_truncate(fault_proxy: FaultProxy, pushed: Image) -> None:
    fault_proxy.set_fault("truncate", at_byte=70_000)
    with pytest.raises(http.client.IncompleteRead) as err:
        raw_get(blob_url(fault_proxy, pushed))
    assert err.value.partial == pushed.layers[0].data[:70_000]
    assert err.value.expected == pushed.layers[0].size - 70_000


def test_fault_stall_and_release(fault_proxy: FaultProxy, pushed: Image) -> None:
    fault_proxy.set_fault("stall", at_byte=1000, times=1)
    result: dict = {}
    done = threading.Event()

    def fetch() -> None:
        try:
            result["body"] = raw_get(blob_url(fault_proxy, pushed))[1]
        finally:
            done.set()

    worker = threading.Thread(target=fetch)
    worker.start()
    assert fault_proxy.stalled.wait(10), "the stall point was never reached"
    assert not done.is_set()
    fault_proxy.release()
    assert done.wait(10)
    worker.join()
    assert result["body"] == pushed.layers[0].data
    assert not fault_proxy.stalled.is_set()


def test_fault_status_429_does_not_reach_upstream(fault_proxy: FaultProxy) -> None:
    with FaultProxy(fault_proxy.url) as front:
        front.set_fault("status", match="/manifests/", status=429, retry_after=7, times=2)
        statuses = []
        for _ in range(3):
            resp, body = raw_get(f"{front.url}/v2/support/faults/manifests/v1",
                                 headers={"Accept": OCI_MANIFEST})
            statuses.append(resp.status)
        assert statuses == [429, 429, 200]
        assert json.loads(body)["mediaType"] == OCI_MANIFEST
        assert front.count("GET", "/manifests/v1") == 3
        assert fault_proxy.count("GET", "/manifests/") == 1, "faulted requests never reach upstream"


def test_fault_status_body_and_method_match(fault_proxy: FaultProxy, pushed: Image) -> None:
    fault_proxy.set_fault("status", status=503, retry_after=2, method="HEAD")
    client = RegistryClient(fault_proxy.url, "support/faults")
    assert client.get_blob(pushed.config.digest).status == 200, "GET does not match method='HEAD'"
    conn = http.client.HTTPConnection(fault_proxy.host, timeout=5)
    conn.request("HEAD", f"/v2/support/faults/blobs/{pushed.config.digest}")
    head = conn.getresponse()
    assert head.status == 503 and head.headers["Retry-After"] == "2"
    conn.close()
    fault_proxy.set_fault("status", status=429)
    resp = client.get_blob(pushed.config.digest)
    assert resp.status == 429 and json.loads(resp.body)["errors"][0]["code"] == "TOOMANYREQUESTS"


def test_fault_blackhole_until_cleared(fault_proxy: FaultProxy, pushed: Image) -> None:
    fault_proxy.set_fault("blackhole")
    with pytest.raises(TimeoutError):
        raw_get(blob_url(fault_proxy, pushed), timeout=0.3)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            raw_get(blob_url(fault_proxy, pushed), timeout=10)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            errors.append(exc)

    worker = threading.Thread(target=fetch)
    worker.start()
    wait_until(lambda: fault_proxy.count("GET", "/blobs/") == 2, what="second blackholed request")
    fault_proxy.clear_fault()
    worker.join(10)
    assert not worker.is_alive()
    assert errors and isinstance(errors[0], (ConnectionError, http.client.RemoteDisconnected))
    assert raw_get(blob_url(fault_proxy, pushed))[1] == pushed.layers[0].data


def test_fault_reset(fault_proxy: FaultProxy, pushed: Image) -> None:
    fault_proxy.set_fault("reset", match="/v2/", times=1)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        raw_get(blob_url(fault_proxy, pushed))
    assert raw_get(blob_url(fault_proxy, pushed))[0].status == 200


async def test_fault_proxy_from_async_test(fault_proxy: FaultProxy, pushed: Image) -> None:
    """The background-thread design keeps sync fixtures usable from async tests."""
    fault_proxy.set_fault("truncate", at_byte=5000, times=1)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(blob_url(fault_proxy, pushed)) as resp:
                await resp.read()
        async with session.get(blob_url(fault_proxy, pushed)) as resp:
            assert await resp.read() == pushed.layers[0].data
    assert fault_proxy.count("GET", "/blobs/") == 2



def test_proxy_answers_502_when_upstream_is_down(tmp_path: Path) -> None:
    with start_registry(tmp_path) as reg, FaultProxy(reg.url) as proxy:
        assert raw_get(f"{proxy.url}/v2/")[0].status == 200
        reg.stop()
        resp, body = raw_get(f"{proxy.url}/v2/")
        assert resp.status == 502 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        reg.start()
        assert raw_get(f"{proxy.url}/v2/")[0].status == 200
