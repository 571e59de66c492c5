"""Cluster mode (pullcache/cluster/, pullcache/server/peers.py): N real daemons on loopback
ports share one origin fetch per blob and per manifest by digest; a failed peer is routed
around; a forged peer request is refused.

The origin is the real registry behind the counting fault proxy; every node lists every
other as a peer and proves itself with the shared token.
"""

from __future__ import annotations

import hashlib
import http.client
from concurrent.futures import ThreadPoolExecutor

import pytest

from pullcache.cluster import ring
from tests.integration.test_operator import cli, cli_json
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
    # The tag is resolved per node: one HEAD each for its 8 clients (docs/operations.md,
    # "Cluster mode": why tag revalidation stays per node).
    assert fault_proxy.count("HEAD", "/v2/herd/app/manifests/v1") == 4
    assert fault_proxy.count("GET", "/v2/herd/app/manifests/v1") == 0
    # Every non-owner took each blob from a peer; the owner from the origin.
    def fills(source: str) -> float:
        return sum(n.metric("pullcache_source_requests_total", source=source) for n in nodes)
    wait_until(lambda: fills("origin") + fills("peer") == 4 * len(image.blobs()), 10,
               "every fill counted")
    assert fills("origin") == len(image.blobs())


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
    # A new token takes a restart: a reload that changes [cluster] is refused as a whole.
    node.cluster = {**node.cluster, "token": "another-token-0123456789abcdef"}
    assert node.reload() is False
    assert "need a restart" in node.events("reload_failed")[-1]["error"]
    reply = request(node.url, path, headers={"Pullcache-Peer-Token": TOKEN})
    assert reply.status == 200


def test_a_peer_answering_garbage_is_breaker_opened_and_routed_around(
        cluster, registry, fault_proxy, tmp_path):
    """Node A's only peer is B behind a fault proxy that flips a byte of every blob. A
    streams a peer's bytes to its clients as they arrive, the final byte held back until
    the digest matches: the first client sees a cut, never a complete wrong blob; the
    peer's breaker opens, so the client's retry is served from the origin, and the next
    blob that peer owns is not asked of it at all (docs/operations.md, "Cluster mode")."""
    from tests.support.faultproxy import FaultProxy
    image = build_image("cluster-garbage", layer_sizes=[64 * 1024 + i for i in range(16)])
    push(registry, "garbage/app", "v1", image)
    b, = cluster(1)
    with FaultProxy(b.url) as liar:
        liar.set_fault("corrupt", match="/_cluster/blobs/", at_byte=100)
        port = free_port()
        a = Pullcache(tmp_path / "a", [UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                                    default=True)],
                      port=port, cluster={"peers": [f"127.0.0.1:{port}", liar.host],
                                          "token": TOKEN})
        (tmp_path / "a").mkdir()
        with a:
            members = [f"127.0.0.1:{port}", liar.host]
            theirs = [blob.digest for blob in image.layers
                      if ring.owner(blob.digest, members) == liar.host]
            assert len(theirs) >= 2
            first, second = theirs[:2]
            with pytest.raises(http.client.IncompleteRead):
                request(a.url, f"/v2/garbage/app/blobs/{first}")
            reply = request(a.url, f"/v2/garbage/app/blobs/{first}")    # the retry
            assert check(reply.status, reply.body, first) == "ok"
            assert liar.fault_hits == 1
            assert a.events("digest_mismatch")[0]["source"] == "peer"
            assert a.metric("pullcache_peer_breaker_state", peer=liar.host) == 1   # open
            assert origin_gets(fault_proxy, "garbage/app", first) == 2   # B's, then A's
            reply = request(a.url, f"/v2/garbage/app/blobs/{second}")
            assert check(reply.status, reply.body, second) == "ok"
            assert liar.count("GET", second) == 0      # skipped: its breaker is open
            wait_until(lambda: a.metric("pullcache_source_requests_total",
                                        source="origin") == 2, 10, "both fills counted")
            assert a.metric("pullcache_source_requests_total", source="peer") == 0
            # What the operator sees: the CLI (through the admin API) and the status page.
            shown = cli_json(a, "cluster", "status")
            assert shown["enabled"] and shown["me"] == f"127.0.0.1:{port}"
            liar_shown, = shown["peers"]
            assert liar_shown["address"] == liar.host and liar_shown["breaker"] == "open"
            assert "DigestMismatch" in liar_shown["last_error"]
            assert shown["sources"]["origin"]["requests"] == 2
            text = cli(a, "cluster", "status").stdout
            assert liar.host in text and "open" in text
            page = request(a.admin_url, "/admin/status").json()["cluster"]
            assert page["peers"] == shown["peers"]


def test_the_owner_killed_mid_fill_costs_at_most_one_more_origin_get(
        cluster, registry, fault_proxy):
    """Three nodes; clients on the two non-owners. The owner's origin download stalls
    halfway and the owner is SIGKILLed: every client still gets the right bytes, and the
    origin sees one more GET: the successor's, a Range from where the owner's stream was
    cut (its bytes kept, not fetched again), which the last node joins (by a Range of its
    own to the successor)."""
    image = build_raw_blob_image("cluster-kill", 24 * MiB)
    push(registry, "kill/app", "v1", image)
    nodes = cluster(3)
    layer = image.layers[0].digest
    by_address = {f"127.0.0.1:{n.port}": n for n in nodes}
    owner, successor, last = (by_address[a] for a in ring.ranked(layer, by_address))
    fault_proxy.reset_counts()
    fault_proxy.set_fault("stall", match=f"/blobs/{layer}", at_byte=8 * MiB, times=1)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(request, (successor, last)[i % 2].url,
                               f"/v2/kill/app/blobs/{layer}", timeout=60) for i in range(8)]
        assert fault_proxy.stalled.wait(30)
        wait_until(lambda: all(n.metric("pullcache_fills_in_flight") == 1
                               for n in (successor, last)), 10, "both non-owners filling")
        owner.kill()
        fault_proxy.clear_fault()
        replies = [f.result() for f in futures]
    assert [check(r.status, r.body, layer) for r in replies] == ["ok"] * 8
    assert origin_gets(fault_proxy, "kill/app", layer) == 2
    first, then = fault_proxy.ranges("GET", f"/blobs/{layer}")
    assert first is None and then is not None and then.startswith("bytes="), then
    joined, = [e for e in successor.events("fill_resumed") if e["source"] != "peer"]
    assert 0 < joined["offset"] <= 8 * MiB and then == f"bytes={joined['offset']}-"
    asked, = last.events("fill_resumed")
    assert asked["source"] == "peer" and 0 < asked["offset"] <= 8 * MiB


def test_peers_prove_themselves_by_mtls_on_a_listener_of_their_own(
        cluster, registry, fault_proxy, tmp_path):
    """No token: the peer listener's mTLS is the proof. A member's request is served (the
    blob comes from its owner); one without a client certificate gets 401, and the public
    listener has no peer routes."""
    from tests.support.tls import CA
    ca = CA(tmp_path)
    image = build_image("cluster-mtls", layer_sizes=[64 * 1024 + i for i in range(8)])
    push(registry, "mtls/app", "v1", image)
    peer_ports = [free_port(), free_port()]
    members = [f"127.0.0.1:{p}" for p in peer_ports]
    nodes = []
    for i, port in enumerate(peer_ports):
        member = ca.issue(f"member{i}", client=True)
        node = Pullcache(tmp_path / f"m{i}", [UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                                          default=True)],
                         cluster={"peers": members, "listen": members[i],
                                  "tls_cert": str(member.cert), "tls_key": str(member.key),
                                  "tls_ca": str(ca.cert)})
        node.workdir.mkdir()
        nodes.append(node.start())
    try:
        a = nodes[0]
        theirs = next(b.digest for b in image.layers if ring.owner(b.digest, members)
                      == members[1])
        reply = request(a.url, f"/v2/mtls/app/blobs/{theirs}")
        assert check(reply.status, reply.body, theirs) == "ok"
        wait_until(lambda: a.metric("pullcache_source_requests_total", source="peer") == 1,
                   10, "the fill from the peer counted")
        path = f"/_cluster/blobs/{theirs}?upstream={fault_proxy.host}&repo=mtls/app"
        anonymous = ca.client_context()
        anonymous.check_hostname = False
        reply = request(f"https://{members[1]}", path, context=anonymous)
        assert reply.status == 401, reply.body
        assert request(nodes[1].url, path).status == 404   # not on the public listener
    finally:
        for node in nodes:
            node.stop()


def test_a_peer_slow_to_answer_is_skipped_after_peer_timeout(
        cluster, registry, fault_proxy, tmp_path):
    """A's only peer never answers (a blackhole): after ``peer_timeout`` A takes the blob
    from the origin, and the peer's breaker is open."""
    import time
    from tests.support.faultproxy import FaultProxy
    image = build_image("cluster-slow", layer_sizes=[32 * 1024 + i for i in range(16)])
    push(registry, "slow/app", "v1", image)
    b, = cluster(1)
    with FaultProxy(b.url) as hole:
        hole.set_fault("blackhole", match="/_cluster/")
        port = free_port()
        a = Pullcache(tmp_path / "a", [UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                                    default=True)],
                      port=port, cluster={"peers": [f"127.0.0.1:{port}", hole.host],
                                          "token": TOKEN, "peer_timeout": "1s"})
        (tmp_path / "a").mkdir()
        with a:
            members = [f"127.0.0.1:{port}", hole.host]
            theirs = next(blob.digest for blob in image.layers
                          if ring.owner(blob.digest, members) == hole.host)
            began = time.monotonic()
            reply = request(a.url, f"/v2/slow/app/blobs/{theirs}")
            took = time.monotonic() - began
            assert check(reply.status, reply.body, theirs) == "ok"
            assert 1.0 <= took < 10, took
            assert a.metric("pullcache_peer_breaker_state", peer=hole.host) == 1
            peer, = cli_json(a, "cluster", "status")["peers"]
            assert "UpstreamTimeout" in peer["last_error"]
            hole.clear_fault()


def test_a_peer_request_is_never_forwarded_to_the_peers(cluster, registry, fault_proxy):
    """A peer asks node A for a blob that A's ring gives to B: A fetches it from the origin
    itself rather than ask B (no loops), and links it to the repository asked for."""
    image = build_image("cluster-loop", layer_sizes=[32 * 1024 + i for i in range(8)])
    push(registry, "loop/app", "v1", image)
    a, b = cluster(2)
    members = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    bs = next(blob.digest for blob in image.layers if ring.owner(blob.digest, members)
              == members[1])
    fault_proxy.reset_counts()
    reply = request(a.url, f"/_cluster/blobs/{bs}?upstream={fault_proxy.host}&repo=loop/app",
                    headers={"Pullcache-Peer-Token": TOKEN})
    assert check(reply.status, reply.body, bs) == "ok"
    assert origin_gets(fault_proxy, "loop/app", bs) == 1
    def peer_requests(node: Pullcache) -> list[dict]:
        return [e for e in node.events("request") if e["path"].startswith("/_cluster/")]
    wait_until(lambda: len(peer_requests(a)) == 1, 10, "A's access line")
    assert peer_requests(b) == []
    # A client of A is then served from A's cache, linked to that repository: no new GET.
    reply = request(a.url, f"/v2/loop/app/blobs/{bs}")
    assert check(reply.status, reply.body, bs) == "ok"
    assert origin_gets(fault_proxy, "loop/app", bs) == 1
