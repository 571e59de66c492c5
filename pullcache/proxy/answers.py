"""What the proxy hands back to routes, and the small pieces its nouns share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

from .. import errors
from ..backing.contract import TierError, Verdict
from ..cache.body import Body
from ..cache.fill import Fill
from ..oci import Digest
from ..upstream.client import RegistryClient

STALE_WARNING = '299 - "pullcache: upstream unavailable; served from cache"'


@dataclass(frozen=True, slots=True)
class Upstream:
    client: RegistryClient
    tag_ttl: float
    serve_stale: bool
    stale_while_revalidate: float = 0.0
    referrers_ttl: float | None = None   # None: tag_ttl

    @property
    def referrers_max_age(self) -> float:
        return self.tag_ttl if self.referrers_ttl is None else self.referrers_ttl


class ManifestAnswer(NamedTuple):
    """A manifest and where it came from (a tuple: the hot path makes one per request, and
    a frozen dataclass costs twice as much to make)."""
    body: bytes
    media_type: str
    digest: Digest
    cache: str                 # hit | miss | joined | stale | revalidated
    warning: str | None = None

    def as_(self, cache: str) -> "ManifestAnswer":
        return ManifestAnswer(self.body, self.media_type, self.digest, cache, self.warning)


@dataclass(frozen=True, slots=True)
class TagList:
    tags: list[str]
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class BlobAnswer:
    """A blob's body, wherever it comes from; the caller sends it, then ``body.aclose()``."""
    digest: Digest
    body: Body
    cache: str                 # hit | miss | joined

    @property
    def size(self) -> int | None:
        return self.body.size


class Prefetched(NamedTuple):
    """What warming a blob found: its size when it was cached, else the fill fetching it."""
    cached_size: int
    fill: Fill | None


def tier_outcome(exc: errors.PullcacheError) -> str:
    missing = isinstance(exc, TierError) and exc.verdict == Verdict.MISSING
    return "miss" if missing else "error"


def parse_digest(text: str | None) -> Digest | None:
    if not text:
        return None
    try:
        return Digest.parse(text)
    except errors.DigestInvalid:
        return None


def next_page(page) -> dict[str, str]:
    """The query of a page's RFC 8288 ``Link: <…?last=x&n=y>; rel="next"`` (parsed by
    aiohttp into ``Relayed.next``), or {}."""
    return dict(parse_qsl(urlsplit(page.next).query)) if page.next else {}
