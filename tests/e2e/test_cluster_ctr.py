"""Cluster mode under real containerd: two nodes, each with its own containerd whose
hosts.toml mirrors through that node's pullcache, pull one image at the same moment; the
origin (the real registry behind the counting fault proxy) serves each layer once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.support.clients import Containerd
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.images import build_image, push
from tests.support.ports import free_port, wait_until

MiB = 1024 * 1024
TOKEN = "cluster-e2e-token-0123456789"


def test_two_ctr_clients_on_two_nodes_make_one_origin_get_per_layer(
        tmp_path, registry, fault_proxy):
    image = build_image("cluster-ctr", layer_sizes=(4 * MiB, 2 * MiB, 1 * MiB))
    push(registry, "library/clustered", "v1", image)
    ports = [free_port(), free_port()]
    peers = [f"127.0.0.1:{p}" for p in ports]
    nodes, runtimes = [], []
    try:
        for i, port in enumerate(ports):
            (tmp_path / f"node{i}").mkdir()
            nodes.append(Pullcache(tmp_path / f"node{i}", [UpstreamSpec(
                "docker.io", fault_proxy.url, default=True,
                extra={"aliases": ["index.docker.io", "registry-1.docker.io"]})],
                port=port, cluster={"peers": peers, "token": TOKEN}).start())
            (tmp_path / f"containerd{i}").mkdir()
            runtimes.append(Containerd(tmp_path / f"containerd{i}").start())
        fault_proxy.reset_counts()
        ref = "docker.io/library/clustered:v1"

        def pull(i: int) -> str:
            hosts = runtimes[i].hosts_dir("hosts", nodes[i].host)
            runtimes[i].ctr("images", "pull", "--hosts-dir", str(hosts), "--snapshotter",
                            "native", ref)
            return runtimes[i].image_digest(ref)

        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(pull, range(2))) == [image.digest] * 2
        for blob in image.blobs():
            assert fault_proxy.count("GET", f"/blobs/{blob.digest}") == 1, blob.digest
        assert fault_proxy.count("GET", f"/manifests/{image.digest}") == 1
        # Each blob: its owner filled from the origin, the other node from the owner.
        wait_until(lambda: sum(n.metric("pullcache_source_requests_total", source="peer")
                               for n in nodes) == len(image.blobs()), 10, "peer fills")
    finally:
        for runtime in runtimes:
            runtime.stop()
        for node in nodes:
            node.stop()
