"""Authorization: may this identity pull this repository through this upstream? No I/O.

Decided after routing and before the proxy (``gate/__init__.py``): a refused request never
reaches the cache or an upstream, so its answer cannot reveal whether the content is cached.

Per ``[[upstream]]``: ``users`` limits who may use it (anonymous clients are the user
``anonymous``); ``allow`` and ``deny`` are repository globs, ``*`` within one path component
and ``**`` across components, matched against the repository name at that upstream (Docker
Hub's official images are ``library/<name>``). ``deny`` wins over ``allow``; without
``allow`` every repository not denied may be pulled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


ALLOW = Decision(True)


def compile_glob(glob: str) -> re.Pattern[str]:
    """``myorg/*`` → one component under myorg; ``myorg/**`` → any depth under it."""
    parts = re.split(r"(\*\*|\*)", glob)
    body = "".join(".+" if p == "**" else "[^/]*" if p == "*" else re.escape(p) for p in parts)
    return re.compile(body)


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    allow: tuple[re.Pattern[str], ...] | None = None
    deny: tuple[re.Pattern[str], ...] = ()
    users: frozenset[str] | None = None

    @classmethod
    def of(cls, allow: Iterable[str] | None = None, deny: Iterable[str] = (),
           users: Iterable[str] | None = None) -> "UpstreamPolicy":
        return cls(None if allow is None else tuple(map(compile_glob, allow)),
                   tuple(map(compile_glob, deny)),
                   None if users is None else frozenset(users))

    def decide(self, user: str, upstream: str, repository: str) -> Decision:
        if self.users is not None and user not in self.users:
            return Decision(False, f"user {user!r} may not pull from {upstream}")
        if any(p.fullmatch(repository) for p in self.deny):
            return Decision(False, f"{repository} on {upstream} is denied by policy")
        if self.allow is not None and not any(p.fullmatch(repository) for p in self.allow):
            return Decision(False, f"{repository} on {upstream} is not in the allowed "
                                   "repositories")
        return ALLOW


OPEN = UpstreamPolicy()
MAX_DECISIONS = 10_000


class Policy:
    """Every upstream's pull policy, by upstream host."""

    def __init__(self, upstreams: Mapping[str, UpstreamPolicy]) -> None:
        # The rules and the decisions made under them, swapped together (``replace``).
        self._state: tuple[dict[str, UpstreamPolicy], dict[tuple[str, str, str], Decision]] \
            = (dict(upstreams), {})

    @classmethod
    def from_config(cls, upstreams: Iterable) -> "Policy":
        """From ``[[upstream]]`` sections (anything with host, allow, deny and users)."""
        return cls({u.host: UpstreamPolicy.of(u.allow, u.deny, u.users) for u in upstreams})

    @property
    def _upstreams(self) -> dict[str, UpstreamPolicy]:
        return self._state[0]

    def replace(self, other: "Policy") -> None:
        """Take ``other``'s rules (SIGHUP): one assignment, so a decision sees old or new."""
        self._state = (other._upstreams, {})

    def decide(self, user: str, upstream: str, repository: str) -> Decision:
        """Remembered per (user, upstream, repository): every manifest request asks, and the
        same few questions repeat (bounded: forgotten whole when full)."""
        upstreams, decided = self._state
        key = (user, upstream, repository)
        decision = decided.get(key)
        if decision is None:
            decision = upstreams.get(upstream, OPEN).decide(user, upstream, repository)
            if len(decided) >= MAX_DECISIONS:
                decided.clear()
            decided[key] = decision
        return decision


__all__ = ["ANONYMOUS", "ALLOW", "Decision", "Policy", "UpstreamPolicy", "compile_glob"]
