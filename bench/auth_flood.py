"""Good clients beside a password-guessing flood: do cached pulls keep their pace?

One pullcache daemon (htpasswd with bcrypt cost 10, ~60-100 ms a check) in front of a real
registry, one manifest cached. Two phases of ``--seconds`` each:

* ``quiet``:  wrk, ``--connections`` (64) keep-alive connections of cached-manifest GETs by
  digest with good credentials (remembered verdicts: no bcrypt on their path);
* ``flood``:  the same, while ``--attackers`` (50) clients, in a process of their own, send
  GETs with a wrong password each time (every one a bcrypt check: ``max_failures`` is set
  out of reach, as for a flood from many addresses).

Prints the good clients' rate and p99 in each phase, the ratio, and the goals (ratio >= 0.70,
p99 under the flood <= 50 ms); exit status 1 when a goal is missed. Only 127.0.0.1 is used.

    .venv/bin/python -m bench.auth_flood --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import time

import aiohttp
import bcrypt

from bench._common import add_workdir_flags, out, temp_workdir
from bench.manifests import Wrk, wrk
from tests.support.daemon import ROOT, Pullcache, UpstreamSpec
from tests.support.images import build_image, push
from tests.support.registry import start_registry

OCI_M = "application/vnd.oci.image.manifest.v1+json"
GOAL_RATIO, GOAL_P99 = 0.70, 0.050


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _attack(url: str, attackers: int, seconds: float) -> None:
    """``attackers`` clients, each a wrong password per request, until ``seconds`` pass."""
    end = time.perf_counter() + seconds
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=attackers)) as s:
        async def attacker(n: int) -> None:
            guess = 0
            while time.perf_counter() < end:
                guess += 1
                async with s.get(url, headers={"Authorization": _basic("bench",
                                                                       f"guess-{n}-{guess}")}) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
        await asyncio.gather(*(attacker(n) for n in range(attackers)))
    print(" ".join(f"{status}:{count}" for status, count in sorted(statuses.items())))


def run(args: argparse.Namespace) -> int:
    with temp_workdir("pc-bench-auth-", tmpdir=args.tmpdir, keep=args.keep) as (tmp, cleanup):
        with start_registry(tmp / "registry") as registry:
            image = build_image("bench-auth")
            push(registry, "library/bench", "v1", image)
            hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=10)).decode()
            (tmp / "htpasswd").write_text(f"bench:{hashed}\n")
            (tmp / "pc").mkdir()
            pc = Pullcache(tmp / "pc", [UpstreamSpec("docker.io", registry.url, default=True)],
                           access={"htpasswd": tmp / "htpasswd", "max_failures": 1_000_000},
                           server={"access_log": False})
            cleanup.append(pc.stop)
            pc.start()
            try:
                url = f"{pc.url}/v2/library/bench/manifests/{image.digest}"
                good = {"Authorization": _basic("bench", "secret"), "Accept": OCI_M}

                def measure(seconds: int) -> Wrk:
                    return wrk(url, threads=1, connections=args.connections, duration=seconds,
                               headers=good, script_dir=tmp)
                measure(1)   # cached, and the good verdict remembered
                quiet = measure(args.seconds)
                flood = subprocess.Popen(
                    [sys.executable, "-m", "bench.auth_flood", "--attack", url,
                     "--attackers", str(args.attackers), "--seconds", str(args.seconds + 2)],
                    cwd=ROOT, stdout=subprocess.PIPE, text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)})
                cleanup.append(flood.kill)
                time.sleep(1.0)   # the flood under way (bcrypt busy) before the measure
                loud = measure(args.seconds)
                attack_statuses = flood.communicate(timeout=args.seconds + 30)[0].strip()
                failed_logins = len(pc.events("login_failed"))
            finally:
                pc.stop()
    ratio = loud.rate / quiet.rate
    out(f"machine   {os.cpu_count()} cpus, bcrypt cost 10, {args.connections} good connections "
        f"(wrk, 1 thread), {args.attackers} attackers, {args.seconds} s a phase")
    for name, got in (("quiet", quiet), ("flood", loud)):
        out(f"{name:<9} {got.rate:8.0f} req/s   p50 {got.p50 * 1000:5.1f} ms   "
            f"p99 {got.p99 * 1000:5.1f} ms   errors {got.errors}   non-2xx {got.non_2xx}")
    out(f"attack    answers {attack_statuses}   login_failed logged {failed_logins}")
    ok = ratio >= GOAL_RATIO and loud.p99 <= GOAL_P99 and not (
        quiet.errors or quiet.non_2xx or loud.errors or loud.non_2xx)
    out(f"goal      ratio {ratio:.2f} (>= {GOAL_RATIO:.2f}), flood p99 {loud.p99 * 1000:.1f} ms "
        f"(<= {GOAL_P99 * 1000:.0f} ms): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--attackers", type=int, default=50)
    parser.add_argument("--attack", metavar="URL", help=argparse.SUPPRESS)   # the flood process
    add_workdir_flags(parser)
    args = parser.parse_args(argv)
    if args.attack:
        asyncio.run(_attack(args.attack, args.attackers, args.seconds))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
