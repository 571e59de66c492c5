"""Failed logins per client, within a sliding window (``[access]`` ``max_failures``,
``failure_window``): past the limit a client gets 429 and no password is checked.

- **Attempts in flight count.** A password check takes ~100 ms in a thread; counting only
  its verdict would let a client send a thousand guesses at once and have all of them
  checked. An attempt is registered before its check (``begin``) and counts against the
  limit until its verdict is in (``end``). Concurrent requests with the same credentials
  share one check (``identity.Verifier``), and count once.
- **Clients, not addresses.** An IPv6 client owns at least a /64 (RFC 4291 §2.5.4; a host
  picks any address in it, RFC 8981), so IPv6 addresses are counted per /64; IPv4 per address.
- **A bounded table that a flood cannot wash out.** At most ``capacity`` clients are
  tracked. When the table is full, clients whose failures have left the window go first,
  then clients under the limit (the oldest first); a client at the limit is never dropped
  while its window lasts. If every tracked client is at the limit, further clients share one
  entry (``OVERFLOW``), so a flood of fresh addresses is limited as one.
"""

from __future__ import annotations

import collections
import ipaddress
import time

OVERFLOW = "(overflow)"
IPV6_CLIENT_PREFIX = 64


def client_key(ip: object) -> str:
    """The unit failures are counted by: an IPv4 address, or an IPv6 address's /64."""
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


class FailureLimiter:
    def __init__(self, max_failures: int, window: float, capacity: int = 10_000) -> None:
        self.max_failures, self.window, self.capacity = max_failures, window, capacity
        self._failures: dict[str, collections.deque[float]] = {}
        self._pending: dict[str, collections.Counter[bytes]] = {}   # attempts being checked
        # While the table is full of clients at the limit, new ones go to OVERFLOW without
        # a scan of the table each (a flood must not cost a scan per request).
        self._full_until = 0.0
        self._next_purge = 0.0

    def retry_after(self, client: str, now: float | None = None) -> float | None:
        """Seconds until ``client`` may try again; None if it may now."""
        now = time.monotonic() if now is None else now
        client = self._slot(client, now)
        times = self._recent(client, now)
        pending = len(self._pending.get(client, ()))
        if len(times) + pending < self.max_failures:
            return None
        if len(times) >= self.max_failures:
            return times[-self.max_failures] + self.window - now
        return 1.0   # attempts still being checked: their verdicts come within a second

    def begin(self, client: str, attempt: bytes, now: float | None = None) -> bool:
        """Register an attempt (``attempt`` names its credentials) before its check; False
        if the client is at the limit, counting the attempts in flight."""
        now = time.monotonic() if now is None else now
        client = self._slot(client, now)
        pending = self._pending.setdefault(client, collections.Counter())
        if attempt not in pending and self.retry_after(client, now) is not None:
            if not pending:
                del self._pending[client]
            return False
        pending[attempt] += 1
        return True

    def end(self, client: str, attempt: bytes, failed: bool, now: float | None = None) -> None:
        """An attempt's verdict is in; a failure counts once for the requests that shared it."""
        now = time.monotonic() if now is None else now
        client = self._slot(client, now)
        pending = self._pending.get(client)
        if pending is None or attempt not in pending:
            return
        pending[attempt] -= 1
        if pending[attempt] == 0:
            del pending[attempt]
            if failed:
                self.failed(client, now)
        if not pending:
            del self._pending[client]

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._failures.setdefault(self._slot(client, now), collections.deque()).append(now)

    def _recent(self, client: str, now: float) -> collections.deque[float]:
        times = self._failures.get(client)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def _slot(self, client: str, now: float) -> str:
        """``client``, or ``OVERFLOW`` when the table is full of clients at the limit."""
        if client in self._failures or client in self._pending or client == OVERFLOW:
            return client
        if len(self._failures) + len(self._pending) < self.capacity:
            return client
        if now < self._full_until:
            return OVERFLOW
        if now >= self._next_purge:   # a scan of the table at most once a second
            self._next_purge = now + 1.0
            for stale in [c for c in self._failures
                          if not self._recent(c, now) and c not in self._pending]:
                del self._failures[stale]
        if len(self._failures) + len(self._pending) >= self.capacity:
            # Dicts keep insertion order: the oldest client under the limit goes.
            below = next((c for c, times in self._failures.items()
                          if len(times) < self.max_failures and c not in self._pending
                          and c != OVERFLOW), None)
            if below is None:
                self._full_until = now + 1.0
                return OVERFLOW
            del self._failures[below]
        return client
