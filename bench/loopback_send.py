"""What it costs the sender to put a blob's bytes on a loopback socket: ``sendfile`` from the
page cache against ``send`` from a buffer in memory, side by side.

    python -m bench.loopback_send [--size-mib 512] [--rounds 3]

A node-local mirror's clients are on loopback, where the sender's CPU carries the TCP work of
both ends but the receiver's copy. The cold fill's writer thread holds each chunk in memory
right after writing it; this is the measurement behind sending it from there to a client
caught up with the writer (pullcache/cache/riders.py) rather than leaving it to the loop's
``sendfile`` (docs/benchmarks.md, "The cold fill").

One receiver process per transfer (``recv_into`` a 1 MiB buffer, as curl does) on
127.0.0.1; the sender is this process's thread, and its CPU is ``RUSAGE_THREAD``'s. The file
is read once first, so ``sendfile`` reads from the page cache, as a fill's reader does.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

from bench._common import MiB, add_workdir_flags, header, out, temp_workdir
from tests.support.ports import LOOPBACK

CHUNK = 4 << 20      # the fill's read buffer (pullcache/upstream/socket_body.py)
RECEIVER = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
buffer = bytearray(1 << 20)
while sock.recv_into(buffer):
    pass
"""


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def transfer(listener: socket.socket, fd: int, size: int, how: str) -> tuple[float, float]:
    """One blob to a fresh receiver: (sender CPU seconds, wall seconds)."""
    host, port = listener.getsockname()[:2]
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, host, str(port)])
    conn, _ = listener.accept()
    buffer = memoryview(bytearray(CHUNK))
    try:
        cpu0, wall0 = thread_cpu(), time.perf_counter()
        offset = 0
        while offset < size:
            n = min(CHUNK, size - offset)
            if how == "sendfile":
                offset += os.sendfile(conn.fileno(), fd, offset, n)
            else:
                conn.sendall(buffer[:n])     # the bytes are in memory already
                offset += n
        cpu, wall = thread_cpu() - cpu0, time.perf_counter() - wall0
    finally:
        conn.close()
        receiver.wait(timeout=60)
    return cpu, wall


def run(args: argparse.Namespace) -> int:
    size = args.size_mib * MiB
    for line in header(size, argparse.Namespace(rounds=args.rounds, clients=1), nginx=False):
        out(line)
    with temp_workdir("pullcache-loopback-", tmpdir=args.tmpdir, keep=args.keep) as (tmp, _):
        path = tmp / "blob"
        with open(path, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        fd = os.open(path, os.O_RDONLY)
        while os.read(fd, 16 * MiB):      # into the page cache
            pass
        listener = socket.create_server((LOOPBACK, 0))
        spent: dict[str, list[tuple[float, float]]] = {"sendfile": [], "send": []}
        try:
            for _ in range(args.rounds):      # interleaved, so drift hits both alike
                for how in spent:
                    spent[how].append(transfer(listener, fd, size, how))
        finally:
            listener.close()
            os.close(fd)
    cpu = {how: statistics.median(c for c, _ in runs) for how, runs in spent.items()}
    wall = {how: statistics.median(w for _, w in runs) for how, runs in spent.items()}
    out(f"loopback {args.size_mib} MiB   sender cpu: sendfile {cpu['sendfile']:.3f} s   "
        f"send {cpu['send']:.3f} s   ratio {cpu['sendfile'] / cpu['send']:.2f}   |   wall: "
        f"sendfile {wall['sendfile']:.3f} s   send {wall['send']:.3f} s   "
        f"(medians of {args.rounds}, {CHUNK >> 20} MiB per call)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loopback_send",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    add_workdir_flags(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
