"""The chaos soak, longer: N clients pull 20 images through pullcache for a fixed time while
a fault proxy injects random upstream faults and the daemon is SIGKILLed every so often. The
clients are skopeo processes and Python clients making the requests of every client class
(dockerd, containerd, containers/image, OCI-only), each with its own Accept list.

    python -m bench.chaos_soak [--seconds 300] [--clients 50] [--kill-every 120] [--rate 0.15]

Prints: pulls completed (and failed, which clients retry) per client class, faults injected
by kind, wrong bytes (must be 0), 500s (must be 0), leaks (must be 0, the peak RSS of every
daemon process under its bound included), peak RSS. Exit status 1 when any of the
must-be-zero figures is not, or a client class completed no pull. Only 127.0.0.1 is
contacted; everything is torn down.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bench._common import add_workdir_flags, header, note, out, temp_workdir
from tests.support.aftermath import aftermath, vitals
from tests.support.chaos import Chaos
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.faultproxy import FaultProxy
from tests.support.registry import start_registry
from tests.support.soak import CLIENT_CLASSES, SOAK_MAX_SIZE, SOAK_UPSTREAM, Soak, \
    build_soak_images, push_soak_images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--skopeo", type=int, default=4, help="how many clients are skopeo")
    ap.add_argument("--kill-every", type=float, default=120,
                    help="SIGKILL and restart the daemon this often (0: never)")
    ap.add_argument("--rate", type=float, default=0.15, help="share of upstream requests faulted")
    ap.add_argument("--seed", type=int, default=13)
    add_workdir_flags(ap, tmpdir=False)
    args = ap.parse_args(argv)
    args.rounds = 1
    # The fault proxy's own server logs every connection a fault cut: noise here.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with temp_workdir("pullcache-chaos-", keep=args.keep) as (tmp, cleanup):
        images = build_soak_images()
        registry = start_registry(tmp / "registry")
        cleanup.append(registry.stop)
        push_soak_images(registry, images)
        proxy = FaultProxy(registry.url).start()
        cleanup.append(proxy.stop)
        (tmp / "pc").mkdir()
        pc = Pullcache(tmp / "pc", [UpstreamSpec(proxy.host, proxy.url, default=True,
                                                  extra=SOAK_UPSTREAM)],
                       {"max_size": SOAK_MAX_SIZE})
        pc.start()
        cleanup.append(pc.stop)
        for line in header(64 << 20, args, nginx=False):
            out(line)
        base = vitals(pc)
        proxy.chaos = chaos = Chaos(seed=args.seed, rate=args.rate)
        pulls, statuses, wrong, restarts, elapsed = {}, {}, 0, 0, 0.0
        killed_peaks: list[int] = []
        # One soak per kill interval: each ends with a SIGKILL and restart mid-load.
        slices = max(1, int(args.seconds // args.kill_every)) if args.kill_every else 1
        for i in range(slices):
            seconds = args.seconds / slices
            note(f"soak {i + 1}/{slices}: {seconds:.0f}s")
            soak = Soak(pc, images, clients=args.clients, skopeo_clients=args.skopeo,
                        seconds=seconds, kill_at=seconds / 2 if args.kill_every else None,
                        seed=args.seed + i, workdir=tmp / "clients")
            result = soak.run()
            for k, v in result.pulls.items():
                pulls[k] = pulls.get(k, 0) + v
            for k, v in result.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
            wrong += len(result.wrong)
            restarts += result.restarts
            killed_peaks += result.killed_rss_peaks_kib
            elapsed += result.seconds
        proxy.chaos = None
        note("aftermath: pull everything once more, verify the cache, wait for baseline")
        after = aftermath(pc, soak, base, killed_peaks_kib=killed_peaks)
        ok = sum(v for k, v in pulls.items() if k.endswith("_ok"))
        failed = sum(v for k, v in pulls.items() if not k.endswith("_ok"))
        faults = chaos.snapshot()
        out(f"soak        {elapsed:.0f} s   clients {args.clients} ({args.skopeo} skopeo)   "
            f"fault rate {args.rate}   SIGKILL+restart {restarts}")
        out(f"pulls       completed {ok}   failed and retried {failed}   "
            f"({', '.join(f'{k} {v}' for k, v in sorted(pulls.items()))})")
        out(f"faults      {sum(faults.values())} injected: "
            + ", ".join(f"{k} {v}" for k, v in faults.items()))
        classes = [k.name for k in CLIENT_CLASSES] + (["skopeo"] if args.skopeo else [])
        out("classes     " + ", ".join(
            f"{name} {pulls.get(name + '_ok', 0)} ok / "
            f"{sum(v for k, v in pulls.items() if k.startswith(name + '_'))}" for name in classes))
        out("statuses    " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
        out(f"wrong bytes {wrong + after.wrong}   (must be 0)")
        out(f"500s        {after.access_500}   (must be 0; access log of every run)")
        out(f"leaks       {len(after.leaks)}   (must be 0) {'; '.join(after.leaks)}")
        out(f"verify      {after.verify.checked} files, {after.verify.bytes >> 20} MiB, "
            f"bad {len(after.verify.bad)}")
        peaks = [kib // 1024 for kib in [*killed_peaks, after.vitals.rss_peak_kib]]
        out(f"peak RSS    {max(peaks)} MiB (each process: {', '.join(map(str, peaks))} MiB)   "
            f"threads {after.vitals.threads}   fds {after.vitals.fds}")
        idle = [name for name in classes if not pulls.get(name + "_ok")]
        return 1 if (wrong or after.problems or idle) else 0


if __name__ == "__main__":
    sys.exit(main())
