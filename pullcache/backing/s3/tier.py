"""The S3 tier (``contract.Tier``): a bucket on any S3-compatible store that a fleet shares.

Reads: a blob is a fill's source like ECR's (HEAD for existence, a streaming GetObject held
back until the fill verified it against the digest; a transfer cut midway goes on with
``Range``); a manifest comes back with the media type it was stored with. Content answers a
repository only through its link (``layout``): a node never serves tier content to a
repository the fleet did not see it in. Writes: ``writes.S3Writes``, behind the same durable
write-behind as ECR's.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

import structlog

from ... import errors
from ...oci import MAX_MANIFEST_SIZE, Digest
from ...upstream.breaker import Breaker
from ...upstream.client import Manifest
from ..contract import TierError, Verdict
from .client import S3Api
from .layout import Layout, repository, tag_class
from .writes import S3Writes

log = structlog.get_logger("pullcache.tier")
CHUNK = 1 << 20
MAX_LINKS = 100_000     # links known to exist, remembered for LINK_TTL
LINK_TTL = 3600.0       # seconds (a lifecycle rule may expire links too)


class S3Tier:
    name = "s3"
    passthrough = False   # held back until verified: a corrupt copy is dropped unseen

    def __init__(self, api: S3Api, config, metrics=None) -> None:
        self.api = api
        self.config = config
        self.layout = Layout(config.prefix)
        where = f"s3://{config.bucket}/{self.layout.root()}"
        self.read_breaker = Breaker(config.breaker_failures, config.breaker_cooldown,
                                    name="s3-tier")
        self.write_breaker = Breaker(config.breaker_failures, config.breaker_cooldown,
                                     name="s3-tier-writes")
        if metrics is not None:
            metrics.breaker_watched("s3-tier", lambda: self.read_breaker.state)
            metrics.breaker_watched("s3-tier-writes", lambda: self.write_breaker.state)
        self.writes = S3Writes(api, self.layout, config, self.write_breaker, where, metrics)
        self._links: dict[str, float] = {}   # link key → when it was seen (monotonic)

    def repository(self, upstream: str, repo: str) -> str:
        return repository(upstream, repo)

    async def head_blob(self, upstream: str, repo: str, digest: Digest) -> int | None:
        await self._linked(upstream, repo, "blob", digest)
        head = await self._read("head_object", Key=self.layout.blob(digest))
        return head.get("ContentLength")

    async def open_blob(self, upstream: str, repo: str, digest: Digest,
                        offset: int = 0) -> "S3BlobStream":
        if not offset:   # a resumed transfer was linked when it began
            await self._linked(upstream, repo, "blob", digest)
        ranged = {"Range": f"bytes={offset}-"} if offset else {}
        answer = await self._read("get_object", Key=self.layout.blob(digest), **ranged)
        return S3BlobStream(answer, self.config.read_timeout, self.config.bucket)

    async def get_manifest(self, upstream: str, repo: str, digest: Digest) -> Manifest:
        await self._linked(upstream, repo, "manifest", digest)
        answer = await self._read("get_object", Key=self.layout.manifest(digest))
        body = await S3BlobStream(answer, self.config.read_timeout,
                                  self.config.bucket).read(MAX_MANIFEST_SIZE)
        if not digest.matches(body):
            raise errors.DigestMismatch(str(digest))
        return Manifest(body, answer.get("ContentType"), str(digest))

    async def tag_record(self, upstream: str, repo: str, tag: str,
                         media_types: tuple[str, ...] = ()) -> tuple[str, float] | None:
        """The record of the first class the client accepts, in the origin's order of
        preference (an index, then an image manifest, then schema 1): (digest, checked at)."""
        accepted = {tag_class(t) for t in media_types} if media_types else None
        for klass in ("index", "manifest", "v1"):
            if accepted is not None and klass not in accepted:
                continue
            key = self.layout.tag(self.repository(upstream, repo), tag, klass)
            try:
                answer = await self._read("get_object", Key=key)
                record = json.loads(await S3BlobStream(answer, self.config.read_timeout,
                                                       self.config.bucket).read(64 * 1024))
                return str(record["digest"]), float(record["checked_at"])
            except TierError as exc:
                if exc.verdict != Verdict.MISSING:
                    raise
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("tier_tag_record_unreadable", key=key, error=str(exc))
        return None

    async def _linked(self, upstream: str, repo: str, kind: str, digest: Digest) -> None:
        """Return if ``digest`` is linked to the repository in the tier; MISSING if not."""
        key = self.layout.link(self.repository(upstream, repo), kind, digest)
        seen = self._links.get(key)
        if seen is not None and time.monotonic() - seen < LINK_TTL:
            return
        await self._read("head_object", Key=key)
        if len(self._links) >= MAX_LINKS:
            self._links.pop(next(iter(self._links)))
        self._links[key] = time.monotonic()

    async def _read(self, operation: str, **kwargs):
        try:
            return await self.api.call(operation, self.read_breaker,
                                       self.config.header_timeout, **kwargs)
        except TierError as exc:
            if exc.verdict == Verdict.MISSING:
                exc.status = 404    # a miss is the fill's normal course, logged at info
                # Gone (a lifecycle rule, an operator): neither read nor write remembers it.
                self._links.pop(kwargs.get("Key"), None)
                self.writes.forget(kwargs.get("Key"))
            raise


class S3BlobStream:
    """A GetObject body as a fill's source (``cache.fill.Source``): a cut or a stall
    raises the upstream errors the fill resumes from."""

    def __init__(self, answer: dict, read_timeout: float, bucket: str) -> None:
        self._body = answer["Body"]
        self.size: int | None = answer.get("ContentLength")
        self.origin = f"s3:{bucket}"
        self._read_timeout = read_timeout

    async def chunks(self) -> AsyncIterator[bytes]:
        from aiohttp import ClientError
        from botocore.exceptions import BotoCoreError
        while True:
            try:
                async with asyncio.timeout(self._read_timeout):
                    chunk = await self._body.read(CHUNK)
            except TimeoutError as exc:
                raise errors.UpstreamTimeout("S3 object body stalled") from exc
            except (BotoCoreError, ClientError, OSError) as exc:
                raise errors.UpstreamError(f"S3 object body cut: {exc}") from exc
            if not chunk:
                return
            yield chunk

    async def read(self, limit: int) -> bytes:
        data = bytearray()
        try:
            async for chunk in self.chunks():
                data += chunk
                if len(data) > limit:
                    raise errors.UpstreamError("S3 object larger than expected")
        finally:
            await self.close()
        return bytes(data)

    async def close(self) -> None:
        self._body.close()
