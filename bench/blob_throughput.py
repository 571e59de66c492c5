"""Blob GET throughput, side by side: pullcache vs nginx, vs a direct pull, and a herd.

    python -m bench.blob_throughput [--size-mib 512] [--rounds 3] [--clients 16]

One run, one comparison per line (see bench/README.md for what each line means):

* warm:  a cached blob through pullcache (aiohttp sendfile) vs nginx ``sendfile on`` serving
         the same bytes as a static file; the same curl command for both.
* cold:  one GET through pullcache with an empty cache (the fill: upstream -> verify ->
         disk -> client) vs the same GET through Distribution's proxy (empty too) and
         straight from the upstream registry; and the fill's MB/s up to verification.
* herd:  N concurrent GETs through pullcache with an empty cache, a counting FaultProxy
         between pullcache and the registry: wall time, upstream GETs (goal 1), every
         body's sha256, pullcache's peak RSS.
* herd warm: the same N clients against a warm pullcache and against nginx, to separate
         the cost of fanning a fill out from the cost of serving N x size bytes at all.

Everything it starts (registry, FaultProxy, pullcache, nginx, curl) is stopped in a
``finally``; every file lives under one temp dir next to /tmp, removed at the end.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench._common import (MB, NGINX_BIN, REPO, Get, MiB, ProcStats, add_workdir_flags,
                           best_median, blob_url, cpu_seconds, curl_get, fill_committed,
                           fresh_cache, header, mb, note, out, run_herd, temp_workdir)
from bench.vs_distribution import (distribution_stored, empty_distribution,
                                   start_distribution_proxy)
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.faultproxy import FaultProxy
from tests.support.images import build_raw_blob_image, push
from tests.support.ports import LOOPBACK, free_port, wait_http
from tests.support.registry import start_registry

# -- the servers -------------------------------------------------------------------------------

NGINX_CONF = """\
# pullcache bench: nginx serving {www} as static files, the practical limit for a blob GET.
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {dir}/body;
{temp_paths}    server {{
        listen {host}:{port};
        root {www};
    }}
}}
"""


class Nginx:
    """nginx in the foreground (``daemon off``), one worker, as a child we own."""

    def __init__(self, workdir: Path, www: Path) -> None:
        self.dir = workdir
        self.www = www
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "Nginx":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        # Every temp path inside our dir (the built-in ones are under /var/lib/nginx), but
        # only for modules this build has: nginx-light leaves some out, and then the
        # directive itself is unknown.
        built = subprocess.run([NGINX_BIN, "-V"], capture_output=True, text=True).stderr
        temp_paths = "".join(f"    {m}_temp_path {self.dir}/{m};\n"
                             for m in ("proxy", "fastcgi", "uwsgi", "scgi")
                             if f"--without-http_{m}_module" not in built)
        conf.write_text(NGINX_CONF.format(dir=self.dir, www=self.www, host=LOOPBACK,
                                          port=self.port, temp_paths=temp_paths))
        log = open(self.dir / "stderr.log", "ab")
        self.proc = subprocess.Popen(
            [NGINX_BIN, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()

        def exited() -> str | None:
            if self.proc is None or self.proc.poll() is None:
                return None
            return f"nginx exited {self.proc.returncode}: {self._logs()}"
        try:
            wait_http(self.url + "/", timeout=10, ok_statuses=(200, 403, 404), abort=exited)
        except BaseException:
            self.stop()
            raise
        return self

    def _logs(self) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            path = self.dir / name
            if path.exists():
                text += path.read_text(errors="replace")[-2000:]
        return text

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)   # graceful: master waits for its worker
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: master + worker
                self.proc.wait()
        self.proc = None


# -- the run -----------------------------------------------------------------------------------

def measured_get(url: str, size: int, what: str, **servers: int) -> tuple[Get, dict[str, float]]:
    """One curl GET, and the CPU seconds each named server process and curl spent on it."""
    stats = {name: ProcStats(pid) for name, pid in servers.items()}
    before = {name: stat.cpu_seconds() for name, stat in stats.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    got = curl_get(url, size, what)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = {name: stat.cpu_seconds() - before[name] for name, stat in stats.items()}
    spent["curl"] = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return got, spent


def until_stored(committed: Callable[[], bool], started: float, pid: int,
                 cpu_before: float, what: str) -> tuple[float, float]:
    """Wait until a cold GET's blob is in the cache for good: the seconds since the GET
    started, and the server's CPU seconds since then. Distribution's proxy answers the client
    from one upstream GET and stores the blob from a second one, in the background
    (registry/proxy/proxyblobstore.go); that work is the GET's too, and the next GET measured
    must not share the machine with it. Polled every 5 ms, not with ``wait_until``: its
    back-off grows to 100 ms, too coarse for a time it reports."""
    deadline = time.monotonic() + 60
    while not committed():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not stored within 60 s")
        time.sleep(0.005)
    return time.monotonic() - started, ProcStats(pid).cpu_seconds() - cpu_before


def cpu_median(rounds: list[dict[str, float]], part: str) -> float:
    return statistics.median(spent[part] for spent in rounds)


def run(args: argparse.Namespace) -> int:
    size = args.size_mib * MiB
    for line in header(size, args):
        out(line)
    t_run = time.monotonic()
    with temp_workdir("pullcache-bench-", tmpdir=args.tmpdir, keep=args.keep) as (tmp, cleanup):
        # -- the blob: pushed to a real registry, and the same bytes as nginx's static file.
        t0 = time.monotonic()
        image = build_raw_blob_image(f"bench-{args.size_mib}", size)
        layer = image.layers[0]
        digest, hexdigest = layer.digest, layer.digest.split(":", 1)[1]
        www = tmp / "www"
        (www / "blob").mkdir(parents=True)
        static = www / "blob" / hexdigest
        static.write_bytes(layer.data)
        # nginx started by root runs its worker as nobody: let it reach the file (read only).
        tmp.chmod(0o755)
        registry = start_registry(tmp / "registry")
        cleanup.append(registry.stop)
        push(registry, REPO, "latest", image)
        del image, layer                  # 512 MiB we no longer need in this process
        # Write back the ~1 GiB just written (static file, registry upload) now, so that the
        # kernel's background writeback does not land in the first timed round.
        os.sync()
        note(f"built and pushed {digest} in {time.monotonic() - t0:.1f}s")

        nginx = Nginx(tmp / "nginx", www).start()
        cleanup.append(nginx.stop)
        cache_cfg = {"max_size": f"{max(4 * size, 4 * 2**30)}"}
        (tmp / "pullcache").mkdir()
        (tmp / "pullcache-herd").mkdir()
        pc = Pullcache(tmp / "pullcache", [UpstreamSpec(registry.host, registry.url, default=True)],
                       cache=cache_cfg)
        cleanup.append(pc.stop)
        pc.write_config()                 # picks the port every restart keeps
        pc_url = blob_url(pc.url, digest)
        direct_url = blob_url(registry.url, digest)
        nginx_url = f"{nginx.url}/blob/{hexdigest}"

        # -- cold: a fresh cache per round; one GET through pullcache, one through
        # Distribution's proxy (same origin), one direct. One untimed round first: the VM's
        # first writes to fresh pages are slower than any later ones.
        dist = start_distribution_proxy(tmp / "distribution", registry.url)
        cleanup.append(dist.stop)
        dist_url = blob_url(dist.url, digest)
        cold_pc: list[Get] = []
        cold_dist: list[Get] = []
        cold_direct: list[Get] = []
        cold_cpu: dict[str, list[dict[str, float]]] = {"pc": [], "dist": [], "direct": []}
        # (seconds from the GET's start until the blob is in the cache, server CPU until then)
        stored: dict[str, list[tuple[float, float]]] = {"pc": [], "dist": []}
        # Each GET starts with nothing dirty in the page cache (os.sync): Distribution does
        # not fsync what it stores, and its 512 MiB written back during the next round's
        # pullcache GET would bill that writeback to pullcache.
        for i in range(args.rounds + 1):
            fresh_cache(pc)
            empty_distribution(dist)
            assert pc.proc is not None and registry.pid is not None and dist.pid is not None
            os.sync()
            started, cpu0 = time.monotonic(), ProcStats(pc.proc.pid).cpu_seconds()
            got, cpu = measured_get(pc_url, size, "cold GET via pullcache",
                                    pullcache=pc.proc.pid, registry=registry.pid)
            pc_stored = until_stored(lambda: fill_committed(pc, digest), started, pc.proc.pid,
                                     cpu0, "pullcache's fill")
            os.sync()
            started, cpu0 = time.monotonic(), ProcStats(dist.pid).cpu_seconds()
            got_dist, cpu_dist = measured_get(dist_url, size, "cold GET via Distribution's proxy",
                                              distribution=dist.pid, registry=registry.pid)
            dist_stored = until_stored(lambda: distribution_stored(dist, digest), started,
                                       dist.pid, cpu0, "Distribution's copy")
            os.sync()
            got_direct, cpu_direct = measured_get(direct_url, size, "direct GET from registry",
                                                  registry=registry.pid)
            if i == 0:
                note(f"warm-up round: pullcache {got.seconds:.2f}s, distribution "
                     f"{got_dist.seconds:.2f}s, direct {got_direct.seconds:.2f}s")
                continue
            cold_pc.append(got)
            cold_dist.append(got_dist)
            cold_direct.append(got_direct)
            for key, spent in (("pc", cpu), ("dist", cpu_dist), ("direct", cpu_direct)):
                cold_cpu[key].append(spent)
            stored["pc"].append(pc_stored)
            stored["dist"].append(dist_stored)
            note(f"cold round {i}: pullcache {got.seconds:.2f}s (ttfb {got.ttfb * 1000:.0f} ms, "
                 f"cpu {cpu['pullcache']:.2f}s; stored at {pc_stored[0]:.2f}s), "
                 f"distribution {got_dist.seconds:.2f}s (stored at {dist_stored[0]:.2f}s), "
                 f"direct {got_direct.seconds:.2f}s")
        fills = pc.events("fill_committed")[-args.rounds:]
        fill_seconds = [float(e.get("seconds", 0)) for e in fills]
        fill_verified = [float(e.get("verified_seconds", e.get("seconds", 0))) for e in fills]

        # -- warm: the blob is cached now (the last cold round committed it).
        hits0 = pc.metric("pullcache_requests_total", kind="blob", outcome="hit")
        curl_get(pc_url, size, "warm-up GET via pullcache")
        curl_get(nginx_url, size, "warm-up GET via nginx")
        if pc.metric("pullcache_requests_total", kind="blob", outcome="hit") - hits0 < 1:
            raise RuntimeError("warm GET was not a cache hit")
        warm_pc: list[Get] = []
        warm_nginx: list[Get] = []
        warm_cpu: list[float] = []
        warm_nginx_cpu: list[float] = []
        assert pc.proc is not None and nginx.proc is not None
        for _ in range(args.rounds):   # interleaved, so drift hits both alike
            cpu0 = cpu_seconds(pc.proc.pid)
            warm_pc.append(curl_get(pc_url, size, "warm GET via pullcache"))
            warm_cpu.append(cpu_seconds(pc.proc.pid) - cpu0)
            cpu0 = cpu_seconds(nginx.proc.pid)
            warm_nginx.append(curl_get(nginx_url, size, "warm GET via nginx"))
            warm_nginx_cpu.append(cpu_seconds(nginx.proc.pid) - cpu0)

        # -- herd warm (reference): N clients against cached pullcache, and against nginx.
        cpu0 = cpu_seconds(pc.proc.pid)
        herd_warm_pc = run_herd(pc_url, args.clients, size, hexdigest)
        herd_warm_pc_cpu = cpu_seconds(pc.proc.pid) - cpu0
        cpu0 = cpu_seconds(nginx.proc.pid)
        herd_warm_nginx = run_herd(nginx_url, args.clients, size, hexdigest)
        herd_warm_nginx_cpu = cpu_seconds(nginx.proc.pid) - cpu0
        pc.stop()
        shutil.rmtree(pc.cache_dir, ignore_errors=True)

        # -- herd: FaultProxy between pullcache and the registry, to count upstream GETs.
        proxy = FaultProxy(registry.url).start()
        cleanup.append(proxy.stop)
        pch = Pullcache(tmp / "pullcache-herd",
                        [UpstreamSpec(proxy.host, proxy.url, default=True)], cache=cache_cfg)
        cleanup.append(pch.stop)
        pch.start()
        pch_url = blob_url(pch.url, digest)
        # One cold GET on this same path (through the FaultProxy), the herd's fair baseline.
        cold_via_proxy = curl_get(pch_url, size, "cold GET via pullcache + faultproxy")
        fresh_cache(pch)
        assert pch.proc is not None
        proxy.reset_counts()
        with ProcStats(pch.proc.pid) as herd_stats:
            rss_before = herd_stats.rss()
            cpu0 = herd_stats.cpu_seconds()
            herd = run_herd(pch_url, args.clients, size, hexdigest)
            herd_cpu = herd_stats.cpu_seconds() - cpu0
            hwm = herd_stats.hwm()
        upstream_gets = proxy.count("GET", f"/blobs/{digest}")
        outcomes = {o: pch.metric("pullcache_requests_total", kind="blob", outcome=o)
                    for o in ("miss", "joined", "hit")}
        pch.stop()

        # -- report ------------------------------------------------------------------------
        label = f"{args.size_mib} MiB"
        pw_best, pw_med = best_median([g.mbps for g in warm_pc], higher_is_better=True)
        nw_best, nw_med = best_median([g.mbps for g in warm_nginx], higher_is_better=True)
        out(f"warm GET {label:<9}  pullcache {pw_best:6.0f} MB/s (median {pw_med:.0f})   "
            f"nginx {nw_best:6.0f} MB/s (median {nw_med:.0f})   "
            f"ratio {pw_best / nw_best:.2f} (median {pw_med / nw_med:.2f})   "
            f"server cpu/GET pullcache {statistics.median(warm_cpu):.2f} s "
            f"nginx {statistics.median(warm_nginx_cpu):.2f} s")

        pc_s = [g.seconds for g in cold_pc]
        di_s = [g.seconds for g in cold_direct]
        ds_s = [g.seconds for g in cold_dist]
        pcb, pcm = best_median(pc_s, higher_is_better=False)
        dib, dim = best_median(di_s, higher_is_better=False)
        dsb, dsm = best_median(ds_s, higher_is_better=False)
        out(f"cold GET {label:<9}  pullcache {pcm:6.2f} s {size / pcm / MB:5.0f} MB/s "
            f"(best {pcb:.2f} s)   distribution proxy {dsm:5.2f} s (best {dsb:.2f} s)   "
            f"direct {dim:5.2f} s {size / dim / MB:5.0f} MB/s (best {dib:.2f} s)   "
            f"pullcache/distribution {pcm / dsm:.2f} (goal <= 1.0)   pullcache/direct "
            f"{pcm / dim:.2f} (goal <= 2)   (medians of {args.rounds} fresh caches, after a "
            f"warm-up round)")
        ttfb_pc = statistics.median(g.ttfb for g in cold_pc)
        ttfb_di = statistics.median(g.ttfb for g in cold_direct)
        fill_med = statistics.median(fill_seconds) if fill_seconds else float("nan")
        verified_med = statistics.median(fill_verified) if fill_verified else float("nan")
        out(f"cold TTFB {label:<8}  pullcache {ttfb_pc * 1000:6.1f} ms   direct "
            f"{ttfb_di * 1000:6.1f} ms   fill {size / verified_med / MB:.0f} MB/s upstream->"
            f"verified ({verified_med:.2f} s; fsynced and committed at {fill_med:.2f} s)   "
            f"pullcache cpu {cpu_median(cold_cpu['pc'], 'pullcache'):.2f} s/GET "
            f"({cpu_median(cold_cpu['pc'], 'pullcache') * 2**30 / size:.2f} s per GiB)")
        # The machine's floor for each path: every process's CPU for the GET (server,
        # upstream registry, curl) spread perfectly over the cores.
        floors = []
        for key, name, server in (("pc", "pullcache", "pullcache"),
                                  ("dist", "distribution", "distribution"),
                                  ("direct", "direct", None)):
            parts = ([server] if server else []) + ["registry", "curl"]
            spent = {part: cpu_median(cold_cpu[key], part) for part in parts}
            total = sum(spent.values())
            floors.append(f"{name}: " + " + ".join(
                f"{'server' if part == server else part} {spent[part]:.2f}" for part in parts)
                + f" = {total:.2f} s, floor {total / os.cpu_count():.2f} s")
        out(f"cold CPU {label:<9}  cpu-seconds per GET (median), and the wall floor they set on "
            f"{os.cpu_count()} cores:   " + "   |   ".join(floors))
        kept = {key: (statistics.median(s for s, _ in stored[key]),
                      statistics.median(c for _, c in stored[key])) for key in stored}
        out(f"cold store {label:<7}  until the blob is in the cache (median from the GET's "
            f"start):   pullcache at {kept['pc'][0]:.2f} s, server cpu {kept['pc'][1]:.2f} s "
            f"({kept['pc'][1] * 2**30 / size:.2f} per GiB; 1 upstream GET, verified before the "
            f"client's last byte, fsynced)   |   distribution at {kept['dist'][0]:.2f} s, server "
            f"cpu {kept['dist'][1]:.2f} s ({kept['dist'][1] * 2**30 / size:.2f} per GiB; a second "
            f"upstream GET to store it, the client's bytes passed on unchecked)")

        ok = "yes" if herd.digests_ok == args.clients else f"NO ({herd.digests_ok}/{args.clients})"
        done = [g for g in herd.gets if g is not None]
        per_client = (f"{min(g.seconds for g in done):.2f}-{max(g.seconds for g in done):.2f} s"
                      if done else "-")
        out(f"herd {args.clients:>2} x {label:<7}  wall {herd.wall:6.2f} s   "
            f"x{herd.wall / pcm:.2f} one cold GET (x{herd.wall / cold_via_proxy.seconds:.2f} "
            f"via faultproxy, {cold_via_proxy.seconds:.2f} s)   upstream GETs {upstream_gets} "
            f"(goal 1)   sha256 all match: {ok}   peak RSS {mb(max(hwm, herd_stats.peak_rss)):.0f} MB "
            f"(VmHWM; {mb(rss_before):.0f} MB before)   "
            f"aggregate {args.clients * size / herd.wall / MB:.0f} MB/s   "
            f"per client {per_client}   pullcache cpu {herd_cpu:.2f} s")
        out(f"herd warm {args.clients:>2} x {label:<4}  pullcache {herd_warm_pc.wall:6.2f} s "
            f"{args.clients * size / herd_warm_pc.wall / MB:5.0f} MB/s   nginx "
            f"{herd_warm_nginx.wall:6.2f} s {args.clients * size / herd_warm_nginx.wall / MB:5.0f} MB/s"
            f"   ratio {herd_warm_nginx.wall / herd_warm_pc.wall:.2f}   cold herd / warm herd "
            f"x{herd.wall / herd_warm_pc.wall:.2f}   server cpu pullcache {herd_warm_pc_cpu:.2f} s "
            f"nginx {herd_warm_nginx_cpu:.2f} s   sha256 all match: "
            f"{'yes' if herd_warm_pc.digests_ok == herd_warm_nginx.digests_ok == args.clients else 'NO'}")
        problems = herd.errors + herd_warm_pc.errors + herd_warm_nginx.errors
        if outcomes["miss"] != 1 or outcomes["miss"] + outcomes["joined"] != args.clients:
            problems.append(f"herd request outcomes {outcomes} (expected 1 miss, "
                            f"{args.clients - 1} joined)")
        for problem in dict.fromkeys(problems):
            out(f"problem   {problem}")
        out(f"total     {time.monotonic() - t_run:.0f} s")
        return 1 if problems or upstream_gets != 1 else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.blob_throughput",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="blob size (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="warm/cold repetitions (default 3)")
    parser.add_argument("--clients", type=int, default=16, help="herd clients (default 16)")
    add_workdir_flags(parser)
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.rounds < 1 or args.clients < 1:
        parser.error("--size-mib, --rounds and --clients must be >= 1")
    for tool in ("curl", "openssl", "docker-registry", NGINX_BIN):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is required (make system-deps)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
