"""``pullcache warm`` against a direct pull, and what a pull costs after a warm.

    python -m bench.warm [--layers 6] [--layer-mib 32] [--rounds 3]

One docker-registry holds one image of ``--layers`` layers of ``--layer-mib`` random bytes
each. Each round, from an empty cache:

* direct: ``skopeo copy docker://<upstream>/… oci:<dir>`` (the peer: no cache at all);
* warm:   ``pullcache warm <upstream>/…`` (the daemon fetches and verifies every blob); the
          command's wall time (Python start-up and polling included) and the daemon's own
          time for the image, from ``--json``;
* pull:   ``skopeo copy`` of the same image through pullcache, after the warm; the
          upstream blob GETs it caused are counted by a FaultProxy (must be 0).

The upstream is the FaultProxy in front of the registry for every path, the direct pull
included, so that all three pay the same upstream.

Prints wall times (best and median over rounds) and ratios to the direct pull. Only
127.0.0.1 is contacted; everything started is stopped and every file removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench._common import (MiB, add_workdir_flags, best_median, counted_origin, fresh_cache,
                           header, must_be_zero, note, out, temp_workdir, versus)
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.images import build_image, push

REPO = "bench/warm"


def timed(cmd: list[str], what: str) -> tuple[float, str]:
    began = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {proc.stdout[-500:]}{proc.stderr[-1000:]}")
    return time.monotonic() - began, proc.stdout


def skopeo(source: str, dest: Path) -> list[str]:
    shutil.rmtree(dest, ignore_errors=True)
    return ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
            f"docker://{source}", f"oci:{dest}:x"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--layer-mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    add_workdir_flags(parser, tmpdir=False)
    args = parser.parse_args(argv)
    args.clients = 1
    with temp_workdir("pullcache-bench-warm-", keep=args.keep) as (tmp, cleanup):
        registry, proxy = counted_origin(tmp, cleanup)
        size = args.layer_mib * MiB
        image = build_image("bench-warm", layer_sizes=[size] * args.layers)
        push(registry, REPO, "v1", image)
        total = sum(b.size for b in image.blobs())
        (tmp / "pc").mkdir()
        pc = Pullcache(tmp / "pc", [UpstreamSpec(proxy.host, proxy.url, default=True)],
                       {"max_size": "8GiB"})
        pc.start()
        cleanup.append(pc.stop)
        for line in header(total, args, nginx=False):
            out(line)
        warm_cmd = [sys.executable, "-m", "pullcache", "warm", "--json", "--config",
                    str(pc.workdir / "pullcache.toml"), f"{proxy.host}/{REPO}:v1"]
        direct, warm, daemon, pull, gets = [], [], [], [], []
        for n in range(args.rounds):
            note(f"round {n + 1}/{args.rounds}")
            fresh_cache(pc)
            direct.append(timed(skopeo(f"{proxy.host}/{REPO}:v1", tmp / "direct"),
                                "direct skopeo copy")[0])
            seconds, stdout = timed(warm_cmd, "pullcache warm")
            warm.append(seconds)
            daemon.append(json.loads(stdout)["images"][0]["seconds"])
            proxy.reset_counts()
            pull.append(timed(skopeo(f"{pc.host}/{REPO}:v1", tmp / "through"),
                              "skopeo copy through pullcache")[0])
            gets.append(proxy.count("GET", "/blobs/"))
        d_best, d_med = best_median(direct, higher_is_better=False)
        out(f"{'direct pull':<22} best {d_best:6.2f} s  median {d_med:6.2f} s")
        for name, values in (("warm (command)", warm), ("warm (in the daemon)", daemon),
                             ("pull after warm", pull)):
            best, med = best_median(values, higher_is_better=False)
            out(f"{name:<22} best {best:6.2f} s  median {med:6.2f} s   "
                f"vs direct pull: {versus(best, med, d_best, d_med)}")
        return must_be_zero("upstream blob GETs during the pulls after a warm", gets)


if __name__ == "__main__":
    sys.exit(main())
