"""``[cluster]``: node-local caches that share one fetch per layer (docs/operations.md,
"Cluster mode")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pullcache.errors import ConfigError

from .fields import (SECONDS, _field, _file, _listen, _str, _timeout, _valid_host,
                     format_duration, show, split_listen)
from .server import _token


def _peers(value: Any) -> tuple[str, ...]:
    """``["10.0.0.1:5002", "node-b:5002"]``: every member's peer address (this node's may
    be among them)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f'expected an array of "host:port", got {show(value, type_only=True)}')
    return tuple(dict.fromkeys(_listen(item) for item in value))


def _dns_name(value: Any) -> str:
    """``pullcache-peers.kube-system.svc.cluster.local:5002``: a name whose A/AAAA records
    are the members, and the port they listen on; "" is "not set"."""
    text = _str(value)
    if text == "":
        return text
    host, _ = split_listen(text)
    if not _valid_host(host):
        raise ConfigError(f'expected "name:port", got {show(value)}')
    return text


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``[cluster]``: on when ``peers`` or ``peers_dns`` is set."""
    # Static members, "host:port" each (their `listen`, or `server.listen` when unset).
    peers: tuple[str, ...] = _field(_peers, (), fmt=list)
    # Or a name whose A/AAAA records are the members (a Kubernetes headless Service), with
    # the port they listen on; resolved again every `refresh`.
    peers_dns: str = _field(_dns_name, "")
    refresh: float = _field(_timeout, 10 * SECONDS, fmt=format_duration)
    # This node's own peer address, as the others reach it; by default `listen` (or
    # `server.listen`), which must then name an address, not a wildcard.
    advertise: str = _field(lambda v: _listen(v) if v != "" else v, "")
    # A listener for peer requests alone (e.g. the node's address while `server.listen`
    # stays on loopback); "" takes peer requests on `server.listen`.
    listen: str = _field(lambda v: _listen(v) if v != "" else v, "")
    # Peer proof: a shared token, sent by every member and asked of every peer request...
    token: str | None = _field(_token, None, secret=True)
    # ... or mTLS on `listen`: its certificate and key, and the CA that signs every member's.
    tls_cert: Path | None = _field(_file, None, fmt=str)
    tls_key: Path | None = _field(_file, None, fmt=str)
    tls_ca: Path | None = _field(_file, None, fmt=str)
    # A peer that has not answered with headers within this is skipped (its breaker trips).
    peer_timeout: float = _field(_timeout, 2 * SECONDS, fmt=format_duration)
    # A peer's body that stalls this long is given up (the fill falls through).
    peer_read_timeout: float = _field(_timeout, 30 * SECONDS, fmt=format_duration)

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if self.peers and self.peers_dns:
            raise ConfigError("peers_dns: set peers or peers_dns, not both")
        tls = (self.tls_cert, self.tls_key, self.tls_ca)
        if any(tls) and not all(tls):
            raise ConfigError("tls_cert: tls_cert, tls_key and tls_ca are set together")
        if self.token is None and not all(tls):
            raise ConfigError("token: peers must prove who they are: set token, or tls_cert, "
                              "tls_key and tls_ca")
        if all(tls) and not self.listen:
            raise ConfigError("listen: mTLS between peers needs a listener of its own")

    @property
    def enabled(self) -> bool:
        return bool(self.peers or self.peers_dns)

    @property
    def mtls(self) -> bool:
        return self.tls_cert is not None
