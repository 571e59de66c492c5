"""Prometheus collectors, one registry per app (no process globals)."""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from .build import build_info

_RATELIMIT = re.compile(r"^\s*(\d+)")
SOURCES = ("local", "peer", "tier", "origin")


class _Children:
    """A labelled collector whose children are looked up once: prometheus_client's
    ``labels()`` validates and locks on every call, a per-request cost on the hot path."""

    def __init__(self, collector) -> None:
        self.collector = collector
        self._children: dict[tuple, Any] = {}

    def labels(self, *values):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.collector.labels(*values)
        return child

    def forget(self, *values) -> None:
        """Drop a child (a label set that no longer exists, such as a peer that left)."""
        if self._children.pop(values, None) is not None:
            self.collector.remove(*values)

    def __getattr__(self, name: str):
        return getattr(self.collector, name)


class Tally:
    """A labelled counter kept in a plain dict and exported at scrape time: the per-request
    counters (one increment per request) skip prometheus_client's child lookup and lock.
    Only the event loop counts; a scrape reads a copy."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], *,
                 registry: CollectorRegistry) -> None:
        self._name, self._doc, self._keys = name, documentation, labelnames
        self.counts: dict[tuple, int] = {}
        registry.register(self)

    def inc(self, *labels) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def value(self, *labels) -> int:
        return self.counts.get(labels, 0)

    def collect(self):
        family = CounterMetricFamily(self._name, self._doc, labels=self._keys)
        for labels, count in dict(self.counts).items():
            family.add_metric([str(v) for v in labels], count)
        yield family

    def describe(self):
        return [CounterMetricFamily(self._name, self._doc, labels=self._keys)]


class Metrics:
    """Every collector; also the upstream client's observer (``UpstreamObserver``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Tally("pullcache_requests", "Pull requests by kind and outcome "
                              "(the cache's answer, or denied by policy)",
                              ("kind", "outcome"), registry=r)
        self.http_responses = Tally("pullcache_http_responses",
                                    "HTTP responses by method and status",
                                    ("method", "status"), registry=r)
        self.bytes_served = Counter("pullcache_served_bytes",
                                    "Blob bytes sent to clients, by source",
                                    ["source"], registry=r)
        self.bytes_ridden = Counter("pullcache_fill_ridden_bytes",
                                    "Fill bytes sent by the fill's writer thread to a client "
                                    "caught up with it (part of source=fill)", registry=r)
        self.bytes_fetched = Counter("pullcache_upstream_fetched_bytes",
                                     "Blob bytes fetched from upstreams",
                                     ["upstream"], registry=r)
        self.fills_in_flight = Gauge("pullcache_fills_in_flight", "Fills in progress",
                                     registry=r)
        self.fills = Counter("pullcache_fills", "Fills ended, by result", ["result"],
                             registry=r)
        self.coalesced = Counter("pullcache_coalesced_requests",
                                 "Requests that joined a fetch already in flight", ["kind"],
                                 registry=r)
        self.link_checks = Counter(
            "pullcache_link_checks", "Cached content asked for from a repository it is not "
            "linked to, confirmed with its upstream by a HEAD: confirmed, refused (404, "
            "401, 403) or unavailable", ["kind", "result"], registry=r)
        self.evictions = Counter("pullcache_evicted_files", "Files evicted", registry=r)
        self.evicted_bytes = Counter("pullcache_evicted_bytes", "Bytes evicted", registry=r)
        self.cache_bytes = Gauge("pullcache_cache_bytes", "Bytes used by the cache", registry=r)
        self.hot_bytes = Gauge("pullcache_hot_bytes",
                               "Bytes held by the in-memory hot layer (cache.memory)", registry=r)
        self.hot_items = Gauge("pullcache_hot_items",
                               "Entries, manifests and tag records in the hot layer", registry=r)
        self.cache_budget = Gauge("pullcache_cache_budget_bytes", "cache.max_size", registry=r)
        self.digest_mismatches = Counter("pullcache_digest_mismatches",
                                         "Upstream content that failed verification",
                                         registry=r)
        self.upstream_latency = Histogram(
            "pullcache_upstream_request_seconds", "Time to upstream response headers",
            ["upstream", "method", "status"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.ratelimit_remaining = Gauge("pullcache_upstream_ratelimit_remaining",
                                         "Upstream-reported pulls remaining (Docker Hub)",
                                         ["upstream"], registry=r)
        self.ratelimit_limit = Gauge("pullcache_upstream_ratelimit_limit",
                                     "Upstream-reported pull limit (Docker Hub)",
                                     ["upstream"], registry=r)
        self.token_refreshes = Counter("pullcache_token_refreshes",
                                       "Bearer tokens fetched", ["upstream"], registry=r)
        self.breaker_state = Gauge("pullcache_upstream_breaker_state",
                                   "Circuit breaker per upstream: 0 closed, 1 open, "
                                   "2 half-open (a probe in flight)", ["upstream"], registry=r)
        self.tier_reads = Counter("pullcache_tier_reads", "Backing-tier lookups by outcome",
                                  ["kind", "outcome"], registry=r)
        self.tier_writes = Counter("pullcache_tier_writes", "Backing-tier write-backs ended",
                                   ["kind", "outcome"], registry=r)
        self.tier_queue = Gauge("pullcache_tier_write_queue",
                                "Write-back jobs not yet acknowledged (queued, waiting to "
                                "retry, or in flight)", registry=r)
        self.tier_uploads = Counter("pullcache_tier_uploads",
                                    "Uploads to the backing tier (completed PUTs, not jobs)",
                                    ["kind", "outcome"], registry=r)
        self.tier_journal_failures = Counter(
            "pullcache_tier_journal_failures",
            "Write-behind journal operations that failed (retried at the next resync)",
            ["op"], registry=r)
        self.pinned_bytes = Gauge("pullcache_pinned_bytes",
                                  "Bytes held by pinned images (cache.pin)", registry=r)
        self.fill_passthroughs = Counter(
            "pullcache_fill_passthroughs",
            "Fills the disk refused, served from memory and not cached", registry=r)
        self.asyncio_tasks = Gauge("pullcache_asyncio_tasks",
                                   "asyncio tasks alive on the event loop (a leak check)",
                                   registry=r)
        self.disk_degraded = Gauge("pullcache_cache_disk_degraded",
                                   "1 while the disk refuses writes: fills pass through "
                                   "memory and nothing is cached", registry=r)
        self.source_requests = Counter(
            "pullcache_source_requests", "Blob answers and fills by where the bytes came "
            "from: local (a hit), peer (cluster mode), tier, origin", ["source"], registry=r)
        self.source_bytes = Counter(
            "pullcache_source_bytes", "Blob bytes by where they came from (as "
            "pullcache_source_requests)", ["source"], registry=r)
        self.peer_breaker_state = Gauge(
            "pullcache_peer_breaker_state", "Circuit breaker per cluster peer: 0 closed, "
            "1 open, 2 half-open", ["peer"], registry=r)
        info = build_info()
        self.build_info = Gauge("pullcache_build_info", "Always 1; the labels name the build",
                                list(info), registry=r)
        self.build_info.labels(**info).set(1)
        self._last_remaining: dict[str, float] = {}
        # upstream → (wall clock, method, status) of its last failed request (status page)
        self.last_errors: dict[str, tuple[float, str, str]] = {}
        for name, collector in list(vars(self).items()):
            if getattr(collector, "_labelnames", ()):
                setattr(self, name, _Children(collector))
        # The series dashboards and alerts name exist from the start, at 0: an empty query
        # then means a renamed metric, never "nothing happened yet".
        for result in ("committed", "failed"):
            self.fills.labels(result)
        for source in ("cache", "fill"):
            self.bytes_served.labels(source)
        for kind in ("manifest", "blob", "blob_head"):
            for outcome in ("hit", "miss", "error"):
                self.tier_reads.labels(kind, outcome)
        for source in SOURCES:
            self.source_requests.labels(source)
            self.source_bytes.labels(source)
        for kind in ("manifest", "blob"):
            for outcome in ("pushed", "failed", "denied"):
                self.tier_writes.labels(kind, outcome)

    # -- upstream.client.UpstreamObserver -----------------------------------------------------------------------

    def requested(self, upstream: str, method: str, status: str, seconds: float) -> None:
        self.upstream_latency.labels(upstream, method, status).observe(seconds)
        if not status.isdigit() or int(status) >= 500 or status == "429":
            self.last_errors[upstream] = (time.time(), method, status)

    def fetched(self, upstream: str, nbytes: int) -> None:
        self.bytes_fetched.labels(upstream).inc(nbytes)

    def remaining(self, upstream: str) -> float | None:
        return self._last_remaining.get(upstream)

    def rate_limit(self, upstream: str, headers: Mapping[str, str]) -> float | None:
        """Record Docker Hub's ``ratelimit-*`` headers; returns remaining when it changed."""
        remaining = ratelimit_count(headers.get("ratelimit-remaining"))
        limit = ratelimit_count(headers.get("ratelimit-limit"))
        if limit is not None:
            self.ratelimit_limit.labels(upstream).set(limit)
        if remaining is None:
            return None
        self.ratelimit_remaining.labels(upstream).set(remaining)
        changed = self._last_remaining.get(upstream) != remaining
        self._last_remaining[upstream] = remaining
        return remaining if changed else None

    def token_refreshed(self, upstream: str) -> None:
        self.token_refreshes.labels(upstream).inc()

    def breaker_watched(self, upstream: str, state: Callable[[], int]) -> None:
        self.breaker_state.labels(upstream).set_function(lambda: float(state()))

    def source(self, source: str, nbytes: int) -> None:
        """A blob answered from ``source`` (one of ``SOURCES``)."""
        self.source_requests.labels(source).inc()
        self.source_bytes.labels(source).inc(nbytes)

    def peer_watched(self, address: str, state: Callable[[], int] | None) -> None:
        """A cluster peer's breaker to report (``state``), or a peer that left (None)."""
        if state is None:
            self.peer_breaker_state.forget(address)
            return
        self.peer_breaker_state.labels(address).set_function(lambda: float(state()))

    def fill_event(self, event: str, **_: object) -> None:
        if event in ("committed", "failed"):
            self.fills.labels(event).inc()
        if event == "digest_mismatch":
            self.digest_mismatches.inc()
        if event == "passthrough":
            self.fill_passthroughs.inc()


def ratelimit_count(value: str | None) -> int | None:
    """A Docker Hub ``ratelimit-limit``/``ratelimit-remaining`` value's count:
    ``100;w=21600`` → 100 (docs/protocol.md §5); None when absent or malformed."""
    m = _RATELIMIT.match(value or "")
    return int(m.group(1)) if m else None
