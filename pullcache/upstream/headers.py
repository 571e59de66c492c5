"""What an upstream's answer headers say (next page, range start, upload location), and
the headers and URLs pullcache sends back (Accept, a query added, the origin compared)."""

from __future__ import annotations

from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from .. import errors
from ..oci import DEFAULT_ACCEPT


def next_link(resp: aiohttp.ClientResponse) -> str | None:
    """aiohttp's RFC 8288 parse of ``Link`` skips what it cannot read (a link without
    ``>``); a target that is no URL at all is no next page either."""
    try:
        link = resp.links.get("next")
    except ValueError:
        return None
    return str(link["url"]) if link is not None and link.get("url") else None


def range_start(resp: aiohttp.ClientResponse) -> int | None:
    """The first byte of a 206's ``Content-Range: bytes <first>-<last>/<length>``."""
    unit, _, spec = resp.headers.get("Content-Range", "").partition(" ")
    first = spec.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def location_of(resp: aiohttp.ClientResponse) -> str:
    location = resp.headers.get("Location")
    if not location:
        raise errors.UpstreamError("upload answered without a Location")
    return urljoin(str(resp.url), location)


def with_query(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode({key: value})}"


def accept_header(accept: tuple[str, ...]) -> str:
    # Forward what the client takes, so the upstream picks the representation it would have
    # given the client itself (docs/protocol.md §3); a client that named nothing gets the
    # modern set.
    return ", ".join(accept or DEFAULT_ACCEPT)


def origin_of(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port
