"""What the benchmarks share: curl as the one client, the hashing herd, process stats, the
header line, the output helpers, the work dir every run lives in (its flags, its signal
handlers, its tear-down) and the counted origin. Nothing here starts pullcache."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemon import Pullcache
from tests.support.faultproxy import FaultProxy
from tests.support.registry import Registry, start_registry

REPO = "bench/blob"
MB = 1e6                       # throughput is in decimal MB/s (like curl and nginx docs)
MiB = 1 << 20
CURL_TIMEOUT = 120             # seconds, per transfer; keeps a wedged server from hanging the run
NGINX_BIN = os.environ.get("PULLCACHE_BENCH_NGINX", "/usr/sbin/nginx")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- measuring ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Get:
    """One transfer as curl saw it."""
    size: int
    seconds: float             # time_total
    ttfb: float                # time_starttransfer

    @property
    def mbps(self) -> float:
        return self.size / self.seconds / MB


def curl_cmd(url: str, out: str = "/dev/null", *, w_to_stderr: bool = False) -> list[str]:
    """The one client every number comes from (``-f``: an HTTP error is a failed run)."""
    fmt = "%{size_download} %{time_total} %{time_starttransfer}"
    return ["curl", "-s", "-S", "-f", "--noproxy", "*", "--max-time", str(CURL_TIMEOUT),
            "-o", out, "-w", ("%{stderr}" if w_to_stderr else "") + fmt, url]


def parse_w(text: str, expected_size: int, what: str) -> Get:
    try:
        size, total, ttfb = text.split()[-3:]
        got = Get(int(size), float(total), float(ttfb))
    except ValueError:
        raise RuntimeError(f"{what}: cannot parse curl -w output {text!r}") from None
    if got.size != expected_size:
        raise RuntimeError(f"{what}: got {got.size} bytes, expected {expected_size}")
    return got


def curl_get(url: str, expected_size: int, what: str) -> Get:
    proc = subprocess.run(curl_cmd(url), capture_output=True, text=True,
                          timeout=CURL_TIMEOUT + 10)
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: curl exited {proc.returncode}: {proc.stderr.strip()}")
    return parse_w(proc.stdout, expected_size, what)


class HashingClient:
    """``curl URL | openssl dgst -sha256``: the body is checked without touching the disk.

    openssl (SHA-NI, ~2 GB/s a core) rather than sha256sum (~0.4 GB/s here), so that on a
    small machine the clients' hashing steals as little CPU from the server as possible.
    """

    def __init__(self, url: str) -> None:
        self.began = time.monotonic()
        self.curl = subprocess.Popen(curl_cmd(url, "-", w_to_stderr=True),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.dgst = subprocess.Popen(["openssl", "dgst", "-sha256", "-r"], stdin=self.curl.stdout,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.curl.stdout is not None
        self.curl.stdout.close()   # openssl holds the read end now

    def wait_curl(self, deadline: float) -> None:
        self.curl.wait(timeout=max(deadline - time.monotonic(), 0.1))

    def result(self, expected_size: int) -> tuple[Get | None, str, str]:
        """(transfer or None, body sha256 hex, error text)."""
        out, _ = self.dgst.communicate(timeout=60)
        err = self.curl.stderr.read().decode(errors="replace") if self.curl.stderr else ""
        hexdigest = out.decode().split()[0] if out.strip() else ""
        if self.curl.returncode != 0:
            return None, hexdigest, f"curl exited {self.curl.returncode}: {err.strip()}"
        try:
            return parse_w(err, expected_size, "herd client"), hexdigest, ""
        except RuntimeError as exc:
            return None, hexdigest, str(exc)

    def kill(self) -> None:
        for proc in (self.curl, self.dgst):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Herd:
    wall: float
    gets: list[Get | None]
    digests_ok: int
    errors: list[str]


def run_herd(url: str, clients: int, size: int, hexdigest: str) -> Herd:
    """``clients`` concurrent hashing GETs; wall = first launch to last curl exit."""
    started: list[HashingClient] = []
    try:
        began = time.monotonic()
        for _ in range(clients):
            started.append(HashingClient(url))
        deadline = began + CURL_TIMEOUT + 10
        for client in started:        # in launch order: the loop ends just after the last exit
            client.wait_curl(deadline)
        wall = time.monotonic() - began
        gets, ok, errors = [], 0, []
        for client in started:
            got, digest, error = client.result(size)
            gets.append(got)
            ok += digest == hexdigest and got is not None
            if error:
                errors.append(error)
            elif digest != hexdigest:
                errors.append(f"body sha256 {digest or '(none)'} != {hexdigest}")
        return Herd(wall, gets, ok, errors)
    finally:
        for client in started:
            client.kill()


class ProcStats:
    """RSS (polled VmRSS, plus the kernel's VmHWM), threads and CPU seconds of one process."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.max_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="rss-poll", daemon=True)

    def _field(self, name: str, unit: int = 1024) -> int:
        """A ``kB`` field of /proc/<pid>/status, in bytes (0 once the process is gone)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(name + ":"):
                        return int(line.split()[1]) * unit
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0

    def threads(self) -> int:
        return self._field("Threads", unit=1)

    def rss(self) -> int:
        return self._field("VmRSS")

    def hwm(self) -> int:
        return self._field("VmHWM")

    def cpu_seconds(self) -> float:
        """utime + stime of every thread (asyncio.to_thread workers included)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.rss())
            self.max_threads = max(self.max_threads, self.threads())
            self._stop.wait(self.interval)

    def __enter__(self) -> "ProcStats":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.rss())


def cpu_seconds(*pids: int) -> float:
    """utime + stime of ``pids`` and their direct children (nginx: master + worker)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            children = []
        total += sum(ProcStats(p).cpu_seconds() for p in (pid, *children))
    return total


def fresh_cache(pc: Pullcache) -> None:
    """Stop pullcache, delete its cache dir, start it again (same port, same config)."""
    pc.stop()
    shutil.rmtree(pc.cache_dir, ignore_errors=True)
    pc.start()


def fill_committed(pc: Pullcache, digest: str) -> bool:
    """pullcache sends a fill's last byte once verified; the commit (fsync, rename) follows.
    Only the daemon's current run counts (``fresh_cache`` restarts it on the same log)."""
    return any(e.get("digest") == digest for e in pc.events("fill_committed", this_run=True))


def blob_url(base: str, digest: str) -> str:
    return f"{base}/v2/{REPO}/blobs/{digest}"


# -- reporting ---------------------------------------------------------------------------------

def _version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (proc.stdout + proc.stderr).strip().splitlines()[0] if (proc.stdout + proc.stderr).strip() else "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def header(size: int, args: argparse.Namespace, *, nginx: bool = True) -> list[str]:
    """The ``machine`` and ``versions`` lines (``nginx=False``: for a run that starts none)."""
    import aiohttp
    try:
        import uvloop
        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        f"machine   nproc {os.cpu_count()}   cpu {_cpu_model()}   mem {mem:.0f} GiB   "
        f"kernel {platform.release()}   python {platform.python_version()}   "
        f"blob {size // MiB} MiB ({size} B)   rounds {args.rounds}   clients {args.clients}",
        "versions  "
        + (f"{_version([NGINX_BIN, '-v']).split(': ')[-1]}   " if nginx else "")
        + f"docker-registry {_version(['docker-registry', '--version']).split()[-1]}   "
        f"{_version(['curl', '--version']).split(' (')[0]}   "
        f"{_version(['openssl', 'version']).split(' (')[0]}   "
        f"aiohttp {aiohttp.__version__}   {loop}",
    ]


def best_median(values: list[float], *, higher_is_better: bool) -> tuple[float, float]:
    best = max(values) if higher_is_better else min(values)
    return best, statistics.median(values)


def versus(best: float, med: float, base_best: float, base_med: float) -> str:
    """A figure's ratio to its baseline's, best to best and median to median."""
    return f"x{best / base_best:.2f} (best)  x{med / base_med:.2f} (median)"


def must_be_zero(what: str, counts: list[int]) -> int:
    """The run's pass line: ``counts`` printed; the exit status 0 only if all are 0."""
    out(f"{what}: {counts} (must be 0)")
    return 0 if not any(counts) else 1


def mb(n: int) -> float:
    return n / MB


def out(line: str) -> None:
    """A result line, flushed at once so a slow phase shows progress."""
    print(line, flush=True)


def note(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


# -- the work dir ------------------------------------------------------------------------------

def add_workdir_flags(parser: argparse.ArgumentParser, *, tmpdir: bool = True) -> None:
    """``--keep`` and (unless ``tmpdir=False``, for the benches that never had it) ``--tmpdir``."""
    if tmpdir:
        parser.add_argument("--tmpdir", default=None,
                            help="where the temp dir goes (default: $TMPDIR or /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) afterwards")


@contextlib.contextmanager
def temp_workdir(prefix: str, *, tmpdir: str | None = None,
                 keep: bool = False) -> Iterator[tuple[Path, list[Callable[[], None]]]]:
    """A fresh temp dir and a clean-up list to append each started server's ``stop`` to.

    On the way out the list runs and the dir goes (see ``tear_down``). SIGTERM and SIGHUP
    unwind like Ctrl-C from here on: the servers are children nothing else would stop.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir))
    cleanup: list[Callable[[], None]] = []
    try:
        yield tmp, cleanup
    finally:
        tear_down(cleanup, tmp, keep=keep)


def counted_origin(tmp: Path, cleanup: list) -> tuple[Registry, FaultProxy]:
    """A docker-registry to push to, and the FaultProxy in front of it that the nodes pull
    through (it counts what they ask); both stopped with the work dir."""
    registry = start_registry(tmp / "registry").__enter__()
    cleanup.append(lambda: registry.__exit__(None, None, None))
    proxy = FaultProxy(registry.url)
    proxy.start()
    cleanup.append(proxy.stop)
    return registry, proxy


def tear_down(cleanup: list, tmp, *, keep: bool) -> None:
    """Run every clean-up step (last first, each even if another failed), then drop ``tmp``."""
    for stop in reversed(cleanup):
        try:
            stop()
        except Exception as exc:  # noqa: BLE001 - keep cleaning up
            print(f"cleanup: {exc}", file=sys.stderr)
    if keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
