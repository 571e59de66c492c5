"""Cluster mode: 4 nodes on this machine pull the same cold layer at once.

    python -m bench.cluster [--size-mib 512] [--nodes 4] [--rounds 1]

One docker-registry (behind the counting FaultProxy) holds one image whose only layer is
``--size-mib`` of random bytes. Each round, every node's cache emptied first:

* one node:     a single node (cluster mode off), one client: the cold pull to compare with;
* cluster on:   ``--nodes`` nodes listing each other as peers, one client on each, all at once;
* cluster off:  the same nodes without ``[cluster]``, one client on each, all at once.

Each client is ``curl | openssl dgst -sha256`` (bench/_common.py); a body with the wrong
sha256 fails the run. Printed per mode: the wall time (first launch to last curl exit), its
ratio to one node's cold pull (goal for cluster on: <= 1.5), and origin bytes / blob size
(the bytes every node fetched from the origin, from ``pullcache_upstream_fetched_bytes``;
goal for cluster on: 1.0, expected for cluster off: the number of nodes).
Only 127.0.0.1 is contacted; everything started is stopped and every file removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from bench._common import (MiB, HashingClient, add_workdir_flags, best_median, counted_origin,
                           header, note, out, temp_workdir)
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.images import build_raw_blob_image, push
from tests.support.ports import free_port

REPO = "bench/cluster"
TOKEN = "bench-cluster-token-0123456789"


def pull_all(nodes: list[Pullcache], digest: str, size: int) -> float:
    """One hashing client per node, all at once; the wall time. Raises on a bad body."""
    import time
    began = time.monotonic()
    clients = [HashingClient(f"{n.url}/v2/{REPO}/blobs/{digest}") for n in nodes]
    try:
        for client in clients:
            client.wait_curl(began + 600)
        wall = time.monotonic() - began
        for client in clients:
            got, hexdigest, error = client.result(size)
            if error or f"sha256:{hexdigest}" != digest:
                raise RuntimeError(f"a client failed: {error or 'wrong sha256'}")
        return wall
    finally:
        for client in clients:
            client.kill()


def restart(nodes: list[Pullcache], cluster: dict) -> None:
    """Every node stopped, its cache emptied, and started again with ``cluster``."""
    for node in nodes:
        node.stop()
        shutil.rmtree(node.cache_dir, ignore_errors=True)
        node.cluster = dict(cluster)
    for node in nodes:
        node.start()


def origin_bytes(nodes: list[Pullcache], upstream: str) -> float:
    return sum(n.metric("pullcache_upstream_fetched_bytes_total", upstream=upstream)
               for n in nodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    add_workdir_flags(parser)
    args = parser.parse_args(argv)
    args.clients = args.nodes
    with temp_workdir("pullcache-bench-cluster-", tmpdir=args.tmpdir, keep=args.keep) \
            as (tmp, cleanup):
        registry, proxy = counted_origin(tmp, cleanup)
        size = args.size_mib * MiB
        image = build_raw_blob_image("bench-cluster", size)
        push(registry, REPO, "v1", image)
        digest = image.layers[0].digest
        ports = [free_port() for _ in range(args.nodes)]
        peers = [f"127.0.0.1:{p}" for p in ports]
        nodes = []
        for i, port in enumerate(ports):
            (tmp / f"node{i}").mkdir()
            nodes.append(Pullcache(tmp / f"node{i}", [UpstreamSpec(proxy.host, proxy.url,
                                                                   default=True)],
                                   {"max_size": f"{2 * args.size_mib + 64}MiB"}, port=port))
            cleanup.append(nodes[-1].stop)
        for line in header(size, args, nginx=False):
            out(line)
        results: dict[str, list[tuple[float, float]]] = {"one node": [], "cluster on": [],
                                                         "cluster off": []}
        for n in range(args.rounds):
            note(f"round {n + 1}/{args.rounds}: one node")
            restart(nodes[:1], {})
            results["one node"].append((pull_all(nodes[:1], digest, size),
                                        origin_bytes(nodes[:1], proxy.host) / size))
            nodes[0].stop()
            note(f"round {n + 1}/{args.rounds}: cluster on")
            restart(nodes, {"peers": peers, "token": TOKEN})
            results["cluster on"].append((pull_all(nodes, digest, size),
                                          origin_bytes(nodes, proxy.host) / size))
            note(f"round {n + 1}/{args.rounds}: cluster off")
            restart(nodes, {})
            results["cluster off"].append((pull_all(nodes, digest, size),
                                           origin_bytes(nodes, proxy.host) / size))
        one, _ = best_median([w for w, _ in results["one node"]], higher_is_better=False)
        for mode, runs in results.items():
            best, med = best_median([w for w, _ in runs], higher_is_better=False)
            ratio = max(r for _, r in runs)
            clients = 1 if mode == "one node" else args.nodes
            out(f"{mode:<12} {clients} client(s)  wall best {best:6.2f} s  median {med:6.2f} s"
                f"   vs one node x{best / one:.2f}   origin bytes / blob size {ratio:.2f}")
        on = max(r for _, r in results["cluster on"])
        return 0 if on <= 1.0 + 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
