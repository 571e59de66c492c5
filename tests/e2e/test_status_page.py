"""The status page in a real browser: Debian's headless chromium loads it from the admin
listener after pulls, runs its JS (which polls /admin/status), and the test reads the
figures from the dumped DOM; a screenshot is taken too."""

from __future__ import annotations

import html
import re
import subprocess


from pullcache.build import build_info
from tests.integration.test_cache_engine import Download
from tests.support.binaries import require
from tests.support.daemon import UpstreamSpec
from tests.support.http import request
from tests.support.images import build_image, build_raw_blob_image, push

MiB = 1024 * 1024


def browse(url: str, profile, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require("chromium", "chromium-browser"), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--virtual-time-budget=5000", *extra, url],
        capture_output=True, text=True, timeout=120)


def js_size(n: float) -> str:
    """The page's ``size()``, to compare what it shows."""
    units, i = ["B", "KiB", "MiB", "GiB", "TiB"], 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.{1 if n < 100 else 0}f} {units[i]}" if i else f"{n:g} {units[i]}"


def text_of(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>(.*?)</(?:b|span|table|p)>', dom, re.S)
    assert m, f"#{element_id} not in the page"
    return html.unescape(re.sub(r"<[^>]+>", " ", m.group(1))).strip()


def test_status_page_shows_the_daemons_figures(make_pullcache, registry, fault_proxy,
                                               tmp_path):
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url))
    image = build_image("page", layer_sizes=(300_000,))
    push(registry, "ops/page", "v1", image)
    for _ in range(3):
        assert request(pc.url, "/v2/ops/page/manifests/v1").status == 200
        for blob in image.blobs():
            assert request(pc.url, f"/v2/ops/page/blobs/{blob.digest}").status == 200
    # One fill held in flight, so the page has a progress bar to draw.
    big = build_raw_blob_image("page-big", 4 * MiB)
    push(registry, "ops/big", "v1", big)
    layer = big.layers[0]
    fault_proxy.set_fault("stall", match=layer.digest, at_byte=MiB, times=1)
    pull = Download(pc.host, f"/v2/ops/big/blobs/{layer.digest}")
    pull.start()
    try:
        assert fault_proxy.stalled.wait(30) and pull.first_byte.wait(30)
        stats = request(pc.admin_url, "/admin/stats").json()
        shot = tmp_path / "status.png"
        dumped = browse(pc.admin_url + "/", tmp_path / "profile", "--dump-dom")
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        shown = browse(pc.admin_url + "/", tmp_path / "profile2", "--window-size=1280,1100",
                       f"--screenshot={shot}")
        assert shown.returncode == 0, shown.stderr[-2000:]
    finally:
        fault_proxy.release()
        fault_proxy.clear_fault()
        pull.join(30)
    dom = dumped.stdout
    assert text_of(dom, "hit-ratio") == f"{stats['hit_ratio'] * 100:.1f}%"
    # 3 pulls of (manifest, config, layer): 3 misses then 6 hits; the held fill: 1 miss.
    assert stats["hits"] == 6 and stats["misses"] == 4
    assert text_of(dom, "bytes-used") == js_size(stats["bytes"])
    assert text_of(dom, "budget") == "4.0 GiB"
    assert text_of(dom, "version") == f"version {build_info()['version']}"
    assert text_of(dom, "requests").startswith("10 requests (6 hits, 4 misses)")
    top = text_of(dom, "top-images")
    assert f"{fault_proxy.host}/ops/page 3" in " ".join(top.split())
    upstreams = " ".join(text_of(dom, "upstreams").split())
    assert f"{fault_proxy.host} closed" in upstreams
    fills = text_of(dom, "fills")
    assert layer.digest[:19] in fills and "/ 4.0 MiB" in fills
    assert re.search(r'<div class="bar"><div style="width:(2[0-9]|[3-9][0-9])(\.\d)?%"', dom), \
        "the in-flight fill's progress bar"
    assert re.search(r'<svg id="chart"[^>]*>.*<rect[^>]*fill="#d97706"', dom, re.S), \
        "the last hour's chart: bytes from upstream"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pull.digest == layer.digest
