"""What authentication and TLS cost on the hot path: cached manifest GETs per second.

Three pullcache daemons in front of one real registry, the same manifest cached in each:
open (plain HTTP, no [access]), login (htpasswd + a pull policy, Basic credentials on every
request: the remembered-verdict path, no bcrypt), and TLS + login (HTTPS, the same). One
aiohttp client, keep-alive, ``--concurrency`` requests in flight, ``--requests`` per daemon.
Prints one line per daemon with its rate and the ratio against open. Talks only to 127.0.0.1.

    .venv/bin/python -m bench.access_overhead --requests 5000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ssl
import sys
import time

import aiohttp

from bench._common import temp_workdir
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.images import build_image, push
from tests.support.registry import start_registry
from tests.support.tls import CA, write_htpasswd

OCI_M = "application/vnd.oci.image.manifest.v1+json"


async def _rate(url: str, headers: dict, ctx: ssl.SSLContext | None, total: int,
                concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ctx if ctx else False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: {resp.status}")
        for _ in range(concurrency):   # warm: connections open, verdict remembered
            await one()
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    with temp_workdir("pc-bench-access-") as (tmp, _):
        with start_registry(tmp / "registry") as registry:
            image = build_image("bench-access")
            push(registry, "library/bench", "v1", image)
            ca = CA(tmp / "pki")
            server = ca.issue("server")
            htpasswd = write_htpasswd(tmp / "htpasswd", {"bench": "secret"})
            login = {"htpasswd": htpasswd}
            policy = {"allow": ["library/*"], "deny": ["library/secret-*"]}
            tls = {"tls_cert": server.cert, "tls_key": server.key}
            variants = [("open", {}, {}, {}), ("login", {}, login, policy),
                        ("tls+login", tls, login, policy)]
            auth = {"Authorization": "Basic " + base64.b64encode(b"bench:secret").decode(),
                    "Accept": OCI_M}
            rates: dict[str, float] = {}
            for name, server_keys, access, extra in variants:
                (tmp / name).mkdir()
                pc = Pullcache(tmp / name, [UpstreamSpec("docker.io", registry.url,
                                                         default=True, extra=extra)],
                               server=server_keys, access=access)
                pc.start()
                try:
                    url = f"{pc.url}/v2/library/bench/manifests/{image.digest}"
                    ctx = ca.client_context() if server_keys else None
                    rates[name] = asyncio.run(_rate(url, auth, ctx, args.requests,
                                                    args.concurrency))
                finally:
                    pc.stop()
            print(f"machine   shared, {args.requests} cached manifest GETs per daemon, "
                  f"concurrency {args.concurrency}")
            for name, rate in rates.items():
                print(f"{name:<10} {rate:8.0f} req/s   {rate / rates['open']:.2f} x open")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
