"""A registry's pull quota as its ``ratelimit-*`` headers report it (Docker Hub).

Docker Hub counts manifest GETs per window and says so on every answer:
``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 76;w=21600`` (docs/protocol.md
§5.2; ``w`` is the window in seconds). Once the count reaches 0 every further manifest
request is refused with 429 until the window moves on (§5.3), so the client stops asking: a
request that will be refused spends nothing useful and tells the client nothing new.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Mapping

from ..metrics import ratelimit_count

LOW = 0.10            # "nearly spent": at or below this share of the limit
DEFAULT_WAIT = 60.0   # spent, and the upstream named no window: ask again after this
_WINDOW = re.compile(r"[;,]\s*w\s*=\s*(\d+)")


class Quota:
    """What the upstream last said about its quota; ``wait()`` says whether to ask now."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.remaining: int | None = None
        self.limit: int | None = None
        self.window: float | None = None    # seconds (the ``w=`` parameter)
        self._until: float | None = None    # spent: do not ask before this clock reading

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Record one answer's headers (any status: a 429 carries them too)."""
        remaining = ratelimit_count(headers.get("ratelimit-remaining"))
        limit_header = headers.get("ratelimit-limit")
        if (limit := ratelimit_count(limit_header)) is not None:
            self.limit = limit
            window = _WINDOW.search(limit_header or "")
            self.window = float(window.group(1)) if window else self.window
        if remaining is None:
            return
        self.remaining = remaining
        if remaining > 0:
            self._until = None
            return
        wait = _seconds(headers.get("ratelimit-reset"))
        if wait is None and status == 429:
            wait = _seconds(headers.get("retry-after"))
        if wait is None:
            wait = self.window or DEFAULT_WAIT
        self._until = self._clock() + wait

    def wait(self) -> int | None:
        """Seconds until the spent quota can be asked again (a ``Retry-After``); None when
        requests may go out."""
        if self._until is None:
            return None
        left = self._until - self._clock()
        if left <= 0:
            self._until = None   # the window moved on: the next answer tells the new count
            return None
        return max(1, round(left))

    @property
    def low(self) -> bool:
        """At or below ``LOW`` of the limit (spent included)."""
        return (self.remaining is not None and self.limit is not None and self.limit > 0
                and self.remaining <= self.limit * LOW)

    def describe(self, upstream: str) -> str | None:
        """For ``/readyz`` detail: a sentence when the quota is low, None otherwise."""
        if (wait := self.wait()) is not None:
            return f"{upstream}: pull quota spent; manifests not asked for {wait}s"
        if self.low:
            return f"{upstream}: pull quota low, {self.remaining} of {self.limit} left"
        return None


def _seconds(value: str | None) -> float | None:
    """Delta-seconds (``RateLimit-Reset``, ``Retry-After``); an HTTP date is not used."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None
