"""Who the members are: a static list, or the A/AAAA records of a name resolved again every
``refresh`` seconds (a Kubernetes headless Service lists the ready pods of a DaemonSet)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Awaitable, Callable

import structlog

log = structlog.get_logger("pullcache.cluster")

# name → its addresses (IPv4 and IPv6, as text); injectable for tests and other resolvers.
Resolve = Callable[[str], Awaitable[list[str]]]


async def system_resolve(name: str) -> list[str]:
    """The name's addresses by the system's resolver (``getaddrinfo``, off the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        name, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return sorted({info[4][0] for info in infos})


def peer_address(host: str, port: int) -> str:
    """``10.0.0.1:5002``, ``[fd00::1]:5002``: a member's name in the ring."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


class DnsMembers:
    """The members named by ``host``'s records, on ``port``; kept by ``refresh``."""

    def __init__(self, host: str, port: int, resolve: Resolve = system_resolve) -> None:
        self.host, self.port = host, port
        self._resolve = resolve
        self.error: str | None = None

    async def lookup(self) -> list[str] | None:
        """The members now, or None when the name does not resolve (keep the last list:
        a DNS hiccup must not make every node its own owner)."""
        try:
            addresses = await self._resolve(self.host)
        except (OSError, UnicodeError) as exc:
            if self.error is None:
                log.warning("peers_not_resolved", name=self.host, error=str(exc))
            self.error = str(exc)
            return None
        self.error = None
        return [peer_address(a, self.port) for a in addresses]
