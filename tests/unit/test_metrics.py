"""pullcache.metrics: Docker Hub rate-limit headers and fill outcome counters."""

from __future__ import annotations

import pytest

from pullcache.metrics import Metrics


@pytest.fixture
def metrics():
    return Metrics()


def sample(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_rate_limit_parses_docker_hub_headers_and_sets_gauges(metrics):
    headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}
    assert metrics.rate_limit("docker.io", headers) == 76.0
    assert sample(metrics, "pullcache_upstream_ratelimit_limit", upstream="docker.io") == 100
    assert sample(metrics, "pullcache_upstream_ratelimit_remaining", upstream="docker.io") == 76


def test_rate_limit_returns_remaining_only_when_it_changed(metrics):
    assert metrics.rate_limit("docker.io", {"ratelimit-remaining": "10;w=21600"}) == 10
    assert metrics.rate_limit("docker.io", {"ratelimit-remaining": "10;w=21600"}) is None
    assert metrics.rate_limit("docker.io", {"ratelimit-remaining": "9"}) == 9
    assert sample(metrics, "pullcache_upstream_ratelimit_remaining", upstream="docker.io") == 9
    # Tracked per upstream.
    assert metrics.rate_limit("other.io", {"ratelimit-remaining": "9"}) == 9


def test_rate_limit_zero_remaining_is_a_value(metrics):
    assert metrics.rate_limit("docker.io", {"ratelimit-remaining": "0;w=21600"}) == 0.0


@pytest.mark.parametrize("headers", [{}, {"ratelimit-remaining": ""},
                                     {"ratelimit-remaining": "lots"}])
def test_rate_limit_without_usable_headers(metrics, headers):
    assert metrics.rate_limit("docker.io", headers) is None
    assert sample(metrics, "pullcache_upstream_ratelimit_remaining", upstream="docker.io") is None


def test_rate_limit_limit_alone_sets_only_the_limit(metrics):
    assert metrics.rate_limit("docker.io", {"ratelimit-limit": " 200;w=21600"}) is None
    assert sample(metrics, "pullcache_upstream_ratelimit_limit", upstream="docker.io") == 200


def test_fill_events(metrics):
    for event in ("committed", "committed", "failed", "digest_mismatch", "unknown"):
        metrics.fill_event(event, bytes=1)
    assert sample(metrics, "pullcache_fills_total", result="committed") == 2
    assert sample(metrics, "pullcache_fills_total", result="failed") == 1
    assert sample(metrics, "pullcache_fills_total", result="digest_mismatch") is None
    assert sample(metrics, "pullcache_digest_mismatches_total") == 1


def test_observer_methods(metrics):
    metrics.fetched("docker.io", 1000)
    metrics.fetched("docker.io", 24)
    metrics.token_refreshed("docker.io")
    metrics.requested("docker.io", "GET", "200", 0.02)
    assert sample(metrics, "pullcache_upstream_fetched_bytes_total", upstream="docker.io") == 1024
    assert sample(metrics, "pullcache_token_refreshes_total", upstream="docker.io") == 1
    assert sample(metrics, "pullcache_upstream_request_seconds_count",
                  upstream="docker.io", method="GET", status="200") == 1


def test_each_metrics_object_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.fill_event("committed")
    assert sample(a, "pullcache_fills_total", result="committed") == 1
    assert sample(b, "pullcache_fills_total", result="committed") == 0


def test_the_series_dashboards_name_exist_at_zero_before_any_event(metrics):
    assert sample(metrics, "pullcache_fills_total", result="failed") == 0
    assert sample(metrics, "pullcache_served_bytes_total", source="fill") == 0
    assert sample(metrics, "pullcache_tier_reads_total", kind="blob", outcome="error") == 0
    assert sample(metrics, "pullcache_tier_writes_total", kind="manifest", outcome="failed") == 0
    assert sample(metrics, "pullcache_cache_disk_degraded") == 0
