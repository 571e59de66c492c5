"""Many slow downloads at once: do they all progress, on a bounded number of threads?

    python -m bench.slow_clients [--clients 1000] [--size-mib 64] [--rate-mib 1] [--seconds 20]

One run, one line per phase:

* slow:   ``--clients`` concurrent GETs of one cached ``--size-mib`` blob, each client
          reading at ``--rate-mib`` MiB/s (a token bucket over a raw asyncio socket with a
          small receive buffer, so the daemon really waits on it) for ``--seconds``: how many
          had bytes at the midpoint and at the end (goal: all, at once), bytes per client,
          the daemon's most threads (/proc/<pid>/status ``Threads``, goal <= 64) and its
          peak RSS (``VmHWM``, goal <= 150 MiB).
* digest: the same number of clients fetch a cached ``--digest-mib`` blob at full speed
          and hash it: every completed body must match its digest.

Everything it starts (registry, pullcache) is stopped in a ``finally``; files live under
one temp dir, removed at the end. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import resource
import shutil
import socket
import statistics
import sys
import time
from dataclasses import dataclass

from bench._common import (MiB, ProcStats, add_workdir_flags, curl_get, header, mb, note, out,
                           temp_workdir)
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.images import build_raw_blob_image, push
from tests.support.registry import start_registry

RCVBUF = 128 * 1024          # small, so that the daemon's socket fills and it must wait
TARGET_THREADS = 64
TARGET_RSS_MIB = 150


@dataclass
class Client:
    got: int = 0
    status: bytes = b""
    error: str | None = None
    digest: str | None = None


async def _connect(host: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return sock


async def _get(host: str, port: int, path: str, client: Client, *, rate: float | None,
               until: float, hasher=None) -> None:
    """GET ``path``; read the body at ``rate`` bytes/s (None: as fast as it comes) until
    it ends or ``until`` (monotonic) passes."""
    loop = asyncio.get_running_loop()
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    try:
        sock = await _connect(host, port)
    except OSError as exc:
        client.error = f"connect: {exc}"
        return
    try:
        await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: bench\r\n"
                                      "Connection: close\r\n\r\n".encode())
        head = b""
        began = time.monotonic()
        while time.monotonic() < until:
            want = len(buf)
            if rate is not None:
                allowed = int(rate * (time.monotonic() - began)) - client.got
                if allowed <= 0:
                    await asyncio.sleep(min(-allowed / rate + 0.05, until - time.monotonic()))
                    continue
                want = min(want, allowed)
            n = await asyncio.wait_for(loop.sock_recv_into(sock, view[:want]),
                                       max(until - time.monotonic(), 0.01))
            if n == 0:
                break
            data = view[:n]
            if not client.status:
                head += bytes(data)
                if b"\r\n\r\n" not in head:
                    continue
                head, _, body = head.partition(b"\r\n\r\n")
                client.status = head.split(b"\r\n", 1)[0]
                data = memoryview(body)
            client.got += len(data)
            if hasher is not None:
                hasher.update(data)
    except (OSError, asyncio.TimeoutError) as exc:
        if time.monotonic() < until:
            client.error = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()


async def slow_phase(host: str, port: int, path: str, n: int, rate: float,
                     seconds: float) -> tuple[list[Client], int]:
    clients = [Client() for _ in range(n)]
    until = time.monotonic() + seconds
    tasks = [asyncio.create_task(_get(host, port, path, c, rate=rate, until=until))
             for c in clients]
    await asyncio.sleep(seconds / 2)
    midway = sum(1 for c in clients if c.got > 0)
    await asyncio.gather(*tasks)
    return clients, midway


async def digest_phase(host: str, port: int, path: str, n: int, size: int,
                       seconds: float) -> list[Client]:
    clients = [Client() for _ in range(n)]
    hashers = [hashlib.sha256() for _ in range(n)]
    until = time.monotonic() + seconds
    await asyncio.gather(*(_get(host, port, path, c, rate=None, until=until, hasher=h)
                           for c, h in zip(clients, hashers)))
    for c, h in zip(clients, hashers):
        if c.got == size:
            c.digest = "sha256:" + h.hexdigest()
    return clients


def run(args: argparse.Namespace) -> int:
    size, small = args.size_mib * MiB, args.digest_mib * MiB
    for line in header(size, args, nginx=False):
        out(line)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # our own N sockets
    problems: list[str] = []
    with temp_workdir("pullcache-slow-", tmpdir=args.tmpdir, keep=args.keep) as (tmp, cleanup):
        big = build_raw_blob_image(f"slow-{args.size_mib}", size)
        little = build_raw_blob_image(f"slow-digest-{args.digest_mib}", small)
        registry = start_registry(tmp / "registry")
        cleanup.append(registry.stop)
        push(registry, "bench/slow", "big", big)
        push(registry, "bench/slow", "little", little)
        big_digest, little_digest = big.layers[0].digest, little.layers[0].digest
        del big, little
        (tmp / "pullcache").mkdir()
        pc = Pullcache(tmp / "pullcache", [UpstreamSpec(registry.host, registry.url,
                                                        default=True)],
                       cache={"max_size": "4GiB"},
                       server={"max_connections": args.clients + 64, "send_timeout": "60s",
                               "access_log": False})
        cleanup.append(pc.stop)
        pc.start()
        assert pc.proc is not None
        for digest, nbytes in ((big_digest, size), (little_digest, small)):   # warm the cache
            curl_get(f"{pc.url}/v2/bench/slow/blobs/{digest}", nbytes, "warm-up GET")
        note(f"cached {big_digest} and {little_digest}")
        big_path = f"/v2/bench/slow/blobs/{big_digest}"
        little_path = f"/v2/bench/slow/blobs/{little_digest}"

        with ProcStats(pc.proc.pid, interval=0.1) as watch:
            clients, midway = asyncio.run(slow_phase("127.0.0.1", pc.port, big_path,
                                                     args.clients, args.rate_mib * MiB,
                                                     args.seconds))
        progressed = sum(1 for c in clients if c.got > 0)
        got = sorted(c.got for c in clients)
        errors = [c.error for c in clients if c.error]
        out(f"slow {args.clients} x {args.size_mib} MiB at {args.rate_mib} MiB/s for "
            f"{args.seconds:g} s   progressed {midway}/{args.clients} at {args.seconds / 2:g} s, "
            f"{progressed}/{args.clients} at the end   MiB per client min "
            f"{got[0] / MiB:.1f} median {statistics.median(got) / MiB:.1f} max "
            f"{got[-1] / MiB:.1f}   aggregate {sum(got) / args.seconds / 1e6:.0f} MB/s   "
            f"daemon threads max {watch.max_threads} (goal <= {TARGET_THREADS})   "
            f"peak RSS {watch.hwm() / MiB:.0f} MiB (VmHWM; goal <= {TARGET_RSS_MIB})   "
            f"errors {len(errors)}")
        if progressed < args.clients or midway < args.clients:
            problems.append(f"only {midway}/{progressed} of {args.clients} clients progressed")
        if watch.max_threads > TARGET_THREADS:
            problems.append(f"{watch.max_threads} threads")
        if watch.hwm() > TARGET_RSS_MIB * MiB:
            problems.append(f"peak RSS {watch.hwm() / MiB:.0f} MiB")

        began = time.monotonic()
        with ProcStats(pc.proc.pid, interval=0.1) as watch:
            done = asyncio.run(digest_phase("127.0.0.1", pc.port, little_path, args.clients,
                                            small, args.seconds * 3))
        wall = time.monotonic() - began
        complete = [c for c in done if c.digest is not None]
        matched = sum(1 for c in complete if c.digest == little_digest)
        out(f"digest {args.clients} x {args.digest_mib} MiB full speed   completed "
            f"{len(complete)}/{args.clients}   sha256 match {matched}/{len(complete)}   "
            f"wall {wall:.1f} s   {mb(sum(c.got for c in done)) / wall:.0f} MB/s   "
            f"daemon threads max {watch.max_threads}   peak RSS {watch.hwm() / MiB:.0f} MiB")
        errors += [c.error for c in done if c.error]
        if matched != len(complete) or len(complete) < args.clients:
            problems.append(f"digest phase: {matched} matched of {len(complete)} completed")
        for error in dict.fromkeys(errors):
            out(f"error     {error}")
        for problem in problems:
            out(f"problem   {problem}")
        return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_clients",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--size-mib", type=int, default=64, help="the slow blob (default 64)")
    parser.add_argument("--rate-mib", type=float, default=1.0,
                        help="each slow client's read rate, MiB/s (default 1)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the slow clients read (default 20)")
    parser.add_argument("--digest-mib", type=int, default=1,
                        help="the blob the digest phase reads at full speed (default 1)")
    add_workdir_flags(parser)
    args = parser.parse_args(argv)
    args.rounds = 1
    if min(args.clients, args.size_mib, args.digest_mib) < 1 or args.seconds <= 0:
        parser.error("--clients, --size-mib, --digest-mib and --seconds must be positive")
    if shutil.which("docker-registry") is None:
        parser.error("docker-registry is required (make system-deps)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
