"""Cold small blobs, one after another: the time to pullcache's response headers, to the first
byte of the body, and to the last, beside a direct GET of the same blob from the registry.

    python -m bench.small_blobs [--blobs 9] [--size-mib 16]

Most image layers are small, so a cold pull is mostly what comes before and after a blob's
bytes: the upstream's answer, the fill's set-up, the digest's last chunk. One registry holding
``--blobs`` one-layer images of ``--size-mib`` random bytes each; pullcache with that registry
as its only upstream. The first blob warms pullcache up (the connection to the registry, the
threads); then each other blob is fetched cold through pullcache, then directly, 0.1 s apart.
The client is ``http.client`` in this process (headers: ``getresponse``; first body byte: the
first ``read1``). Medians of the blobs. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import time
from urllib.parse import urlsplit

from bench._common import (REPO, MiB, add_workdir_flags, blob_url, fresh_cache, header, out,
                           temp_workdir)
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.images import build_raw_blob_image, push
from tests.support.registry import start_registry


def timed_get(url: str, size: int) -> tuple[float, float, float]:
    """(headers, first body byte, last byte) in ms from the request's start."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        began = time.perf_counter()
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        headers = time.perf_counter()
        got = len(resp.read1(1))
        first = time.perf_counter()
        while chunk := resp.read1(MiB):
            got += len(chunk)
        last = time.perf_counter()
    finally:
        conn.close()
    if resp.status != 200 or got != size:
        raise RuntimeError(f"{url}: HTTP {resp.status}, {got} of {size} bytes")
    return tuple((t - began) * 1000 for t in (headers, first, last))  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    size = args.size_mib * MiB
    for line in header(size, argparse.Namespace(rounds=args.blobs - 1, clients=1),
                       nginx=False):
        out(line)
    with temp_workdir("pullcache-small-", tmpdir=args.tmpdir, keep=args.keep) as (tmp, cleanup):
        registry = start_registry(tmp / "registry")
        cleanup.append(registry.stop)
        digests = []
        for n in range(args.blobs):
            image = build_raw_blob_image(f"small-{n}-{args.size_mib}", size)
            push(registry, REPO, f"t{n}", image)
            digests.append(image.layers[0].digest)
        (tmp / "pullcache").mkdir()
        pc = Pullcache(tmp / "pullcache", [UpstreamSpec(registry.host, registry.url,
                                                        default=True)])
        cleanup.append(pc.stop)
        pc.write_config()
        fresh_cache(pc)
        timed_get(blob_url(pc.url, digests[0]), size)       # warm-up
        through, direct = [], []
        for digest in digests[1:]:
            through.append(timed_get(blob_url(pc.url, digest), size))
            time.sleep(0.1)
            direct.append(timed_get(blob_url(registry.url, digest), size))
            time.sleep(0.1)

    def median(runs: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(r[i] for r in runs)
    out(f"cold {args.size_mib} MiB x{len(through)}   pullcache: headers {median(through, 0):.1f} ms"
        f"   first body byte {median(through, 1):.1f} ms   last {median(through, 2):.1f} ms"
        f"   |   direct: headers {median(direct, 0):.1f} ms   first body byte "
        f"{median(direct, 1):.1f} ms   last {median(direct, 2):.1f} ms   |   last byte ratio "
        f"{median(through, 2) / median(direct, 2):.2f}   (medians)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.small_blobs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=9)
    parser.add_argument("--size-mib", type=int, default=16)
    add_workdir_flags(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
