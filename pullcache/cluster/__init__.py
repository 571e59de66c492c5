"""Cluster mode: node-local caches that share one fetch per layer (docs/operations.md,
"Cluster mode"; docs/architecture.md, "Cluster").

``Cluster`` answers the proxy's one question, "who owns this key?", as a list of peers to
ask in turn (``owners``): the members ranked before this node by rendezvous hashing
(``ring``), the owner first, at most ``ASKED`` of them. An empty list means this node is
the owner and fetches from the tier or the origin itself. Membership comes from
``[cluster] peers`` or from ``peers_dns`` (``members``); each peer is asked through its
``Peer`` client, whose breaker skips it while it fails.
"""

from __future__ import annotations

import ssl

import aiohttp
import structlog

from . import ring
from .members import DnsMembers
from .peer import PEER_HEADER, Peer

__all__ = ["Cluster", "DnsMembers", "Peer", "PEER_HEADER", "ring", "ASKED"]

log = structlog.get_logger("pullcache.cluster")
# Peers asked before the origin: the owner, then its successor (the owner's stand-in
# while it is down). More would only add waits on a cluster in trouble.
ASKED = 2


class Cluster:
    def __init__(self, me: str, session: aiohttp.ClientSession, *, token: str | None,
                 ssl_context: ssl.SSLContext | None, timeout: float, read_timeout: float,
                 on_bytes=lambda n: None, watch=None) -> None:
        self.me = me
        # (address, its breaker's state or None when it left): the metrics' hook.
        self._watch = watch or (lambda address, state: None)
        self._make = lambda address: Peer(address, session, token=token,
                                          ssl_context=ssl_context, timeout=timeout,
                                          read_timeout=read_timeout, on_bytes=on_bytes)
        self.peers: dict[str, Peer] = {}
        self.members: tuple[str, ...] = (me,)
        self.dns: DnsMembers | None = None

    def update(self, addresses) -> None:
        """The members are now ``addresses`` (and this node): peers that left are dropped,
        new ones get a client with a closed breaker."""
        members = tuple(sorted(set(addresses) | {self.me}))
        if members == self.members:
            return
        joined = set(members) - set(self.members)
        left = set(self.members) - set(members)
        self.members = members
        self.peers = {a: self.peers.get(a) or self._make(a) for a in members if a != self.me}
        for address in left:
            self._watch(address, None)
        for address in joined - {self.me}:
            breaker = self.peers[address].breaker
            self._watch(address, lambda breaker=breaker: int(breaker.state))
        log.info("cluster_members_changed", members=len(members), joined=sorted(joined),
                 left=sorted(left))

    async def refresh(self) -> None:
        """Resolve ``peers_dns`` again (a supervised loop's step)."""
        if self.dns is not None:
            found = await self.dns.lookup()
            if found is not None:
                self.update(found)

    def owners(self, key: str) -> list[Peer]:
        """The peers to ask for ``key``, in order (``ASKED`` at most); [] when this node
        owns it."""
        asked: list[Peer] = []
        for member in ring.ranked(key, self.members):
            if member == self.me or len(asked) == ASKED:
                break
            asked.append(self.peers[member])
        return asked

    def status(self) -> dict:
        return {"me": self.me, "members": len(self.members),
                "dns": ({"name": self.dns.host, "error": self.dns.error}
                        if self.dns is not None else None),
                "peers": [p.status() for p in self.peers.values()]}
