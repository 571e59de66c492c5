"""What the proxy hands back to routes, and the small pieces its nouns share."""

from __future__ import annotations

from dataclasses import dataclass

from .. import errors
from ..cache.fill import Fill
from ..cache.index import Entry
from ..oci import Digest
from ..upstream.client import RegistryClient

STALE_WARNING = '299 - "pullcache: upstream unavailable; served from cache"'


@dataclass(frozen=True, slots=True)
class Upstream:
    client: RegistryClient
    tag_ttl: float
    serve_stale: bool
    stale_while_revalidate: float = 0.0


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
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
    """A committed file (``entry``) or a fill in progress (``fill``), never both."""
    digest: Digest
    size: int | None
    cache: str                 # hit | miss | joined
    entry: Entry | None = None
    fill: Fill | None = None


def tier_outcome(exc: errors.PullcacheError) -> str:
    return "miss" if isinstance(exc, (errors.ManifestUnknown, errors.BlobUnknown,
                                      errors.NameUnknown)) else "error"


def parse_digest(text: str | None) -> Digest | None:
    if not text:
        return None
    try:
        return Digest.parse(text)
    except errors.DigestInvalid:
        return None
