"""Who owns a key: rendezvous (highest random weight) hashing over the members.

Every member scores every key with a hash of (member, key); the highest score owns the key,
the next one is its successor. A member that joins takes only the keys it now scores highest
on, a member that leaves gives up only its own: about 1/N of the keys move, and nothing else
changes owner (Thaler and Ravishankar, "Using name-based mappings to increase hit rates",
IEEE/ACM ToN 6(1), 1998). No table to agree on: members with the same list agree.
"""

from __future__ import annotations

import hashlib
from typing import Iterable


def weight(member: str, key: str) -> int:
    """The member's score for the key: 64 bits of BLAKE2b over both (stable across hosts
    and Python versions, unlike ``hash``)."""
    h = hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def ranked(key: str, members: Iterable[str]) -> list[str]:
    """The members in ownership order for ``key``: the owner first."""
    return sorted(members, key=lambda m: (weight(m, key), m), reverse=True)


def owner(key: str, members: Iterable[str]) -> str | None:
    best = ranked(key, members)
    return best[0] if best else None
