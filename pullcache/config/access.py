"""``[access]``: who may connect, and who must show credentials.

Networks are CIDRs (``"10.0.0.0/8"``, ``"::1/128"``; a bare address is a /32 or /128).
Without ``htpasswd`` every client that ``allow_networks`` lets in is ``anonymous``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pullcache.errors import ConfigError

from .fields import (
    MINUTES,
    SECONDS,
    _field,
    _file,
    _at_least,
    _str,
    _timeout,
    format_duration,
    show,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(value: Any) -> tuple[Network, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f'expected an array of CIDRs like ["10.0.0.0/8"], got {show(value)}')
    out = []
    for item in value:
        try:
            out.append(ipaddress.ip_network(_str(item), strict=False))
        except ValueError:
            raise ConfigError(f'expected a CIDR like "10.0.0.0/8" or "::1/128", '
                              f"got {show(item)}") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AccessConfig:
    # An htpasswd file of bcrypt entries (`htpasswd -B`). Unset: no credentials are asked.
    htpasswd: Path | None = _field(_file, None, fmt=str)
    # Clients here pull as "anonymous" without credentials; credentials pullcache does not
    # know are ignored here (dockerd forwards Docker Hub's to mirrors, moby#42022).
    anonymous_networks: tuple[Network, ...] = _field(_networks, (), fmt=lambda v: list(map(str, v)))
    # Clients outside these get 403 before anything else happens.
    allow_networks: tuple[Network, ...] = _field(
        _networks, (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
        fmt=lambda v: list(map(str, v)))
    # How long a successful password check is remembered (keyed by an HMAC, never the password).
    credentials_ttl: float = _field(_timeout, 1 * MINUTES, fmt=format_duration)
    # Failed password checks allowed per client address within failure_window; past that the
    # address is answered 429 until the window has moved on.
    max_failures: int = _field(_at_least(1), 10)
    failure_window: float = _field(_timeout, 60 * SECONDS, fmt=format_duration)
