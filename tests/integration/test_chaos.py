"""Chaos soak: 50 clients pull 20 images through pullcache while a fault proxy in front of
the real registry injects random faults and the daemon is SIGKILLed and restarted midway:
real skopeo processes, and Python clients making the requests of every client class (dockerd,
containerd, containers/image, OCI-only), each with its own Accept list. Nothing wrong is ever
served, no client sees a 500, nothing is left behind.

Bounded for ``make test`` by ``CHAOS_SECONDS`` (default 30; about a minute with the
checks); ``bench/chaos_soak.py`` runs the same soak longer and prints its figures.
"""

from __future__ import annotations

import os

import pytest

from tests.support.aftermath import aftermath, vitals
from tests.support.chaos import Chaos
from tests.support.daemon import UpstreamSpec
from tests.support.faultproxy import FaultProxy
from tests.support.http import request
from tests.support.soak import CLIENT_CLASSES, REPO, SOAK_MAX_SIZE, SOAK_UPSTREAM, Soak, \
    build_soak_images, push_soak_images

SECONDS = float(os.environ.get("CHAOS_SECONDS", "30"))


@pytest.fixture(scope="module")
def soak_images(registry):
    images = build_soak_images()
    push_soak_images(registry, images)
    return images


def test_chaos_soak_with_sigkill(make_pullcache, registry, soak_images, tmp_path):
    with FaultProxy(registry.url) as proxy:
        pc = make_pullcache(UpstreamSpec(proxy.host, proxy.url, extra=SOAK_UPSTREAM),
                            max_size=SOAK_MAX_SIZE)
        base = vitals(pc)
        proxy.chaos = chaos = Chaos(seed=13, rate=0.15)
        soak = Soak(pc, soak_images, clients=50, skopeo_clients=4, seconds=SECONDS,
                    kill_at=SECONDS / 2, workdir=tmp_path / "clients")
        result = soak.run()
        proxy.chaos = None
        faults = chaos.snapshot()
        summary = (f"pulls={dict(result.pulls)} faults={faults} statuses={dict(result.statuses)}"
                   f" soak={result.seconds:.0f}s drain={result.drain_seconds:.0f}s"
                   f" errors={result.errors[:3]}")
        print(summary)

        # Every pull that reported success was digest-correct; none was complete and wrong.
        assert not result.wrong, f"wrong bytes served: {result.wrong[:5]} ({summary})"
        # Every client class completed pulls (a class that only failed proves nothing).
        for klass in CLIENT_CLASSES:
            assert result.pulls[f"{klass.name}_ok"] > 0, (klass.name, summary)
        assert result.pulls["skopeo_ok"] > 0, summary
        assert result.restarts == 1
        assert len(pc.events("cache_reconciled")) == 2   # the restart reconciled
        # The storm was real: most kinds struck.
        assert sum(faults.values()) >= 20 and len(faults) >= 6, summary
        # No client saw a 500 (the access log of both processes is read by aftermath).
        assert 500 not in result.statuses, summary
        # After the storm: every image pulls byte-exact, the cache verifies, no 500 in the
        # access log of either run, fds/tasks/temp files back to baseline, the peak RSS of
        # both daemon processes (the SIGKILLed one and its successor) bounded.
        after = aftermath(pc, soak, base)
        print(f"peak RSS MiB: {[k // 1024 for k in result.killed_rss_peaks_kib]} then "
              f"{after.vitals.rss_peak_kib // 1024}")
        assert len(result.killed_rss_peaks_kib) == 1
        assert after.verify.checked >= len(soak_images)
        assert not after.problems, (after.problems, base, after.vitals, summary)


def test_fault_proxy_chaos_injects_every_kind(registry, soak_images):
    """The chaos plan is seeded and covers every kind it was given."""
    with FaultProxy(registry.url) as proxy:
        proxy.chaos = chaos = Chaos(seed=3, rate=1.0, stall_seconds=0.1, drip_seconds=0.1)
        image = soak_images[5]
        statuses = set()
        for _ in range(60):
            for path in (f"/v2/{REPO}/manifests/{image.digest}",
                         f"/v2/{REPO}/blobs/{image.layers[1].digest}"):
                try:
                    statuses.add(request(proxy.url, path, timeout=10).status)
                except Exception:   # noqa: BLE001 - resets and short bodies end the transfer
                    statuses.add("cut")
        counts = chaos.snapshot()
        assert {"reset", "stall", "drip", "garbage", "short"} <= set(counts), counts
        assert {"status_500", "status_429_ra", "status_503"} <= set(counts), counts
        assert {500, 502, 503, 429, 200, "cut"} <= statuses
