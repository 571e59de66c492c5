"""A cold pull of one big blob on node B from the S3 tier, beside the same pull from the origin.

    python -m bench.s3_tier [--size-mib 512] [--rounds 3] [--part-mib 8]

The origin is a docker-registry (behind a counting FaultProxy); the store is moto's S3 server
in a process of its own. Node A pulls the blob once, and its write-behind puts it into the
bucket (multipart). Then, each round, from empty caches:

* tier:   node B (S3 tier enabled) GETs the blob with curl: a HEAD of its link, a streaming
          GetObject verified by the fill (the origin's blob GETs are counted: must be 0);
* origin: node C (no tier) GETs the same blob from the origin.

Prints MB/s (best and median) and the ratio tier / origin. moto is a Python server, so the
tier's figure is moto's speed as much as pullcache's: a real store (S3, MinIO) is faster.
Only 127.0.0.1 is contacted; everything started is stopped and every file removed at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench._common import (MiB, add_workdir_flags, best_median, counted_origin, curl_get,
                           fresh_cache, header, must_be_zero, note, out, temp_workdir, versus)
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.ecr import AWS_ENV
from tests.support.images import build_raw_blob_image, push
from tests.support.ports import free_port, wait_until
from tests.support.s3 import S3Store, s3_config

REPO = "bench/s3"


def start_moto(tmp) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(tmp / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **AWS_ENV})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            S3Store(url, "probe").client().list_buckets()
        except Exception:  # noqa: BLE001 - not listening yet
            return False
        return True
    wait_until(up, 30, "moto's S3 server")
    return proc, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part-mib", type=int, default=8)
    add_workdir_flags(parser)
    args = parser.parse_args(argv)
    args.clients = 1
    with temp_workdir("pullcache-bench-s3-", tmpdir=args.tmpdir, keep=args.keep) as (tmp,
                                                                                    cleanup):
        registry, origin = counted_origin(tmp, cleanup)
        moto, url = start_moto(tmp)
        cleanup.append(lambda: (moto.terminate(), moto.wait(10)))
        store = S3Store(url, "bench-pullcache").create()
        size = args.size_mib * MiB
        note(f"building and pushing a {args.size_mib} MiB blob")
        image = build_raw_blob_image("bench-s3", size)
        push(registry, REPO, "v1", image)
        blob = image.layers[0]
        budget = {"max_size": f"{max(4 * args.size_mib, 1024)}MiB"}
        backing = s3_config(url, store.bucket, part_size=f"{args.part_mib}MiB",
                            header_timeout="30s", drain_timeout="60s")
        nodes = {}
        for name, tier in (("a", True), ("b", True), ("c", False)):
            (tmp / name).mkdir()
            pc = Pullcache(tmp / name, [UpstreamSpec(origin.host, origin.url, default=True)],
                           dict(budget), backing=backing if tier else {}, tier="s3",
                           env=AWS_ENV)
            pc.start()
            cleanup.append(pc.stop)
            nodes[name] = pc
        for line in header(size, args, nginx=False):
            out(line)
        url_of = {n: f"{pc.url}/v2/{REPO}/blobs/{blob.digest}" for n, pc in nodes.items()}
        note("node A pulls the blob and writes it to the bucket")
        curl_get(url_of["a"], size, "node A")
        key = f"pullcache/blobs/sha256/{blob.digest.partition(':')[2]}"
        began = time.monotonic()
        wait_until(lambda: key in store.keys("pullcache/blobs/") and
                   nodes["a"].metric("pullcache_tier_write_queue") == 0, 600,
                   "the blob in the bucket")
        out(f"write-behind   {args.size_mib} MiB into the bucket in "
            f"{time.monotonic() - began:.1f} s (parts of {args.part_mib} MiB)")
        tier, direct, gets = [], [], []
        for n in range(args.rounds):
            note(f"round {n + 1}/{args.rounds}")
            fresh_cache(nodes["b"])
            fresh_cache(nodes["c"])
            origin.reset_counts()
            tier.append(curl_get(url_of["b"], size, "node B from the tier").mbps)
            gets.append(origin.count("GET", "/blobs/"))
            direct.append(curl_get(url_of["c"], size, "node C from the origin").mbps)
        t_best, t_med = best_median(tier, higher_is_better=True)
        d_best, d_med = best_median(direct, higher_is_better=True)
        out(f"{'origin (no tier)':<18} best {d_best:7.1f} MB/s  median {d_med:7.1f} MB/s")
        out(f"{'S3 tier (moto)':<18} best {t_best:7.1f} MB/s  median {t_med:7.1f} MB/s   "
            f"tier/origin {versus(t_best, t_med, d_best, d_med)}")
        return must_be_zero("origin blob GETs during node B's pulls", gets)


if __name__ == "__main__":
    sys.exit(main())
