"""What a soak left behind: the daemon's vital signs (fds, threads, asyncio tasks, temp
files, peak RSS) against a baseline, the access log's statuses, and a verify of the cache.
Shared by ``tests/integration/test_chaos.py`` and ``bench/chaos_soak.py``."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass

from pullcache.cache.verify import VerifyReport, verify

from .daemon import Pullcache
from .ports import wait_until
from .soak import CLIENT_CLASSES, Soak


@dataclass(frozen=True)
class Vitals:
    fds: int             # every fd but SQLite's: diskcache opens one connection per thread
    sqlite_fds: int      # bounded by the thread pools (one db + wal per thread and database)
    threads: int
    tasks: int
    temp_files: int
    rss_peak_kib: int


def vitals(pc: Pullcache) -> Vitals:
    pid = pc.proc.pid
    fds = fd_targets(pc)
    sqlite = sum(n for target, n in fds.items() if ".db" in target)
    return Vitals(fds=sum(fds.values()) - sqlite, sqlite_fds=sqlite,
                  threads=len(os.listdir(f"/proc/{pid}/task")),
                  tasks=int(pc.metric("pullcache_asyncio_tasks")),
                  temp_files=len(list((pc.cache_dir / "tmp").iterdir())),
                  rss_peak_kib=pc.rss_peak_kib())


def fd_targets(pc: Pullcache) -> Counter:
    """What the daemon's open fds point at (sockets and pipes by kind), for a leak report."""
    out = Counter()
    base = f"/proc/{pc.proc.pid}/fd"
    for fd in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{fd}")
        except OSError:
            continue
        out[target.split(":")[0] if ":[" in target else target] += 1
    return out


def statuses_in_access_log(pc: Pullcache) -> Counter:
    return Counter(r.get("status") for r in pc.events("request"))


# What the soak's daemon may hold: the interpreter and its libraries, 20 small manifests
# and their tag records in the hot layer (far below its budget), fills streamed through small
# fixed buffers, 50 connections. 150 MiB is about twice that, so an allocator's slack passes
# and an unbounded holding fails: a buffer per client, a pass-through window held whole, a
# 64 MiB layer read into memory (docs/benchmarks.md gives the measured peak).
RSS_BOUND_MIB = 150


@dataclass
class Aftermath:
    """What the soak left behind; every count here must be 0 (``problems`` says which not)."""
    wrong: int
    access_500: int
    fill_crashed: int
    after_pulls_failed: list[str]
    verify: VerifyReport
    leaks: list[str]
    vitals: Vitals

    @property
    def problems(self) -> list[str]:
        out = []
        if self.wrong:
            out.append(f"{self.wrong} wrong pulls")
        if self.access_500:
            out.append(f"{self.access_500} responses with status 500")
        if self.fill_crashed:
            out.append(f"{self.fill_crashed} fills crashed")
        if self.after_pulls_failed:
            out.append(f"pulls after the storm failed: {self.after_pulls_failed}")
        if not self.verify.ok:
            out.append(f"verify: bad {self.verify.bad} unreadable {self.verify.unreadable}")
        return out + self.leaks


def aftermath(pc: Pullcache, soak: Soak, base: Vitals, *, settle: float = 40.0,
              rss_bound_mib: int = RSS_BOUND_MIB,
              killed_peaks_kib: list[int] | None = None) -> Aftermath:
    """After the storm (chaos off): pull every image once more, verify the cache, and wait
    (up to ``settle`` s) for fds, tasks and temp files to return to ``base``.

    Threads may stay above ``base`` up to the peak concurrency (idle pool threads live on,
    by design), and SQLite fds up to two per pool thread and database (diskcache opens one
    connection per thread); the peak RSS of every daemon process (the running one and those
    SIGKILLed: ``killed_peaks_kib``, by default ``soak``'s) must stay under
    ``rss_bound_mib``.
    """
    after = Soak(pc, soak.images, clients=1, skopeo_clients=0, seconds=0)
    failed = []
    deadline = time.monotonic() + settle
    for i, image in enumerate(soak.images):
        klass = CLIENT_CLASSES[i % len(CLIENT_CLASSES)]
        # Right after the storm the breaker may still be open for its cool-down, or probing
        # with a request the storm left dripping: retry a failed pull until the deadline. A
        # wrong pull is never retried away.
        pulled: list[tuple[str, str]] = []

        def settled() -> bool:
            pulled.append(after._pull(image, klass))
            return pulled[-1][0] != "failed"
        try:
            wait_until(settled, max(deadline - time.monotonic(), 0.0), "a pull that did not fail")
        except TimeoutError:
            pass                # the last verdict, failed, is reported below
        verdict, detail = pulled[-1]
        if verdict != "ok":
            failed.append(f"{image.digest} as {klass.name}: {verdict} {detail}")
    report = verify(pc.cache_dir)

    def settled():
        now = vitals(pc)
        return now.fds <= base.fds + 4 and now.tasks <= base.tasks and now.temp_files == 0
    try:
        wait_until(settled, timeout=settle)
    except TimeoutError:
        pass
    now = vitals(pc)
    executor = min(32, (os.cpu_count() or 1) + 4)   # asyncio's default to_thread pool
    leaks = []
    if now.fds > base.fds + 4:
        leaks.append(f"fds {base.fds} -> {now.fds}: {fd_targets(pc)}")
    if now.tasks > base.tasks:
        leaks.append(f"asyncio tasks {base.tasks} -> {now.tasks}")
    if now.temp_files:
        leaks.append(f"{now.temp_files} temp files left")
    if now.threads > base.threads + soak.clients + 8:
        leaks.append(f"threads {base.threads} -> {now.threads}")
    if now.sqlite_fds > 2 * 3 * (executor + 2):
        leaks.append(f"sqlite fds {base.sqlite_fds} -> {now.sqlite_fds}")
    if killed_peaks_kib is None:
        killed_peaks_kib = soak.result.killed_rss_peaks_kib
    for n, peak in enumerate([*killed_peaks_kib, now.rss_peak_kib]):
        if peak > rss_bound_mib * 1024:
            leaks.append(f"peak RSS of daemon process {n + 1} {peak // 1024} MiB > "
                         f"{rss_bound_mib} MiB")
    return Aftermath(len(soak.result.wrong), statuses_in_access_log(pc)[500],
                     len(pc.events("fill_crashed")), failed, report, leaks, now)
