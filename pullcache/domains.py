"""Host names against the Public Suffix List: who owns a name.

A label count cannot tell ``example.co.uk`` (one owner) from ``co.uk`` (a registry), nor
``myreg.herokuapp.com`` from ``herokuapp.com`` (a provider whose customers each own a
subdomain). The list shipped with ``publicsuffixlist`` can; it is read once, offline.
"""

from __future__ import annotations

import functools
import ipaddress

from publicsuffixlist import PublicSuffixList


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def registrable_domain(host: str) -> str | None:
    """The name one owner registered (eTLD+1): ``auth.example.co.uk`` → ``example.co.uk``;
    None for a public suffix itself (``co.uk``, ``herokuapp.com``), an IP or a single
    label."""
    host = host.lower().rstrip(".")
    if not host or is_ip(host) or "." not in host:
        return None
    return _psl().privatesuffix(host)


def under(host: str, domain: str) -> bool:
    """``host`` is a subdomain of ``domain`` with one owner for both: no public-suffix
    boundary lies between them (``x.execute-api.us-east-1.amazonaws.com`` is not under
    ``amazonaws.com``: AWS lists ``execute-api.<region>.amazonaws.com`` as a suffix whose
    subdomains belong to its customers)."""
    host, domain = host.lower().rstrip("."), domain.lower().rstrip(".")
    if not host.endswith("." + domain):
        return False
    owner = registrable_domain(domain)
    return owner is not None and registrable_domain(host) == owner
