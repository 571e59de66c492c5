"""A per-upstream circuit breaker: fail fast while an upstream is down.

Without one, every request waits out the connect or header timeout of a dead upstream;
users of other mirrors see 30 s to minutes per manifest (harbor#18294, docs/protocol.md §9).
"""

from __future__ import annotations

import enum
import time
from typing import Callable

import structlog

from ..errors import CircuitOpen

log = structlog.get_logger("pullcache.breaker")


class State(enum.IntEnum):
    """The breaker's state, numbered as the ``pullcache_upstream_breaker_state`` gauge."""
    CLOSED = 0
    OPEN = 1        # failing fast; past the cool-down, the next request becomes the probe
    HALF_OPEN = 2   # one probe is in flight


class Breaker:
    """Open after ``failures`` consecutive failures; stay open for ``cooldown`` seconds.

    After the cool-down one request is let through (half-open): success closes the
    breaker, failure opens it for another cool-down, and a probe that ends with no verdict
    (cancelled, or failed in a way that says nothing about the upstream) hands the probe
    to the next request through ``release``. Whoever passed ``check`` must report exactly
    one of ``success``, ``failure``, ``trip`` or ``release``, or the breaker stays
    half-open and fails every request.
    """

    def __init__(self, failures: int, cooldown: float, *, name: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = max(failures, 1)
        self.cooldown = cooldown
        self.name = name
        self._clock = clock
        self._count = 0
        self._open_until: float | None = None
        self._probe = 0          # the ticket of the probe in flight, 0 when none
        self._tickets = 0

    @property
    def state(self) -> State:
        if self._probe:
            return State.HALF_OPEN
        return State.CLOSED if self._open_until is None else State.OPEN

    @property
    def is_open(self) -> bool:
        return self._open_until is not None and self._clock() < self._open_until

    def check(self) -> int:
        """Raise while open; else return a ticket for ``release`` (non-zero for the probe)."""
        if self._probe:
            # Half-open: one request is already finding out; the rest fail fast meanwhile.
            raise CircuitOpen(f"{self.name}: circuit half-open, probing",
                                      headers={"Retry-After": "1"})
        if self._open_until is None:
            return 0
        remaining = self._open_until - self._clock()
        if remaining > 0:
            raise CircuitOpen(f"{self.name}: circuit open for {remaining:.0f}s more",
                                      headers={"Retry-After": str(max(int(remaining), 1))})
        # Half-open: let this one through; another failure re-opens at once.
        self._open_until = None
        self._count = self.failures - 1
        self._tickets += 1
        self._probe = self._tickets
        return self._probe

    def success(self) -> None:
        if self._probe:
            log.info("breaker_closed", upstream=self.name)
        self._probe = 0
        self._count = 0
        self._open_until = None

    def trip(self) -> None:
        """Open now: one timeout is evidence enough that waiting again would be wasted."""
        self._count = self.failures - 1
        self.failure()

    def failure(self) -> None:
        self._probe = 0
        self._count += 1
        if self._count >= self.failures and self._open_until is None:
            self._open_until = self._clock() + self.cooldown
            log.warning("breaker_opened", upstream=self.name, failures=self._count,
                        cooldown=self.cooldown)

    def release(self, ticket: int) -> None:
        """The request holding ``ticket`` ended with no verdict on the upstream.

        If it was the probe, the breaker goes back to open with its cool-down over, so the
        next request probes instead; any other request changes nothing.
        """
        if ticket and ticket == self._probe:
            self._probe = 0
            self._open_until = self._clock()
            log.info("breaker_probe_released", upstream=self.name)
