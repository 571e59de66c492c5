"""A per-upstream circuit breaker: fail fast while an upstream is down.

Without one, every request waits out the connect or header timeout of a dead upstream;
users of other mirrors see 30 s to minutes per manifest (harbor#18294, PROTOCOL §3.1).
"""

from __future__ import annotations

import time
from typing import Callable

import structlog

from ..errors import UpstreamUnavailable

log = structlog.get_logger("pullcache.breaker")


class Breaker:
    """Open after ``failures`` consecutive failures; stay open for ``cooldown`` seconds.

    After the cool-down one request is let through (half-open): success closes the
    breaker, failure opens it for another cool-down.
    """

    def __init__(self, failures: int, cooldown: float, *, name: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = max(failures, 1)
        self.cooldown = cooldown
        self.name = name
        self._clock = clock
        self._count = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None and self._clock() < self._open_until

    def check(self) -> None:
        if self._probing:
            # Half-open: one request is already finding out; the rest fail fast meanwhile.
            raise UpstreamUnavailable(f"{self.name}: circuit half-open, probing",
                                      headers={"Retry-After": "1"})
        if self._open_until is None:
            return
        remaining = self._open_until - self._clock()
        if remaining > 0:
            raise UpstreamUnavailable(f"{self.name}: circuit open for {remaining:.0f}s more",
                                      headers={"Retry-After": str(max(int(remaining), 1))})
        # Half-open: let this one through; another failure re-opens at once.
        self._open_until = None
        self._count = self.failures - 1
        self._probing = True

    def success(self) -> None:
        if self._probing:
            log.info("breaker_closed", upstream=self.name)
        self._probing = False
        self._count = 0
        self._open_until = None

    def trip(self) -> None:
        """Open now: one timeout is evidence enough that waiting again would be wasted."""
        self._count = self.failures - 1
        self.failure()

    def failure(self) -> None:
        self._probing = False
        self._count += 1
        if self._count >= self.failures and self._open_until is None:
            self._open_until = self._clock() + self.cooldown
            log.warning("breaker_opened", upstream=self.name, failures=self._count,
                        cooldown=self.cooldown)
