"""Debian's Prometheus on 127.0.0.1, scraping pullcache's admin listener, with
deploy/prometheus/alerts.yml loaded; and ``Monitored``, a pullcache under a small load
of every kind the dashboard and the alerts read (hits, misses, an upstream 429, Docker Hub
quota headers), for tests/e2e/test_monitoring.py and deploy/grafana/render.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from tests.support.binaries import require
from tests.support.daemon import ROOT, Pullcache, UpstreamSpec
from tests.support.faultproxy import FaultProxy
from tests.support.http import request
from tests.support.images import build_image, push
from tests.support.ports import free_port, wait_http, wait_until
from tests.support.quotaregistry import QuotaRegistry
from tests.support.registry import start_registry

ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/pullcache.json"
JOB = "pullcache"   # the alerts' PullcacheDown matches on it


class Prometheus:
    def __init__(self, workdir: Path, target: str, *, interval: str = "1s") -> None:
        binary = require("prometheus")
        self.binary, self.workdir, self.target, self.interval = binary, workdir, target, interval
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Prometheus":
        shutil.copy(ALERTS, self.workdir / "alerts.yml")
        config = self.workdir / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {self.interval}\n"
            f"  evaluation_interval: {self.interval}\n"
            "rule_files: [alerts.yml]\n"
            f"scrape_configs:\n  - job_name: {JOB}\n"
            f"    static_configs: [{{targets: ['{self.target}']}}]\n")
        log = (self.workdir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        wait_http(self.url + "/-/ready", timeout=30, ok_statuses=(200,))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            answer = json.load(resp)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.api("query_range", query=expr, start=str(start), end=str(end),
                        step=str(step))["result"]


class Monitored:
    """pullcache in front of a real registry (through a fault proxy) and a registry with
    Docker Hub's quota headers, scraped by Prometheus."""

    def __init__(self, workdir: Path, registry, proxy: FaultProxy, hub: QuotaRegistry) -> None:
        self.registry, self.proxy, self.hub = registry, proxy, hub
        self.pc = Pullcache(workdir / "pc", [
            UpstreamSpec(proxy.host, proxy.url, default=True,
                         extra={"breaker_failures": 1000}),
            UpstreamSpec(hub.host, hub.url)])
        self.pc.workdir.mkdir()
        self.prometheus: Prometheus | None = None
        self.images: list[tuple[str, object]] = []
        self.round = 0

    def load(self, images: int = 2) -> None:
        """One round: new images pulled twice (misses, then hits), one upstream 429, and
        one pull from the quota registry."""
        self.round += 1
        for i in range(images):
            repo = f"load/app{i}"
            image = build_image(f"mon-{self.round}-{i}", layer_sizes=(40_000 * (i + 1),))
            push(self.registry, repo, f"r{self.round}", image)
            self.images.append((f"{repo}:r{self.round}", image))
            for _ in range(2):
                assert request(self.pc.url, f"/v2/{repo}/manifests/r{self.round}").status == 200
                for blob in image.blobs():
                    assert request(self.pc.url, f"/v2/{repo}/blobs/{blob.digest}").status == 200
        self.proxy.set_fault("status", status=429, retry_after=1, match="/absent/manifests/",
                             times=1)
        assert request(self.pc.url, f"/v2/load/absent/manifests/r{self.round}").status == 429
        self.proxy.clear_fault()
        tag = f"q{self.round}"
        self.hub.put("lib/quota", build_image(f"mon-quota-{self.round}"), tag=tag)
        assert request(self.pc.url, f"/{self.hub.host}/v2/lib/quota/manifests/{tag}").status \
            in (200, 429)


@contextlib.contextmanager
def monitored(workdir: Path, *, interval: str = "1s") -> Iterator[Monitored]:
    with start_registry(workdir / "registry") as registry, \
            FaultProxy(registry.url) as proxy, \
            QuotaRegistry(limit=100, remaining=60, window=21600) as hub:
        world = Monitored(workdir, registry, proxy, hub)
        world.pc.start()
        prom_dir = workdir / "prometheus"
        prom_dir.mkdir()
        world.prometheus = Prometheus(prom_dir, f"127.0.0.1:{world.pc.admin_port}",
                                      interval=interval).start()
        try:
            yield world
        finally:
            world.prometheus.stop()
            world.pc.stop()


def dashboard_queries(rate_window: str = "15s") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in the dashboard, Grafana's variables filled."""
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], t["expr"].replace("$__rate_interval", rate_window))
            for panel in board["panels"] for t in panel["targets"]]


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="pullcache-monitoring-"))


__all__ = ["Monitored", "Prometheus", "dashboard_queries", "monitored", "wait_until"]
