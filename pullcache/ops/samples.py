"""Figures for the status page: counter totals, and an hour of samples in a ring buffer.

``Samples.take`` reads the Prometheus counters (cumulative); the page draws the differences
between consecutive samples. One sample per ``interval``, by a supervised loop its owner
starts (``server/admin/objects.py``).
"""

from __future__ import annotations

import time
from collections import deque

from ..metrics import SOURCES, Metrics

HITS = ("hit", "revalidated", "stale", "swr", "joined")   # served without a download of their own
UNCOUNTED = ("denied",)   # refused before the cache was asked: neither a hit nor a miss


def counter_total(counter, **labels: str) -> float:
    total = 0.0
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and all(
                    sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def gauge_value(gauge) -> float:
    return sum(s.value for family in gauge.collect() for s in family.samples)


def source_counts(metrics: Metrics) -> dict[str, dict[str, float]]:
    """Blob answers and bytes since start by where they came from (local, peer, tier,
    origin)."""
    return {source: {"requests": counter_total(metrics.source_requests, source=source),
                     "bytes": counter_total(metrics.source_bytes, source=source)}
            for source in SOURCES}


def request_counts(metrics: Metrics) -> tuple[float, float]:
    """(hits, misses) of manifest and blob requests since start."""
    hits = misses = 0.0
    for family in metrics.requests.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels.get("outcome") not in UNCOUNTED:
                if s.labels.get("outcome") in HITS:
                    hits += s.value
                else:
                    misses += s.value
    return hits, misses


def hit_ratio(metrics: Metrics) -> float | None:
    hits, misses = request_counts(metrics)
    return hits / (hits + misses) if hits + misses else None


class Samples:
    def __init__(self, metrics: Metrics, *, interval: float = 10.0,
                 window: float = 3600.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self._ring: deque[tuple[float, float, float, float, float]] = deque(
            maxlen=int(window / interval) + 1)

    def take(self) -> None:
        self._ring.append(self._now())

    def _now(self) -> tuple[float, float, float, float, float]:
        hits, misses = request_counts(self.metrics)
        return (time.time(), hits, misses,
                counter_total(self.metrics.bytes_served, source="cache"),
                counter_total(self.metrics.bytes_fetched))

    def series(self) -> list[dict]:
        """Per-interval differences, the last one running up to now."""
        points = list(self._ring) + [self._now()]
        return [{"t": b[0], "hits": b[1] - a[1], "misses": b[2] - a[2],
                 "cache_bytes": b[3] - a[3], "upstream_bytes": b[4] - a[4]}
                for a, b in zip(points, points[1:])]


class Pulls:
    """Manifest pulls by image (``upstream/repository``), for the page's top list.

    Bounded: at most ``capacity`` images are counted (Space-Saving, Metwally et al. 2005).
    An image not counted yet takes the place of the least-pulled one and inherits its count
    plus one, so a count may overstate by at most what it inherited; an image pulled more
    often than ``pulls / capacity`` times is always in the list. A node that serves many
    thousand repositories keeps ``capacity`` counters, not one each.
    """

    def __init__(self, capacity: int = 200) -> None:
        self.capacity = capacity
        self._counts: dict[tuple[str, str], int] = {}   # (upstream, repo): pulls

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, upstream: str, repo: str) -> None:
        key = (upstream, repo)
        counts = self._counts
        if key in counts:
            counts[key] += 1
            return
        if len(counts) < self.capacity:
            counts[key] = 1
            return
        # A scan of ``capacity`` counters, only when an image not counted yet is pulled.
        least = min(counts, key=counts.__getitem__)
        counts[key] = counts.pop(least) + 1

    def top(self, n: int = 10) -> list[dict]:
        ranked = sorted(self._counts.items(), key=lambda item: item[1], reverse=True)[:n]
        return [{"image": f"{upstream}/{repo}", "pulls": count}
                for (upstream, repo), count in ranked]
