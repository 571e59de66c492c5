"""pullcache.upstream.breaker: open after N failures, fail fast, half-open probe."""

from __future__ import annotations

import pytest

from pullcache.errors import UpstreamUnavailable
from pullcache.upstream.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def breaker(clock):
    return Breaker(3, 30.0, name="ghcr.io", clock=clock)


def retry_after(breaker: Breaker) -> str:
    with pytest.raises(UpstreamUnavailable) as info:
        breaker.check()
    assert info.value.status == 503
    assert "ghcr.io" in str(info.value)
    return info.value.headers["Retry-After"]


def test_opens_after_n_consecutive_failures(breaker):
    breaker.failure()
    breaker.failure()
    breaker.check()
    assert not breaker.is_open
    breaker.failure()
    assert breaker.is_open
    assert retry_after(breaker) == "30"


def test_success_resets_the_count(breaker):
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    breaker.check()
    assert not breaker.is_open
    breaker.failure()
    assert breaker.is_open


def test_retry_after_counts_down_and_never_reaches_zero(breaker, clock):
    start = clock.now
    breaker.trip()
    clock.now = start + 10
    assert retry_after(breaker) == "20"
    clock.now = start + 29.6
    assert retry_after(breaker) == "1"
    assert breaker.is_open


def test_half_open_after_cooldown_lets_a_probe_through_and_a_failure_reopens_at_once(
        breaker, clock):
    start = clock.now
    breaker.trip()
    clock.now = start + 30
    assert not breaker.is_open
    breaker.check()                 # the probe
    breaker.failure()               # one failure is enough now
    assert breaker.is_open
    assert retry_after(breaker) == "30"


def test_half_open_probe_success_closes(breaker, clock):
    start = clock.now
    breaker.trip()
    clock.now = start + 31
    breaker.check()
    breaker.success()
    breaker.failure()
    breaker.failure()
    breaker.check()                 # closed: back to needing three failures
    breaker.failure()
    assert breaker.is_open


def test_trip_opens_immediately(breaker):
    breaker.trip()
    assert breaker.is_open
    retry_after(breaker)


def test_failures_while_open_do_not_extend_the_cooldown(breaker, clock):
    start = clock.now
    breaker.trip()
    clock.now = start + 20
    breaker.failure()
    breaker.trip()
    assert retry_after(breaker) == "10"


def test_at_least_one_failure_is_needed():
    breaker = Breaker(0, 5.0, clock=Clock())
    breaker.check()
    breaker.failure()
    assert breaker.is_open


def test_half_open_lets_only_one_request_through(breaker, clock):
    start = clock.now
    breaker.trip()
    clock.now = start + 30
    breaker.check()                 # the probe is in flight
    with pytest.raises(UpstreamUnavailable):
        breaker.check()             # a second request must still fail fast
