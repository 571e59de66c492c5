"""Docker Hub's pull quota, acted on: warned of at 10% left, and at 0 no manifest request
goes out until the window has moved on (stale tags served as they are, uncached tags answered
429 with a Retry-After, a warm stopped), against a registry that answers as Docker Hub does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.daemon import ROOT, UpstreamSpec
from tests.support.http import request
from tests.support.images import build_image
from tests.support.ports import wait_until
from tests.support.quotaregistry import QuotaRegistry

RESET = 120


@pytest.fixture
def hub():
    with QuotaRegistry(limit=20, remaining=2, window=21600, reset=RESET) as up:
        for tag in ("v1", "v2", "v3", "v4", "v5"):
            up.put("lib/app", build_image(f"quota-{tag}", layer_sizes=(2_000,)), tag=tag)
        yield up


def readyz(pc) -> dict:
    return request(pc.admin_url, "/readyz").json()


def test_quota_low_warns_in_the_log_and_readyz(make_pullcache, hub):
    pc = make_pullcache(UpstreamSpec(hub.host, hub.url))
    assert request(pc.url, "/v2/lib/app/manifests/v1").status == 200
    # 1 of 20 left: at most 10%, so the log warns and /readyz says so (still ready).
    ready = readyz(pc)
    assert ready["status"] == "ok"
    assert ready["detail"] == [f"{hub.host}: pull quota low, 1 of 20 left"]
    warned = [e for e in pc.events("ratelimit_changed") if e["level"] == "warning"]
    assert warned and warned[-1]["remaining"] == 1 and warned[-1]["low"] is True


@pytest.fixture
def spent(make_pullcache, hub):
    """pullcache after the last pull of the quota: v1 and v2 cached, tag_ttl 1 s."""
    pc = make_pullcache(UpstreamSpec(hub.host, hub.url, extra={
        "tag_ttl": "1s", "stale_while_revalidate": "0s"}))
    first = request(pc.url, "/v2/lib/app/manifests/v1")
    assert first.status == 200
    assert request(pc.url, "/v2/lib/app/manifests/v2").status == 200   # the last pull
    assert hub.remaining == 0
    return pc, first, hub.manifest_requests()


def test_quota_spent_answers_uncached_tags_429_without_asking(spent, hub):
    pc, _, asked = spent
    refused = request(pc.url, "/v2/lib/app/manifests/v3")
    assert hub.manifest_requests() == asked, hub.requests[asked - 2:]
    assert refused.status == 429
    assert refused.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    # The window's reset, not a guess.
    assert RESET - 10 <= int(refused.headers["retry-after"]) <= RESET
    assert "pull quota spent" in readyz(pc)["detail"][0]


def test_quota_spent_serves_stale_tags_without_asking(spent, hub):
    pc, first, asked = spent
    # v1 past its tag_ttl: served stale, without asking.
    wait_until(lambda: request(pc.url, "/v2/lib/app/manifests/v1").status == 200
               and pc.events("served_stale"), timeout=10, what="v1 served stale")
    stale = request(pc.url, "/v2/lib/app/manifests/v1")
    assert stale.status == 200 and stale.body == first.body
    assert hub.manifest_requests() == asked, hub.requests[asked - 2:]


def test_warm_stops_when_the_quota_is_spent_and_says_why(make_pullcache, hub):
    hub.remaining = 0
    pc = make_pullcache(UpstreamSpec(hub.host, hub.url))
    done = subprocess.run(
        [sys.executable, "-m", "pullcache", "warm", "--json", "--config",
         str(pc.workdir / "pullcache.toml")] + [f"{hub.host}/lib/app:{t}"
                                                for t in ("v1", "v2", "v3", "v4", "v5")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stderr
    images = json.loads(done.stdout)["images"]
    assert [i["state"] for i in images] == ["failed"] * 5
    assert all("TOOMANYREQUESTS" in i["error"] for i in images), images
    assert sum(i["error"].startswith("not tried: ") for i in images) >= 3, images
    assert "quota spent" in done.stderr
    # The first answer said 0 left: no manifest GET was sent at all.
    gets = [p for m, p in hub.requests if m == "GET" and "/manifests/" in p]
    assert gets == [], hub.requests
