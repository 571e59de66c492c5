"""Which token realms may receive an upstream's credentials.

A bearer challenge names its realm (distribution docs/spec/auth/token.md), and we send the
configured credentials there to get a token. Whoever controls the challenge (the upstream,
or anyone who can make it redirect) picks that URL, so the realm must be one we trust:

- the upstream's own host (any port: the same machine name is the same operator);
- a built-in preset for the big registries whose realm lives elsewhere (Docker Hub);
- the upstream's ``trusted_realms``: hosts, ``host:port``, or ``*.domain`` wildcards. A
  wildcard never crosses a public suffix (``domains.under``), so ``*.amazonaws.com`` does
  not reach a customer's ``execute-api`` host.

Never "the same registrable domain": ``attacker.azurecr.io`` and ``myreg.azurecr.io`` share
one, and so do all ECR registries of a region. And credentials meant for TLS never go out
in clear text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

from ..domains import is_ip, under

_GCR = ("gcr.io", "*.gcr.io")
_PRESETS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (re.compile(pattern), realms) for pattern, realms in (
        # Docker Hub: realm="https://auth.docker.io/token" (docs/protocol.md §4.1).
        (r"(registry-1\.|index\.)?docker\.io", ("auth.docker.io",)),
        # GHCR and Quay answer with a realm on their own host (ghcr.io/token, quay.io/v2/auth).
        (r"ghcr\.io", ()),
        (r"quay\.io", ()),
        # Google: gcr.io and its regional hosts share one token service; Artifact
        # Registry's regional hosts (europe-docker.pkg.dev) are Google's, not tenants'.
        (r"([a-z0-9-]+\.)?gcr\.io", _GCR),
        (r"[a-z0-9-]+\.pkg\.dev", ("*.pkg.dev",)),
        # ECR asks for Basic on the registry's own host; ECR Public's realm is its own host
        # too. Nothing else under amazonaws.com is AWS's alone (execute-api, s3 buckets).
        (r"\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?", ()),
        (r"public\.ecr\.aws", ()),
    ))


@dataclass(frozen=True, slots=True)
class _Rule:
    host: str                 # a host name, or the domain of a wildcard
    port: int | None = None   # None: any port
    wildcard: bool = False

    def matches(self, host: str, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        return under(host, self.host) if self.wildcard else host == self.host


def parse_rule(entry: str) -> _Rule:
    """``auth.example.com``, ``auth.example.com:8443``, ``[::1]:5001`` or ``*.example.com``;
    ValueError otherwise."""
    text = entry.strip().lower().rstrip(".")
    if text.startswith("*."):
        domain = text[2:]
        if not domain or is_ip(domain) or any(c in domain for c in ":/*@[]"):
            raise ValueError("a wildcard is \"*.\" and a domain name, without a port")
        return _Rule(domain, wildcard=True)
    parts = urlsplit("//" + text)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError("the port is not a number in 0-65535") from exc
    host = parts.hostname or ""
    if not host or parts.path or parts.username is not None or "*" in host:
        raise ValueError("expected a host, host:port or *.domain")
    return _Rule(host, port)


class RealmTrust:
    """Whether an upstream's credentials may go to a token realm URL."""

    def __init__(self, upstream_url: str, trusted_realms: Iterable[str] = ()) -> None:
        parts = urlsplit(upstream_url)
        self._tls = parts.scheme == "https"
        host = _host(parts.hostname)
        rules = [_Rule(host)] if host else []
        for pattern, realms in _PRESETS:
            if host and pattern.fullmatch(host):
                rules += [parse_rule(r) for r in realms]
        rules += [parse_rule(r) for r in trusted_realms]
        self._rules = tuple(rules)

    def allows(self, realm: str) -> bool:
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https"):
            return False
        if self._tls and parts.scheme != "https":
            return False   # credentials meant for TLS never go out in clear text
        host = _host(parts.hostname)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        return bool(host) and any(rule.matches(host, port) for rule in self._rules)


def _host(hostname: str | None) -> str:
    return (hostname or "").lower().rstrip(".")
