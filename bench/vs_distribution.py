"""Pullcache vs Distribution's pull-through cache (docker-registry in proxy mode), side by side.

    python -m bench.vs_distribution [--size-mib 256] [--clients 16] [--rounds 2]

One origin (a plain docker-registry holding one image whose only layer is ``--size-mib`` of
random bytes) and two peers in front of it, each through its own counting FaultProxy:

* distribution: a second docker-registry with ``proxy: remoteurl: <its FaultProxy>``;
* pullcache:    ``python -m pullcache serve`` with that FaultProxy as its only upstream.

Each round empties both caches (stop, delete the storage, start) and then, peer by peer:

* herd:  N concurrent ``curl | openssl dgst -sha256`` GETs of the blob: wall time, the
         GETs of that blob the FaultProxy saw, every body's sha256, the peer's VmHWM;
* warm:  once the blob is committed, ``--warm-gets`` single GETs in a row: MB/s, the peer's
         CPU per GET, and what it still asked upstream.

Then, once, with both caches warm: 20 GETs of the manifest by tag in a row (what each peer
asks upstream for them; pullcache also with ``tag_ttl = 0``), and, after SIGKILLing the
origin, one GET of the manifest by tag and one of the blob through each peer, every curl
bounded by ``--max-time 60``.

Everything it starts (registries, FaultProxies, pullcache, curl, openssl) is stopped in a
``finally``; every file lives under one temp dir, removed at the end. A watchdog
(``--budget``, 230 s) stops the run, cleanly, if it goes over. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench._common import (MB, REPO, Herd, MiB, ProcStats, add_workdir_flags, best_median,
                           blob_url, curl_get, fill_committed, fresh_cache, header, mb, note,
                           out, run_herd, temp_workdir)
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.faultproxy import FaultProxy
from tests.support.images import MANIFEST_TYPES, build_raw_blob_image, push
from tests.support.ports import LOOPBACK, free_port
from tests.support.registry import Registry, start_registry, write_config

TAG = "latest"
ACCEPT = ", ".join(MANIFEST_TYPES)   # Distribution 2.8 answers an OCI manifest only if asked for
REVALIDATIONS = 20
OUTAGE_TIMEOUT = 60                  # seconds, per curl once the origin is gone
COMMIT_TIMEOUT = 30.0                # seconds to wait for Distribution to commit the herd's blob


# -- the peers ---------------------------------------------------------------------------------

def start_distribution_proxy(workdir: Path, remote_url: str) -> Registry:
    """docker-registry in proxy mode (``proxy: remoteurl:``), own storage, on 127.0.0.1.

    tests/support/registry.write_config merges its last argument into the top level of the
    config, so the proxy section goes in where the auth section would.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    for attempt in range(3):
        port = free_port()
        reg = Registry(url=f"http://{LOOPBACK}:{port}", host=f"{LOOPBACK}:{port}",
                       flavour="anonymous", username=None, password=None, storage=storage,
                       workdir=workdir,
                       config_path=write_config(workdir, port, storage,
                                                {"proxy": {"remoteurl": remote_url}}),
                       log_path=workdir / "registry.log")
        try:
            reg.start()
            return reg
        except RuntimeError as exc:
            if attempt < 2 and "address already in use" in str(exc):
                continue
            raise
    raise AssertionError("unreachable")


@dataclass
class Peer:
    """One cache under test: how to reach it, empty it, find its pid, see a committed blob."""
    name: str
    proxy: FaultProxy                       # between this peer and the origin
    base_url: Callable[[], str]
    pid: Callable[[], int | None]
    empty: Callable[[], None]               # stop, delete the cache, start (same port)
    committed: Callable[[str], bool]        # is this blob digest in the cache, for good?
    herds: list[Herd] = field(default_factory=list)
    herd_gets: list[int] = field(default_factory=list)
    herd_upstream: list[collections.Counter] = field(default_factory=list)
    herd_hwm: list[int] = field(default_factory=list)
    herd_rss_before: list[int] = field(default_factory=list)
    herd_cpu: list[float] = field(default_factory=list)
    herd_proxy_cpu: list[float] = field(default_factory=list)   # this process: the FaultProxy
    commit_lag: list[float | None] = field(default_factory=list)
    warm_first: list[float] = field(default_factory=list)      # MB/s, first GET after a herd
    warm_mbps: list[float] = field(default_factory=list)       # MB/s, every warm GET
    warm_cpu: list[float] = field(default_factory=list)        # peer's cpu s, every warm GET
    warm_upstream: list[int] = field(default_factory=list)     # per round, all its warm GETs


def empty_distribution(reg: Registry) -> None:
    """Stop Distribution's proxy, delete its storage, start it again (same port)."""
    reg.stop()
    shutil.rmtree(reg.storage, ignore_errors=True)
    reg.storage.mkdir()
    reg.start()


def distribution_stored(reg: Registry, digest: str) -> bool:
    """Is the blob in Distribution's proxy storage for good? The repository link is written
    by the commit, after the data file is in place."""
    algo, hexdigest = digest.split(":", 1)
    return (reg.storage / "docker/registry/v2/repositories" / REPO / "_layers" / algo
            / hexdigest / "link").exists()


def distribution_peer(reg: Registry, proxy: FaultProxy) -> Peer:
    def empty() -> None:
        empty_distribution(reg)

    return Peer("distribution", proxy, lambda: reg.url, lambda: reg.pid, empty,
                lambda digest: distribution_stored(reg, digest))


def pullcache_peer(pc: Pullcache, proxy: FaultProxy) -> Peer:
    return Peer("pullcache", proxy, lambda: pc.url, lambda: pc.proc.pid if pc.proc else None,
                lambda: fresh_cache(pc), lambda digest: fill_committed(pc, digest))


# -- one GET, whatever happens ------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """One curl that may fail: status 0 means no HTTP answer at all."""
    status: int
    size: int
    seconds: float
    sha256: str
    error: str                              # curl's own error, "" when curl exited 0
    headers: dict[str, str]                 # of the last response, names lower-case

    def describe(self, expected_sha: str) -> str:
        if self.error and self.status == 0:
            return f"FAILED after {self.seconds:.2f} s ({self.error})"
        text = f"HTTP {self.status} in {self.seconds * 1000:.0f} ms" if self.seconds < 1 else \
            f"HTTP {self.status} in {self.seconds:.2f} s"
        if self.status == 200:
            text += ", body sha256 " + ("ok" if self.sha256 == expected_sha else "WRONG")
        if self.error:
            text += f" ({self.error})"
        if "warning" in self.headers:
            text += f", Warning: {self.headers['warning']}"
        return text


def probe(url: str, header_file: Path, *, max_time: int, accept: str | None = None) -> Probe:
    """``curl URL | openssl dgst -sha256``, without ``-f``: an error answer is a result too."""
    cmd = ["curl", "-s", "-S", "--noproxy", "*", "--max-time", str(max_time),
           "-D", str(header_file), "-o", "-",
           "-w", "%{stderr}\n%{http_code} %{size_download} %{time_total}"]
    if accept:
        cmd += ["-H", f"Accept: {accept}"]
    header_file.unlink(missing_ok=True)
    began = time.monotonic()
    curl = subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dgst = subprocess.Popen(["openssl", "dgst", "-sha256", "-r"], stdin=curl.stdout,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert curl.stdout is not None and curl.stderr is not None
    curl.stdout.close()
    try:
        digest_out, _ = dgst.communicate(timeout=max_time + 10)
        err = curl.stderr.read().decode(errors="replace")
        curl.wait(timeout=10)
    finally:
        for proc in (curl, dgst):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    wall = time.monotonic() - began
    lines = err.strip().splitlines()
    try:
        code, size, total = lines[-1].split()
        status, nbytes, seconds = int(code), int(size), float(total)
        lines = lines[:-1]
    except (IndexError, ValueError):
        status, nbytes, seconds = 0, 0, wall
    headers: dict[str, str] = {}
    if header_file.exists():
        block = header_file.read_text(errors="replace").replace("\r\n", "\n").strip()
        for line in block.split("\n\n")[-1].splitlines()[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    error = " ".join(lines).strip()
    if curl.returncode and not error:
        error = f"curl exited {curl.returncode}"
    return Probe(status, nbytes, seconds, digest_out.decode().split()[0] if digest_out else "",
                 error, headers)


def upstream_requests(proxy: FaultProxy) -> collections.Counter:
    """What the FaultProxy saw, as ``(method, what)``: what is ``/v2/`` (a ping), ``tag``
    or ``digest`` (a manifest by tag or by digest), ``blob``, or else the path itself."""
    seen: collections.Counter = collections.Counter()
    for method, path in proxy.requests:
        path = path.split("?")[0]
        if path in ("/v2", "/v2/"):
            what = "/v2/"
        elif "/manifests/" in path:
            what = "digest" if ":" in path.rsplit("/", 1)[1] else "tag"
        else:
            what = "blob" if "/blobs/" in path else path
        seen[(method, what)] += 1
    return seen


def show_requests(seen: collections.Counter) -> str:
    if not seen:
        return "none"
    return ", ".join(f"{method} {what} {n}" for (method, what), n in
                     sorted(seen.items(), key=lambda kv: (-kv[1], kv[0])))


def csv(values: list[int]) -> str:
    return ",".join(map(str, values))


def ratio(a: float, b: float) -> str:
    if b == 0:
        return "n/a (x/0)" if a else "n/a (0/0)"
    return f"{a / b:.2f}"


# -- the run -----------------------------------------------------------------------------------

class Overtime(Exception):
    pass


@contextlib.contextmanager
def budget(seconds: int) -> Iterator[None]:
    """Overtime raised in the run once ``seconds`` are up (SIGALRM), so that a wedged peer
    still ends in the clean-up."""
    def overtime(signum: int, frame: object) -> None:
        raise Overtime(f"run went over its --budget of {seconds} s")
    signal.signal(signal.SIGALRM, overtime)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)


def run(args: argparse.Namespace) -> int:
    size = args.size_mib * MiB
    for line in header(size, args, nginx=False):
        out(line)
    t_run = time.monotonic()
    problems: list[str] = []
    # Exited right to left: the alarm is off before the tear-down starts.
    with temp_workdir("pullcache-bench-peer-", tmpdir=args.tmpdir,
                      keep=args.keep) as (tmp, cleanup), budget(args.budget):
        # -- the origin, and one FaultProxy in front of it per peer.
        t0 = time.monotonic()
        image = build_raw_blob_image(f"bench-peer-{args.size_mib}", size)
        layer = image.layers[0]
        digest, hexdigest = layer.digest, layer.digest.split(":", 1)[1]
        manifest_sha = image.digest.split(":", 1)[1]
        origin = start_registry(tmp / "origin")
        cleanup.append(origin.stop)
        push(origin, REPO, TAG, image)
        del image, layer
        note(f"built and pushed {digest} in {time.monotonic() - t0:.1f}s")

        fp_dist = FaultProxy(origin.url).start()
        cleanup.append(fp_dist.stop)
        fp_pc = FaultProxy(origin.url).start()
        cleanup.append(fp_pc.stop)

        dist = start_distribution_proxy(tmp / "distribution", fp_dist.url)
        cleanup.append(dist.stop)
        pc_spec = UpstreamSpec(fp_pc.host, fp_pc.url, default=True)
        pc = Pullcache(tmp / "pullcache", [pc_spec],
                       cache={"max_size": f"{max(4 * size, 4 * 2**30)}"})
        (tmp / "pullcache").mkdir()
        cleanup.append(pc.stop)
        pc.start()
        peers = [distribution_peer(dist, fp_dist), pullcache_peer(pc, fp_pc)]
        by_name = {p.name: p for p in peers}

        # -- rounds: empty caches, herd, warm GET; the peers take turns going first.
        for rnd in range(args.rounds):
            order = peers if rnd % 2 == 0 else peers[::-1]
            for peer in order:
                peer.empty()
                pid = peer.pid()
                assert pid is not None
                url = blob_url(peer.base_url(), digest)
                peer.proxy.reset_counts()
                with ProcStats(pid) as stats:
                    rss_before = stats.rss()
                    cpu0, own0 = stats.cpu_seconds(), time.process_time()
                    herd = run_herd(url, args.clients, size, hexdigest)
                    herd_end = time.monotonic()
                    peer.herd_cpu.append(stats.cpu_seconds() - cpu0)
                    peer.herd_proxy_cpu.append(time.process_time() - own0)
                    peer.herd_hwm.append(max(stats.hwm(), stats.peak_rss))
                peer.herd_rss_before.append(rss_before)
                peer.herds.append(herd)
                peer.herd_gets.append(peer.proxy.count("GET", f"/blobs/{digest}"))
                peer.herd_upstream.append(upstream_requests(peer.proxy))
                # Warm: once the blob is committed (Distribution stores it in the background).
                deadline = herd_end + COMMIT_TIMEOUT
                while not peer.committed(digest) and time.monotonic() < deadline:
                    time.sleep(0.02)
                lag = time.monotonic() - herd_end if peer.committed(digest) else None
                peer.commit_lag.append(lag)
                peer.proxy.reset_counts()
                warm = []
                for _ in range(args.warm_gets):
                    cpu0 = ProcStats(pid).cpu_seconds()
                    warm.append(curl_get(url, size, f"warm GET via {peer.name}").mbps)
                    peer.warm_cpu.append(ProcStats(pid).cpu_seconds() - cpu0)
                peer.warm_first.append(warm[0])
                peer.warm_mbps += warm
                peer.warm_upstream.append(len(peer.proxy.requests))
                note(f"round {rnd + 1} {peer.name}: herd {herd.wall:.2f}s, upstream "
                     f"{show_requests(peer.herd_upstream[-1])}, sha256 ok "
                     f"{herd.digests_ok}/{args.clients}, VmHWM {mb(peer.herd_hwm[-1]):.0f} MB, "
                     f"committed {'+%.2fs' % lag if lag is not None else 'NOT'}, warm "
                     f"{' '.join(f'{x:.0f}' for x in warm)} MB/s "
                     f"({peer.warm_upstream[-1]} upstream requests)")
                problems += [f"{peer.name} herd round {rnd + 1}: {e}" for e in herd.errors]
                if lag is None:
                    problems.append(f"{peer.name}: blob not committed {COMMIT_TIMEOUT:.0f} s "
                                    f"after herd round {rnd + 1}")

        # -- manifest revalidation: both caches hold the blob; one GET by tag fills the
        # manifest, then 20 in a row, counting what reaches each FaultProxy.
        hdr = tmp / "headers"
        first: dict[str, tuple[Probe, collections.Counter]] = {}
        reval: dict[str, tuple[list[Probe], collections.Counter]] = {}

        def revalidate(key: str, peer: Peer) -> None:
            url = f"{peer.base_url()}/v2/{REPO}/manifests/{TAG}"
            peer.proxy.reset_counts()
            got = probe(url, hdr, max_time=OUTAGE_TIMEOUT, accept=ACCEPT)
            first[key] = (got, upstream_requests(peer.proxy))
            if got.status != 200 or got.sha256 != manifest_sha:
                problems.append(f"{key}: first manifest GET by tag: {got.describe(manifest_sha)}")
            peer.proxy.reset_counts()
            gets = [probe(url, hdr, max_time=OUTAGE_TIMEOUT, accept=ACCEPT)
                    for _ in range(REVALIDATIONS)]
            reval[key] = (gets, upstream_requests(peer.proxy))
            bad = [g for g in gets if g.status != 200 or g.sha256 != manifest_sha]
            if bad:
                problems.append(f"{key}: {len(bad)}/{REVALIDATIONS} manifest GETs by tag "
                                f"went wrong, e.g. {bad[0].describe(manifest_sha)}")

        revalidate("distribution", by_name["distribution"])
        revalidate("pullcache", by_name["pullcache"])
        pc_spec.extra["tag_ttl"] = 0
        pc_spec.extra["stale_while_revalidate"] = "0s"   # revalidate every GET, in line
        pc.stop()
        pc.start()
        revalidate("pullcache tag_ttl=0", by_name["pullcache"])

        # -- outage: the origin is SIGKILLed; the FaultProxies stay (and answer 502).
        assert origin.pid is not None
        os.kill(origin.pid, signal.SIGKILL)
        origin.stop()                     # reaps it
        outage: dict[str, tuple[Probe, Probe, collections.Counter]] = {}

        def outage_pull(key: str, peer: Peer) -> None:
            peer.proxy.reset_counts()
            man = probe(f"{peer.base_url()}/v2/{REPO}/manifests/{TAG}", hdr,
                        max_time=OUTAGE_TIMEOUT, accept=ACCEPT)
            blob = probe(blob_url(peer.base_url(), digest), hdr, max_time=OUTAGE_TIMEOUT)
            outage[key] = (man, blob, upstream_requests(peer.proxy))
            note(f"outage {key}: manifest {man.describe(manifest_sha)}; "
                 f"blob {blob.describe(hexdigest)}")

        outage_pull("distribution", by_name["distribution"])
        outage_pull("pullcache tag_ttl=0", by_name["pullcache"])
        del pc_spec.extra["tag_ttl"], pc_spec.extra["stale_while_revalidate"]
        pc.stop()
        pc.start()
        outage_pull("pullcache", by_name["pullcache"])

        # -- report ------------------------------------------------------------------------
        d, p = by_name["distribution"], by_name["pullcache"]
        label = f"{args.clients} x {args.size_mib} MiB"
        n = args.rounds
        dw = statistics.median(h.wall for h in d.herds)
        pw = statistics.median(h.wall for h in p.herds)
        out(f"herd wall {label:<14}  pullcache {pw:6.2f} s   distribution {dw:6.2f} s   "
            f"ratio {ratio(pw, dw)}   (medians of {n} empty caches; best "
            f"{min(h.wall for h in p.herds):.2f} / {min(h.wall for h in d.herds):.2f} s; "
            f"aggregate {args.clients * size / pw / MB:.0f} / {args.clients * size / dw / MB:.0f}"
            f" MB/s; FaultProxy cpu {statistics.median(p.herd_proxy_cpu):.2f} / "
            f"{statistics.median(d.herd_proxy_cpu):.2f} s)")
        out(f"herd upstream blob GETs    pullcache {csv(p.herd_gets):>6}     "
            f"distribution {csv(d.herd_gets):>6}     "
            f"ratio {ratio(max(p.herd_gets), max(d.herd_gets))}   (per round; pullcache goal 1; "
            f"{mb(max(p.herd_gets) * size):.0f} / {mb(max(d.herd_gets) * size):.0f} MB from "
            f"origin; every upstream request, last round: {show_requests(p.herd_upstream[-1])}"
            f" / {show_requests(d.herd_upstream[-1])})")

        def matched(peer: Peer) -> str:
            ok = sum(h.digests_ok for h in peer.herds)
            return f"{'yes' if ok == n * args.clients else 'NO'} ({ok}/{n * args.clients})"
        out(f"herd bodies sha256 match   pullcache {matched(p)}   distribution {matched(d)}")
        out(f"herd peak RSS              pullcache {mb(max(p.herd_hwm)):6.0f} MB  "
            f"distribution {mb(max(d.herd_hwm)):6.0f} MB  "
            f"ratio {ratio(max(p.herd_hwm), max(d.herd_hwm))}   (VmHWM, max of {n} rounds; "
            f"before the herd {mb(max(p.herd_rss_before)):.0f} / "
            f"{mb(max(d.herd_rss_before)):.0f} MB; server cpu "
            f"{statistics.median(p.herd_cpu):.2f} / {statistics.median(d.herd_cpu):.2f} s)")
        pwb, pwm = best_median(p.warm_mbps, higher_is_better=True)
        dwb, dwm = best_median(d.warm_mbps, higher_is_better=True)
        pwf, dwf = statistics.median(p.warm_first), statistics.median(d.warm_first)
        lags = [f"+{x:.2f} s" if x is not None else "never" for x in d.commit_lag]
        out(f"warm GET {args.size_mib} MiB after herd  pullcache {pwm:6.0f} MB/s  distribution "
            f"{dwm:6.0f} MB/s  ratio {ratio(pwm, dwm)}   (medians of {n} x {args.warm_gets} "
            f"GETs; best {pwb:.0f} / {dwb:.0f}; first GET after the herd {pwf:.0f} / {dwf:.0f};"
            f" server cpu/GET {statistics.median(p.warm_cpu):.2f} / "
            f"{statistics.median(d.warm_cpu):.2f} s; upstream requests "
            f"{csv(p.warm_upstream)} / {csv(d.warm_upstream)}; "
            f"distribution committed the blob {', '.join(lags)} after its herd)")

        def reval_count(key: str) -> int:
            return sum(reval[key][1].values())

        def reval_ms(key: str) -> float:
            return statistics.median(g.seconds for g in reval[key][0]) * 1000
        out(f"manifest by tag x{REVALIDATIONS} upstream  pullcache {reval_count('pullcache'):3d} "
            f"(tag_ttl 5m: {show_requests(reval['pullcache'][1])})   distribution "
            f"{reval_count('distribution'):3d} ({show_requests(reval['distribution'][1])})   "
            f"ratio {ratio(reval_count('pullcache'), reval_count('distribution'))}   "
            f"pullcache tag_ttl=0: {reval_count('pullcache tag_ttl=0')} "
            f"({show_requests(reval['pullcache tag_ttl=0'][1])}), ratio "
            f"{ratio(reval_count('pullcache tag_ttl=0'), reval_count('distribution'))}")
        out(f"manifest by tag latency    pullcache {reval_ms('pullcache'):5.1f} ms   "
            f"distribution {reval_ms('distribution'):5.1f} ms   "
            f"ratio {ratio(reval_ms('pullcache'), reval_ms('distribution'))}   "
            f"pullcache tag_ttl=0 {reval_ms('pullcache tag_ttl=0'):.1f} ms   (median curl "
            f"time_total of {REVALIDATIONS}; first GET, filling the manifest: "
            f"{first['pullcache'][0].seconds * 1000:.0f} / "
            f"{first['distribution'][0].seconds * 1000:.0f} ms, upstream "
            f"{show_requests(first['pullcache'][1])} / {show_requests(first['distribution'][1])})")

        def outage_line(what: str, idx: int, expected: str) -> None:
            pg, dg, pz = outage["pullcache"][idx], outage["distribution"][idx], \
                outage["pullcache tag_ttl=0"][idx]
            both = pg.status == dg.status == 200
            out(f"origin down: {what:<13}  pullcache {pg.describe(expected)}   "
                f"distribution {dg.describe(expected)}   "
                + (f"time ratio {ratio(pg.seconds, dg.seconds)}   " if both else "")
                + f"pullcache tag_ttl=0 {pz.describe(expected)}")
        outage_line("manifest tag", 0, manifest_sha)
        outage_line(f"blob {args.size_mib} MiB", 1, hexdigest)
        out(f"origin down: upstream     pullcache {show_requests(outage['pullcache'][2])}   "
            f"distribution {show_requests(outage['distribution'][2])}   pullcache tag_ttl=0 "
            f"{show_requests(outage['pullcache tag_ttl=0'][2])}   (requests that reached "
            f"each FaultProxy, answered 502 with the origin gone)")

        # -- what pullcache promises; Distribution's figures are findings, not failures.
        if any(g != 1 for g in p.herd_gets):
            problems.append(f"pullcache herd: upstream GETs {p.herd_gets} (goal 1 per round)")
        if reval_count("pullcache"):
            problems.append("pullcache: manifest GETs by tag within tag_ttl reached upstream: "
                            + show_requests(reval["pullcache"][1]))
        zero = reval["pullcache tag_ttl=0"][1]
        if any(m != "HEAD" for m, _ in zero):
            problems.append("pullcache tag_ttl=0: revalidation did more than HEAD: "
                            + show_requests(zero))
        for key, (man, blob, _) in outage.items():
            if man.status != 200 or man.sha256 != manifest_sha:
                problems.append(f"{key}, origin down: manifest {man.describe(manifest_sha)}")
            if blob.status != 200 or blob.sha256 != hexdigest:
                problems.append(f"{key}, origin down: blob {blob.describe(hexdigest)}")
        for problem in dict.fromkeys(problems):
            out(f"problem   {problem}")
        out(f"total     {time.monotonic() - t_run:.0f} s")
        return 1 if any(x.startswith("pullcache") for x in problems) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vs_distribution",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="blob size (default 256)")
    parser.add_argument("--clients", type=int, default=16, help="herd clients (default 16)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="empty-cache herd + warm GET repetitions (default 2)")
    parser.add_argument("--warm-gets", type=int, default=3,
                        help="single GETs of the cached blob after each herd (default 3)")
    parser.add_argument("--budget", type=int, default=230,
                        help="stop (and clean up) after this many seconds (default 230)")
    add_workdir_flags(parser)
    args = parser.parse_args(argv)
    if min(args.size_mib, args.rounds, args.clients, args.warm_gets, args.budget) < 1:
        parser.error("--size-mib, --rounds, --clients, --warm-gets and --budget must be >= 1")
    for tool in ("curl", "openssl", "docker-registry"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is required (make system-deps)")
    try:
        return run(args)
    except Overtime as exc:
        print(f"vs_distribution: {exc}; everything it started has been stopped", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
