"""pullcache.upstream.quota: Docker Hub's ratelimit-* headers → when to stop asking."""

from __future__ import annotations

from pullcache.upstream.quota import DEFAULT_WAIT, Quota


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hub(remaining: int, limit: int = 100, window: int = 21600, **more: str) -> dict:
    return {"ratelimit-limit": f"{limit};w={window}",
            "ratelimit-remaining": f"{remaining};w={window}", **more}


def test_counts_left_are_not_a_wait_and_low_at_ten_percent():
    q = Quota(Clock())
    q.observe(200, hub(11))
    assert (q.remaining, q.limit, q.window) == (11, 100, 21600.0)
    assert q.wait() is None and not q.low and q.describe("docker.io") is None
    q.observe(200, hub(10))
    assert q.low and q.wait() is None
    assert q.describe("docker.io") == "docker.io: pull quota low, 10 of 100 left"


def test_spent_waits_for_the_reset_header_then_asks_again():
    clock = Clock()
    q = Quota(clock)
    q.observe(200, hub(0, **{"ratelimit-reset": "90"}))
    assert q.wait() == 90
    clock.now += 60
    assert q.wait() == 30
    assert "quota spent" in q.describe("docker.io")
    clock.now += 31
    assert q.wait() is None


def test_spent_without_a_reset_waits_for_retry_after_on_a_429_then_the_window():
    q = Quota(Clock())
    q.observe(429, hub(0, window=3600, **{"retry-after": "45"}))
    assert q.wait() == 45
    q.observe(200, hub(0, window=3600, **{"retry-after": "45"}))   # not a 429: the window
    assert q.wait() == 3600
    q.observe(200, {"ratelimit-remaining": "0"})   # no window named anywhere: the limit's kept
    assert q.wait() == 3600
    fresh = Quota(Clock())
    fresh.observe(429, {"ratelimit-remaining": "0"})
    assert fresh.wait() == DEFAULT_WAIT


def test_a_count_above_zero_lifts_the_wait_and_no_headers_change_nothing():
    q = Quota(Clock())
    q.observe(429, hub(0))
    q.observe(200, {})
    assert q.wait() == 21600
    q.observe(200, hub(5))
    assert q.wait() is None and q.remaining == 5
    q.observe(200, {"ratelimit-remaining": "lots", "ratelimit-reset": "-1"})
    assert q.remaining == 5
