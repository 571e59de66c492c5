"""Cluster mode with the ECR backing tier (moto, offline): a non-owner asks the owner before
the tier; only the node that fetched from the origin writes back, so the tier gets each blob
once and the origin serves each blob once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.ecr import AWS_ENV, backing_config
from tests.support.ecr_fleet import *  # noqa: F401,F403 - the fixtures
from tests.support.ecr_fleet import pull, wait_written
from tests.support.images import build_image, push
from tests.support.ports import free_port, wait_until

TOKEN = "cluster-tier-token-0123456789"


def start_nodes(nodes: list[Pullcache], tmp_path, origin, aws, ecr_front,
                **cluster) -> list[str]:
    """Two nodes listing each other, with the tier, appended to ``nodes`` as they start
    (the caller stops them); their addresses."""
    ports = [free_port(), free_port()]
    peers = [f"127.0.0.1:{p}" for p in ports]
    for i, port in enumerate(ports):
        (tmp_path / f"n{i}").mkdir()
        nodes.append(Pullcache(
            tmp_path / f"n{i}", [UpstreamSpec(origin.host, origin.url, default=True)],
            backing=backing_config(aws, ecr_front.url, write_retries=3), env=AWS_ENV,
            port=port, cluster={"peers": peers, "token": TOKEN, **cluster}).start())
    return peers


def test_two_nodes_with_a_tier_fetch_and_write_back_each_blob_once(
        tmp_path, origin, registry, aws, ecr_front):
    image = build_image("cluster-tier", layer_sizes=(300_000, 200_000, 100_000))
    push(registry, "ctier/app", "v1", image)
    nodes: list[Pullcache] = []
    try:
        start_nodes(nodes, tmp_path, origin, aws, ecr_front)
        origin.reset_counts()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: pull(nodes[i % 2], "ctier/app", "v1", image), range(4)))
        for blob in image.blobs():
            assert origin.count("GET", f"/blobs/{blob.digest}") == 1, blob.digest
        blobs = len(image.blobs())

        def fills(source: str) -> float:
            return sum(n.metric("pullcache_source_requests_total", source=source)
                       for n in nodes)
        wait_until(lambda: fills("origin") + fills("peer") == 2 * blobs, 30, "fills counted")
        assert fills("origin") == blobs and fills("tier") == 0
        # The owner of each blob wrote it back; the node that took it from a peer did not.
        def written() -> float:
            return sum(n.metric("pullcache_tier_writes_total", kind="blob") for n in nodes)
        wait_until(lambda: written() >= blobs, 60, "the blobs written back")
        for node in nodes:
            wait_written(node, 0)   # nothing left queued anywhere
        assert written() == blobs
    finally:
        for node in nodes:
            node.stop()


def test_an_owner_reading_a_slow_tier_answers_its_peer_at_once(
        tmp_path, origin, registry, aws, ecr_front):
    """The owner's tier download takes longer than ``peer_timeout`` (its first bytes come at
    once, then it stalls): the owner answers its peer with the headers and the bytes as
    they come, not after verifying the whole copy, so the asking node's breaker stays
    closed, it takes the blob from the owner, and the origin is never asked."""
    import time
    from tests.support.http import request
    from tests.support.images import build_raw_blob_image
    from pullcache.cluster import ring
    image = build_raw_blob_image("cluster-slow-tier", 4 * 1024 * 1024)
    push(registry, "cslow/app", "v1", image)
    layer = image.layers[0].digest
    (tmp_path / "seed").mkdir()
    seed = Pullcache(tmp_path / "seed", [UpstreamSpec(origin.host, origin.url, default=True)],
                     backing=backing_config(aws, ecr_front.url, write_retries=3),
                     env=AWS_ENV).start()
    try:   # the blob in the tier, in neither node's cache
        assert request(seed.url, f"/v2/cslow/app/blobs/{layer}").sha256 == layer
        wait_written(seed, 1)
    finally:
        seed.stop()
    nodes: list[Pullcache] = []
    try:
        peers = start_nodes(nodes, tmp_path, origin, aws, ecr_front, peer_timeout="1s")
        owner = peers.index(ring.owner(layer, peers))
        asking = nodes[1 - owner]
        origin.reset_counts()
        ecr_front.set_fault("stall", match=f"/blobs/{layer}", method="GET",
                            at_byte=1024 * 1024, times=1)
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(request, asking.url, f"/v2/cslow/app/blobs/{layer}",
                                timeout=60)
            assert ecr_front.stalled.wait(30)
            time.sleep(2)    # the duration under test: the tier's copy outlasts peer_timeout
            ecr_front.release()
            assert reply.result().sha256 == layer
        assert asking.metric("pullcache_peer_breaker_state", peer=peers[owner]) == 0
        wait_until(lambda: asking.metric("pullcache_source_requests_total",
                                         source="peer") == 1, 10, "the fill counted")
        assert origin.count("GET", f"/blobs/{layer}") == 0
    finally:
        for node in nodes:
            node.stop()
