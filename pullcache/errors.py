"""Typed domain errors, each carrying its HTTP status and OCI error code.

Adapters (upstream client, cache, config) translate library exceptions into these;
one server middleware translates these into the OCI error envelope
(distribution-spec "Error Codes": ``{"errors":[{"code","message","detail"}]}``).
This module imports nothing else from pullcache.
"""

from __future__ import annotations

from typing import Any


class PullcacheError(Exception):
    """Base of every error the server turns into an OCI error response."""

    status: int = 500
    code: str = "UNKNOWN"
    message: str = "unknown error"
    remote_code: str | None = None   # the upstream's own OCI error code, when it sent one

    def __init__(self, detail: Any = None, *, message: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.detail = detail
        if message is not None:
            self.message = message
        self.headers = dict(headers or {})
        super().__init__(f"{self.code}: {self.message}" + (f" ({detail})" if detail else ""))

    def envelope(self) -> dict[str, Any]:
        return {"errors": [{"code": self.code, "message": self.message,
                            "detail": self.detail}]}


# --- client input (4xx, the client's fault) ------------------------------------------------

class NameInvalid(PullcacheError):
    status, code, message = 400, "NAME_INVALID", "invalid repository name"


class DigestInvalid(PullcacheError):
    status, code, message = 400, "DIGEST_INVALID", "provided digest did not match uploaded content"


class PaginationInvalid(PullcacheError):
    status, code, message = 400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested"


class RangeInvalid(PullcacheError):
    status, code, message = 416, "RANGE_INVALID", "requested range not satisfiable"


class Unsupported(PullcacheError):
    status, code, message = 405, "UNSUPPORTED", "the operation is unsupported"


class NotFound(PullcacheError):
    """Any path that is not part of the pull API."""
    status, code, message = 404, "NOT_FOUND", "not found"


# --- unknown content ----------------------------------------------------------------------

class NameUnknown(PullcacheError):
    status, code, message = 404, "NAME_UNKNOWN", "repository name not known to registry"


class ManifestUnknown(PullcacheError):
    status, code, message = 404, "MANIFEST_UNKNOWN", "manifest unknown"


class TagInvalid(ManifestUnknown):
    """A reference that is neither a digest nor a valid tag names no manifest: end-3 lists
    only 200 and 404, and the conformance suite asks ``.INVALID_MANIFEST_NAME`` for a 404."""
    message = "manifest unknown: invalid tag"


class BlobUnknown(PullcacheError):
    status, code, message = 404, "BLOB_UNKNOWN", "blob unknown to registry"


class BlobUploadUnknown(PullcacheError):
    """An upload session: a pull-through cache has none (end-13 answers 404)."""
    status, code, message = 404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry"


# --- upstream trouble ---------------------------------------------------------------------

class Unauthorized(PullcacheError):
    status, code, message = 401, "UNAUTHORIZED", "authentication required"


class Denied(PullcacheError):
    status, code, message = 403, "DENIED", "requested access to the resource is denied"


class TooManyRequests(PullcacheError):
    status, code, message = 429, "TOOMANYREQUESTS", "too many requests"


class QuotaSpent(TooManyRequests):
    """The upstream's pull quota is spent: refused here, without asking it."""


class UpstreamError(PullcacheError):
    """Upstream answered with a server error or something we cannot use."""
    status, code, message = 502, "UPSTREAM_ERROR", "upstream registry failed"


class UpstreamUnavailable(PullcacheError):
    """Upstream could not be reached, or the circuit breaker is open."""
    status, code, message = 503, "UNAVAILABLE", "upstream registry unavailable"


class CircuitOpen(UpstreamUnavailable):
    """The breaker is failing fast: no request was sent (``Retry-After``: when it may be)."""


class UpstreamTimeout(PullcacheError):
    status, code, message = 504, "UNAVAILABLE", "upstream registry timed out"


class DigestMismatch(UpstreamError):
    """Upstream bytes did not hash to the digest they were asked for."""
    code, message = "DIGEST_INVALID", "upstream content did not match its digest"


class SizeInvalid(UpstreamError):
    code, message = "SIZE_INVALID", "upstream content length did not match"


# --- our own trouble ----------------------------------------------------------------------

class ConfigError(Exception):
    """Invalid configuration; names the key path. Not an HTTP error."""


class StorageError(PullcacheError):
    status, code, message = 500, "UNKNOWN", "cache storage failed"


UPSTREAM_FAILURES: tuple[type[PullcacheError], ...] = (
    UpstreamError, UpstreamUnavailable, UpstreamTimeout, TooManyRequests)
"""Errors after which serving stale content is better than failing."""
