"""The tier contract: what a shared tier offers the proxy and the write-behind, and how it
fails. ``tier.EcrTier`` and ``s3.tier.S3Tier`` implement it, and one behavioural suite
(tests/integration/test_tier_contract.py) runs against both.

A tier is a second cache that a fleet shares. The proxy reads it before the origin, and the
write-behind writes into it what the origin gave (docs/architecture.md, "The backing tier").

**Reads** (``Tier``, used by the proxy): ``head_blob`` and ``open_blob`` by digest (the blob
is a fill's source: verified by the fill before any client sees it; a transfer cut midway is
resumed from where it was cut, ``open_blob(…, offset)``), ``get_manifest`` by
digest with the media type it was stored with (a manifest kept as a stored object, not as
itself, comes back as a ``StoredManifest`` with that type), and ``tag_record``: what the
tier remembers of a tag, or None for a tier that keeps no tag records (ECR's tags are
written, never read: a tag is revalidated at the origin).

**Writes** (``TierWrites``, used by the write-behind): ``prepare`` the tier's home of a
mirrored repository, ``blob`` / ``manifest`` / ``keep`` (a manifest stored as an object of
its own, readable by digest, when the tier will not hold it as itself), ``has_manifest``,
``has_artifact``, and ``tag`` (pushed only while it is still the node's current view).

**Failures.** Every tier method raises ``TierError`` with a ``Verdict`` that decides what a
caller does, so no caller matches exception classes or message text:
``MISSING`` (a read miss; what the node remembered of it is dropped), ``RETRY`` (throttled,
5xx, timeout, a breaker open: later, after ``retry_after`` if given), ``SKIP`` (the content
or name can never be mirrored: logged once, never retried), ``DENIED`` (IAM or credentials:
read-only for a while; ``action`` names what is missing) and ``REFUSED`` (the tier will not
hold a manifest as itself: keep it as an artifact).

**Breakers.** A tier has its own ``read_breaker`` and ``write_breaker``: a throttled or
failing upload never makes reads fail fast, and the write-behind waits out an open write
breaker, and throttling, without spending a job's attempts (``TierError.sent`` is False
when no request left, ``TierError.throttled`` True for a 429).

**Pass-through.** ``passthrough`` says whether the tier's bytes may reach readers before they
are verified. A tier's copy is held back (False) so a corrupt copy is dropped unseen; a
held-back source that cannot be kept whole (on disk, or in the pass-through window) hands
over to the origin instead of being cut (``cache.fill``).

**The S3 tier** (docs/operations.md §13): ``head_blob``/``open_blob``
are HEAD/GetObject on ``blobs/<alg>/<hex>`` (``offset``: ``Range``), reached only through
the repository's link; ``get_manifest`` reads the manifest object and its Content-Type;
``tag_record`` reads the tag's JSON record; ``prepare`` is a no-op and ``keep`` stores the
manifest object (``holds_incomplete``); NoSuchKey is ``MISSING``, SlowDown ``RETRY``
(throttled), 5xx ``RETRY``, AccessDenied ``DENIED`` (``backing/s3/client.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from .. import errors
from ..cache.fill import Source as FillSource
from ..oci import Digest
from ..upstream.breaker import Breaker
from ..upstream.client import Manifest
from .content import Source


@dataclass(frozen=True, slots=True)
class StoredManifest(Manifest):
    """A manifest the tier holds only as a stored object, not as itself: the node that read
    it may complete it (push it as itself once its layers or children are in the tier)."""


class Verdict(enum.StrEnum):
    """What a caller does after a tier operation failed."""
    MISSING = "missing"   # the tier does not hold it: a miss, what was remembered is dropped
    RETRY = "retry"       # later: throttled, 5xx, a timeout, the breaker open
    SKIP = "skip"         # never: the name or the content cannot be mirrored (logged once)
    DENIED = "denied"     # read-only for a while: IAM or credentials (``action``: what)
    REFUSED = "refused"   # not as itself: keep the manifest as a stored object instead


class TierError(errors.PullcacheError):
    """A tier operation failed; ``verdict`` says what to do about it."""
    status, code, message = 502, "UPSTREAM_ERROR", "backing tier failed"

    def __init__(self, verdict: Verdict, detail: str, *, action: str | None = None,
                 retry_after: float | None = None, sent: bool = True,
                 throttled: bool = False) -> None:
        super().__init__(detail)
        self.verdict = verdict
        self.action = action              # DENIED: the IAM action that is missing, if known
        self.retry_after = retry_after    # RETRY: not before this many seconds
        self.sent = sent                  # False: refused before any request left the node
        self.throttled = throttled        # RETRY: the tier asked to slow down (429)


# The registry's own error codes (distribution-spec "Error Codes") that say a manifest is
# not acceptable as itself: its references are absent, or its form is not stored there.
_REFUSED = frozenset({"MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "MANIFEST_INVALID",
                      "BLOB_UNKNOWN"})
_MISSING = (errors.NameUnknown, errors.ManifestUnknown, errors.BlobUnknown)
# Codes after which the same request can never succeed: the name or the tag is not valid there.
_NEVER = frozenset({"NAME_INVALID", "TAG_INVALID"})


def verdict_of(exc: errors.PullcacheError, *, writing: bool = False) -> TierError:
    """The typed tier error for a domain error a registry-shaped tier's client raised (its
    HTTP status and the registry's own error code kept)."""
    if isinstance(exc, TierError):
        return exc
    error = _verdict(exc, writing)
    error.status, error.remote_code = exc.status, exc.remote_code
    return error


def _verdict(exc: errors.PullcacheError, writing: bool) -> TierError:
    text = str(exc)
    if isinstance(exc, (errors.Denied, errors.Unauthorized)):
        return TierError(Verdict.DENIED, text, action=getattr(exc, "action", None))
    if isinstance(exc, errors.CircuitOpen):
        return TierError(Verdict.RETRY, text, sent=False, retry_after=_seconds(exc.headers))
    if isinstance(exc, errors.TooManyRequests):
        # Its Retry-After may be the client's default, not the registry's: the backoff and
        # the write breaker pace the retries.
        return TierError(Verdict.RETRY, text, throttled=True)
    if isinstance(exc, errors.NameInvalid) or exc.remote_code in _NEVER:
        return TierError(Verdict.SKIP, text)
    if writing and exc.remote_code in _REFUSED:
        return TierError(Verdict.REFUSED, text)
    if isinstance(exc, _MISSING):
        return TierError(Verdict.MISSING, text)
    # 5xx, timeouts, and any answer nobody foresaw: retried, then kept as failed (visible in
    # ``tier status``, queued again by the next resync).
    return TierError(Verdict.RETRY, text)


def _seconds(headers: dict[str, str]) -> float | None:
    try:
        return float(headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class TierWrites(Protocol):
    """What the write-behind writes through. ``repo`` is the tier's name for the mirrored
    repository (``Tier.repository``)."""

    # True: the tier holds a manifest as itself whatever it references (an object store);
    # False: it refuses one whose references it lacks (a registry), which is kept instead.
    holds_incomplete: bool
    needs: tuple[str, ...]     # the IAM actions writes need, named when one is denied

    async def prepare(self, repo: str) -> None:
        """The tier's home for ``repo`` exists with the fleet's settings (once; resumable)."""

    async def blob(self, repo: str, digest: Digest, source: Source) -> str:
        """"pushed" | "present"; "gone" when the source lost the bytes meanwhile."""

    async def manifest(self, repo: str, digest: Digest, body: bytes, media_type: str) -> str:
        """The manifest as itself, by digest; ``Verdict.REFUSED`` when the tier will not."""

    async def keep(self, digest: Digest, body: bytes, media_type: str) -> str:
        """The manifest as a stored object, readable by digest with its media type."""

    async def has_manifest(self, repo: str, reference: Digest | str) -> bool: ...

    async def has_artifact(self, digest: Digest) -> bool: ...

    async def tag(self, repo: str, tag: str, digest: Digest, body: bytes, media_type: str,
                  seen: float) -> str:
        """"pushed" or "skipped": a tag seen at ``seen`` (wall clock) is never pushed over
        one the node saw later."""

    def status(self) -> dict[str, str]:
        """Per tier repository: "created" | "existing" | "denied" | "skipped"."""

    def forgive(self) -> None:
        """Forget the denials remembered: the operator says their cause cleared."""

    async def close(self) -> None: ...


class Tier(Protocol):
    name: str                  # the fill's source name (``fill.source``, logs)
    passthrough: bool          # may its bytes reach readers before they are verified
    read_breaker: Breaker
    write_breaker: Breaker
    writes: TierWrites

    def repository(self, upstream: str, repo: str) -> str:
        """The tier's name for ``<upstream>/<repo>`` (injective; ``TierError`` SKIP if the
        name cannot be mirrored)."""

    async def head_blob(self, upstream: str, repo: str, digest: Digest) -> int | None: ...

    async def open_blob(self, upstream: str, repo: str, digest: Digest,
                        offset: int = 0) -> FillSource:
        """From ``offset`` on when not 0 (a cut transfer resumed with ``Range``); a
        ``TierError`` if the tier cannot answer from there."""

    async def get_manifest(self, upstream: str, repo: str, digest: Digest) -> Manifest:
        """By digest; ``content_type`` is the media type it was stored with."""

    async def tag_record(self, upstream: str, repo: str, tag: str,
                         media_types: tuple[str, ...] = ()) -> tuple[str, float] | None:
        """(digest, when checked, wall clock) of the tier's record of the tag for a client
        that accepts ``media_types`` (the kind the origin would answer it: an index first);
        None if the tier keeps none."""

