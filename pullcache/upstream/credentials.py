"""Where a registry client's credentials come from, and what it reports back."""

from __future__ import annotations

from typing import Callable, Mapping, Protocol


class Credentials(Protocol):
    """Where a client's username and password come from."""

    async def get(self) -> tuple[str, str] | None: ...

    async def rejected(self, since: float) -> bool:
        """The registry refused what ``get`` gave for a request sent at ``since``
        (``time.monotonic()``): True if asking again now may give better."""


class StaticCredentials:
    def __init__(self, username: str | None, password: str | None) -> None:
        self.replace(username, password)

    def replace(self, username: str | None, password: str | None) -> None:
        """New credentials (SIGHUP) for every request from now on."""
        self._pair = (username, password or "") if username else None

    async def get(self) -> tuple[str, str] | None:
        return self._pair

    async def rejected(self, since: float) -> bool:
        return False


class UpstreamObserver:
    """Hooks the client calls for metrics and logs; the default does nothing."""

    def requested(self, upstream: str, method: str, status: str, seconds: float) -> None: ...
    def fetched(self, upstream: str, nbytes: int) -> None: ...
    def rate_limit(self, upstream: str, headers: Mapping[str, str]) -> float | None:
        """Record ``ratelimit-*`` headers; return the remaining count when it changed."""
        return None

    def token_refreshed(self, upstream: str) -> None: ...

    def breaker_watched(self, upstream: str, state: Callable[[], int]) -> None:
        """``state()`` reads the upstream's breaker now (``breaker.State``)."""
