"""Cluster mode (pullcache/cluster/, pullcache/server/peers.py): N real daemons on loopback
ports share one origin fetch per blob and per manifest by digest; a failed peer is routed
around; a forged peer request is refused.

The origin is the real registry behind the counting fault proxy; every node lists every
other as a peer and proves itself with the shared token.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from pullcache.cluster import ring
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.http import request
from tests.support.images import build_image, build_raw_blob_image, push
from tests.support.ports import free_port, wait_until

MiB = 1024 * 1024
TOKEN = "cluster-test-token-0123456789"
OCI_M = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = {"Accept": OCI_M}


@pytest.fixture
def cluster(tmp_path, fault_proxy):
    """Start ``n`` nodes in front of the counting fault proxy, each listing all of them."""
    started: list[Pullcache] = []

    def start(n: int, **extra) -> list[Pullcache]:
        ports = [free_port() for _ in range(n)]
        peers = [f"127.0.0.1:{p}" for p in ports]
        nodes = []
        for i, port in enumerate(ports):
            workdir = tmp_path / f"node{i}"
            workdir.mkdir()
            node = Pullcache(workdir, [UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                                    default=True,
                                                    extra={"breaker_failures": 1000})],
                             port=port, cluster={"peers": peers, "token": TOKEN, **extra})
            started.append(node)
            nodes.append(node)
        for node in nodes:
            node.start()
        return nodes
    yield start
    for node in started:
        node.stop()


def pull(node: Pullcache, repo: str, tag: str) -> dict[str, str]:
    """A client's pull: the manifest by tag and by digest, then every blob, each body
    checked against its digest. Returns digest → what it got (``ok`` or the failure)."""
    got = {}
    reply = request(node.url, f"/v2/{repo}/manifests/{tag}", headers=ACCEPT, timeout=60)
    assert reply.status == 200, reply.body
    digest = reply.headers["docker-content-digest"]
    by_digest = request(node.url, f"/v2/{repo}/manifests/{digest}", headers=ACCEPT,
                        timeout=60)
    got[digest] = check(by_digest.status, by_digest.body, digest)
    manifest = by_digest.json()
    for desc in [manifest["config"], *manifest["layers"]]:
        reply = request(node.url, f"/v2/{repo}/blobs/{desc['digest']}", timeout=60)
        got[desc["digest"]] = check(reply.status, reply.body, desc["digest"])
    return got


def check(status: int, body: bytes, digest: str) -> str:
    if status != 200:
        return f"status {status}"
    return "ok" if "sha256:" + hashlib.sha256(body).hexdigest() == digest else "wrong bytes"


def origin_gets(fault_proxy, repo: str, digest: str, kind: str = "blobs") -> int:
    return fault_proxy.count("GET", f"/v2/{repo}/{kind}/{digest}")


def test_four_nodes_eight_clients_each_make_one_origin_get_per_blob_and_manifest(
        cluster, registry, fault_proxy):
    image = build_image("cluster-herd", layer_sizes=(3 * MiB, 2 * MiB, 1 * MiB))
    push(registry, "herd/app", "v1", image)
    nodes = cluster(4)
    fault_proxy.reset_counts()
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda i: pull(nodes[i % 4], "herd/app", "v1"), range(32)))
    wanted = {image.digest: "ok", **{b.digest: "ok" for b in image.blobs()}}
    assert results == [wanted] * 32
    for blob in image.blobs():
        assert origin_gets(fault_proxy, "herd/app", blob.digest) == 1, blob.digest
    assert origin_gets(fault_proxy, "herd/app", image.digest, "manifests") == 1
    # Every non-owner took each blob from a peer; the owner from the origin.
    assert sum(n.metric("pullcache_source_requests_total", source="origin")
               for n in nodes) == len(image.blobs())
    assert sum(n.metric("pullcache_source_requests_total", source="peer")
               for n in nodes) == 3 * len(image.blobs())


def test_a_forged_peer_request_gets_401(cluster, registry):
    image = build_raw_blob_image("cluster-forged", 1 * MiB)
    push(registry, "forged/app", "v1", image)
    node, = cluster(1)
    layer = image.layers[0].digest
    path = f"/_cluster/blobs/{layer}?upstream={node.upstreams[0].host}&repo=forged/app"
    for headers in ({}, {"Pullcache-Peer-Token": "not-the-token-0123456789"}):
        reply = request(node.url, path, headers=headers)
        assert reply.status == 401, reply.body
        assert reply.json()["errors"][0]["code"] == "UNAUTHORIZED"
    reply = request(node.url, path, headers={"Pullcache-Peer-Token": TOKEN})
    assert reply.status == 200
    assert check(reply.status, reply.body, layer) == "ok"
