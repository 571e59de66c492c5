"""Upstream HTTP answers → domain errors (the adapter's half of the error translation)."""

from __future__ import annotations

import contextlib
import json
from typing import AsyncIterator, Iterator, Mapping

import aiohttp

from .. import errors


def error_for(status: int, headers: Mapping[str, str], body: bytes,
              not_found: type[errors.PullcacheError], upstream: str) -> errors.PullcacheError:
    """The domain error for an upstream's 4xx/5xx answer (its OCI error body kept as detail)."""
    error = _error_for(status, headers, body, not_found, upstream)
    error.remote_code = upstream_code(body)
    return error


def _error_for(status: int, headers: Mapping[str, str], body: bytes,
               not_found: type[errors.PullcacheError], upstream: str) -> errors.PullcacheError:
    detail = upstream_detail(body) or f"{upstream} answered {status}"
    if status == 404:
        code = upstream_code(body)
        cls = errors.NameUnknown if code == "NAME_UNKNOWN" else not_found
        return cls(detail)
    if status == 405 or (status < 500 and upstream_code(body) == "UNSUPPORTED"):
        return errors.Unsupported(detail)   # distribution-spec code-13: not offered here
    if status == 401:
        return errors.Unauthorized(detail)
    if status == 403:
        return errors.Denied(detail)
    if status == 429:
        return errors.TooManyRequests(detail,
                                      headers={"Retry-After": headers.get("Retry-After", "60")})
    if status == 503:
        return errors.UpstreamUnavailable(detail)
    if status == 504:
        return errors.UpstreamTimeout(detail)
    return errors.UpstreamError(detail)


def upstream_errors(body: bytes) -> list:
    try:
        parsed = json.loads(body)
    except ValueError:
        return []
    errs = parsed.get("errors") if isinstance(parsed, dict) else None
    return [e for e in errs if isinstance(e, dict)] if isinstance(errs, list) else []


def upstream_code(body: bytes) -> str | None:
    errs = upstream_errors(body)
    return errs[0].get("code") if errs else None


def upstream_detail(body: bytes) -> str | None:
    errs = upstream_errors(body)
    if errs:
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)[:512]
    text = body.decode("utf-8", "replace").strip()
    return text[:512] or None


async def read_limited(resp, limit: int, truncate: bool = False) -> bytes:
    """An aiohttp response body up to ``limit`` bytes: cut there (``truncate``) or refused
    with ``UpstreamError``."""
    with body_errors("response body"):
        return await gather(resp.content.iter_chunked(64 * 1024), limit, truncate=truncate)


async def gather(chunks: AsyncIterator[bytes | memoryview], limit: int, *,
                 truncate: bool = False, what: str = "response") -> bytes:
    """The chunks joined, up to ``limit`` bytes: cut there (``truncate``) or refused."""
    parts, total = [], 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            if truncate:
                break
            raise errors.UpstreamError(f"{what} larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


@contextlib.contextmanager
def body_errors(what: str) -> Iterator[None]:
    """A body cut or stalled midway is the upstream's failure (502/504), never ours."""
    try:
        yield
    except TimeoutError as exc:   # aiohttp's sock_read timeout, or the body receiver's
        raise errors.UpstreamTimeout(f"{what} stalled") from exc
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise errors.UpstreamError(f"{what} failed: {exc}") from exc
