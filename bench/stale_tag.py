"""Pull time of a cached image once its tag is past tag_ttl and the upstream is blackholed
(a port that accepts and never answers), against a warm pull; stale-while-revalidate on and
off.

    python -m bench.stale_tag [--size-mib 64] [--rounds 3]

One line per setting: the median warm pull, the median first pull after the TTL, and their
ratio (target with SWR on: <= 1.2x). With SWR off the first pull waits revalidate_timeout.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

from bench._common import add_workdir_flags, header, note, out, temp_workdir
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.faultproxy import FaultProxy
from tests.support.images import build_raw_blob_image, push
from tests.support.ports import wait_until
from tests.support.registry import start_registry
from tests.support.soak import Soak

TTL = 1.0


def timed_pull(soak: Soak) -> float:
    began = time.perf_counter()
    verdict, detail = soak._pull(soak.images[0])
    if verdict != "ok":
        raise RuntimeError(f"pull failed: {verdict} {detail}")
    return time.perf_counter() - began


def measure(pc: Pullcache, proxy: FaultProxy, soak: Soak, rounds: int) -> tuple[float, float]:
    """Each round starts from a closed breaker (cooldown 1 s, then a good pull), so every
    "first pull after the TTL" meets the blackhole, not a breaker the last round opened."""
    warm, first = [], []
    for _ in range(rounds):
        proxy.clear_fault()
        began = time.time()
        wait_until(lambda: time.time() > began + 1.1, timeout=10)   # breaker_cooldown
        timed_pull(soak)                       # refreshes the tag record
        cached_at = time.time()
        warm.append(timed_pull(soak))
        proxy.set_fault("blackhole", match="/manifests/")
        wait_until(lambda: time.time() > cached_at + TTL + 0.1, timeout=10)
        first.append(timed_pull(soak))
    proxy.clear_fault()
    return statistics.median(warm), statistics.median(first)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    add_workdir_flags(ap, tmpdir=False)
    args = ap.parse_args(argv)
    args.clients = 1
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with temp_workdir("pullcache-stale-", keep=args.keep) as (tmp, cleanup):
        image = build_raw_blob_image("stale-bench", args.size_mib << 20)
        registry = start_registry(tmp / "registry")
        cleanup.append(registry.stop)
        for line in header(args.size_mib << 20, args, nginx=False):
            out(line)
        for swr in ("1h", "0s"):
            proxy = FaultProxy(registry.url).start()
            cleanup.append(proxy.stop)
            workdir = tmp / f"pc-{swr}"
            workdir.mkdir()
            pc = Pullcache(workdir, [UpstreamSpec(proxy.host, proxy.url, default=True, extra={
                "tag_ttl": f"{TTL:g}s", "revalidate_timeout": "3s", "breaker_cooldown": "1s",
                "stale_while_revalidate": swr})])
            pc.start()
            cleanup.append(pc.stop)
            push(registry, "soak/app", "t0", image)
            soak = Soak(pc, [image], clients=1, skopeo_clients=0, seconds=0)
            note(f"stale_while_revalidate = {swr}: {args.rounds} rounds")
            warm, first = measure(pc, proxy, soak, args.rounds)
            label = "on " if swr != "0s" else "off"
            out(f"swr {label}  warm pull {warm:.3f} s   first pull after TTL, upstream "
                f"blackholed {first:.3f} s   ratio {first / warm:.2f}x"
                + ("   (target <= 1.2x)" if swr != "0s" else "   (waits revalidate_timeout 3s)"))
        return 0


if __name__ == "__main__":
    sys.exit(main())
