"""Writes into the S3 tier (``contract.TierWrites``), run by the durable write-behind.

- **Content once.** A blob or manifest object is put with ``If-None-Match: *``: when two
  nodes race, the store keeps the first and answers the second 412, which counts as present.
  A HEAD first skips the upload of what is there already. A store that refuses conditional
  puts (501, or ``conditional_put = false``) gets the HEAD alone.
- **Multipart** above one part (``part_size``, 8-64 MiB), aborted on any failure; the
  bucket's lifecycle rule (``pullcache tier init``) removes what an abort could not.
- **Links and tag records** follow the content: a repository's link is written after its
  object, so a reader that finds the link finds the object.
- **Read-only after AccessDenied.** A denied write makes every write fail at once
  (``Verdict.DENIED``, nothing sent) for ``denied_for``; the missing action is logged once.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator, Awaitable, Callable

import structlog

from ...oci import Digest
from ...singleflight import SingleFlight
from ...upstream.breaker import Breaker
from ..content import Source
from ..contract import TierError, Verdict
from .client import ConditionUnsupported, PreconditionFailed, S3Api
from .layout import Layout, tag_class

log = structlog.get_logger("pullcache.tier")
PRESENT_TTL = 3600.0   # seconds an object is known to be in the tier (lifecycle may expire it)
MAX_REMEMBERED = 100_000
NEEDS = ("s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload")


class S3Writes:
    holds_incomplete = True   # an object store keeps a manifest whose references it lacks
    needs = NEEDS

    def __init__(self, api: S3Api, layout: Layout, config, breaker: Breaker, where: str,
                 metrics=None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.layout = layout
        self.config = config
        self.breaker = breaker
        self.where = where
        self._metrics = metrics
        self._clock = clock
        self._conditional = config.conditional_put
        self._flights: SingleFlight[str] = SingleFlight()
        self._present: dict[str, float] = {}
        self._denied: tuple[float, str] | None = None   # (until, action)

    # -- content ----------------------------------------------------------------------------

    async def prepare(self, repo: str) -> None:
        """Nothing to make: a bucket holds every repository."""

    async def blob(self, repo: str, digest: Digest, source: Source) -> str:
        outcome = await self._once(self.layout.blob(digest),
                                   lambda key: self._put_blob(key, digest, source))
        if outcome != "gone":
            await self._link(repo, "blob", digest)
        return outcome

    async def manifest(self, repo: str, digest: Digest, body: bytes, media_type: str) -> str:
        outcome = await self.keep(digest, body, media_type)
        await self._link(repo, "manifest", digest)
        return outcome

    async def keep(self, digest: Digest, body: bytes, media_type: str) -> str:
        async def put(key: str) -> str:
            if await self._put(key, body, "manifest", ContentType=media_type):
                log.info("tier_manifest_pushed", digest=str(digest), key=key)
                return "pushed"
            return "present"
        return await self._once(self.layout.manifest(digest), put)

    async def has_manifest(self, repo: str, reference: Digest | str) -> bool:
        if not isinstance(reference, Digest):
            return False      # tags are records here, always rewritten in order
        if await self._exists(self.layout.link(repo, "manifest", reference)):
            return True
        if not await self._exists(self.layout.manifest(reference)):
            return False
        # Stored for another repository: the write-behind asks for a manifest of ``repo``
        # (or a child an index of ``repo`` names), so it is in ``repo``: link it there.
        await self._link(repo, "manifest", reference)
        return True

    async def has_artifact(self, digest: Digest) -> bool:
        return await self._exists(self.layout.manifest(digest))

    async def tag(self, repo: str, tag: str, digest: Digest, body: bytes, media_type: str,
                  seen: float) -> str:
        """The tag's record for its class, unless the tier holds a view seen later (by any
        node: the record's ``checked_at``)."""
        key = self.layout.tag(repo, tag, tag_class(media_type))
        try:
            previous = json.loads(await self._small(key))
            if float(previous.get("checked_at", 0)) > seen:
                log.info("tier_tag_skipped", repository=repo, tag=tag,
                         reason="newer view in the tier")
                return "skipped"
        except TierError as exc:
            if exc.verdict != Verdict.MISSING:
                raise
        except (ValueError, TypeError, AttributeError):
            pass   # an unreadable record is replaced
        record = json.dumps({"digest": str(digest), "media_type": media_type,
                             "checked_at": seen}).encode()
        await self._call("put_object", Key=key, Body=record, ContentType="application/json",
                         **self._stored())
        log.info("tier_tag_pushed", repository=repo, tag=tag, digest=str(digest), seen=seen)
        return "pushed"

    async def _small(self, key: str) -> bytes:
        """A small object's bytes (a tag record), its body read within ``read_timeout``."""
        from aiohttp import ClientError
        from botocore.exceptions import BotoCoreError
        answer = await self._call("get_object", Key=key)
        try:
            async with asyncio.timeout(self.config.read_timeout), answer["Body"] as body:
                return await body.read()
        except (TimeoutError, BotoCoreError, ClientError, OSError) as exc:
            raise TierError(Verdict.RETRY, f"S3 get_object {key}: body cut: {exc!r}") from exc

    def forget(self, key: str) -> None:
        self._present.pop(key, None)

    def status(self) -> dict[str, str]:
        denied = self._denial()
        state = f"read-only: denied {denied}" if denied else "writable"
        return {self.where: state}

    def forgive(self) -> None:
        self._denied = None

    async def close(self) -> None:
        await self._flights.close()

    # -- puts -------------------------------------------------------------------------------

    async def _put_blob(self, key: str, digest: Digest, source: Source) -> str:
        chunks = await source()
        if chunks is None:
            return "gone"
        parts = _Parts(chunks, self.config.part_size)
        try:
            first = await parts.next()
            if parts.ended:
                put = await self._put(key, first, "blob")
            else:
                put = await self._multipart(key, first, parts)
        except FileNotFoundError:    # evicted while it was being read
            return "gone"
        if not put:
            return "present"
        log.info("tier_blob_pushed", digest=str(digest), key=key)
        return "pushed"

    async def _put(self, key: str, body: bytes, kind: str, **extra) -> bool:
        """True if this call stored the object, False if it was there already."""
        condition = {"IfNoneMatch": "*"} if self._conditional else {}
        try:
            await self._call("put_object", Key=key, Body=body, size=len(body), **condition,
                             **self._stored(), **extra)
        except PreconditionFailed:
            return False
        except ConditionUnsupported:
            self._unconditional()
            return await self._put(key, body, kind, **extra)
        except TierError:
            self._count(kind, "failed")
            raise
        self._count(kind)
        return True

    async def _multipart(self, key: str, first: bytes, rest: "_Parts") -> bool:
        upload = (await self._call("create_multipart_upload", Key=key,
                                   **self._stored()))["UploadId"]
        parts: list[dict] = []
        try:
            part = first
            while part:
                number = len(parts) + 1
                answer = await self._call("upload_part", Key=key, UploadId=upload,
                                          PartNumber=number, Body=part, size=len(part))
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                part = b"" if rest.ended else await rest.next()
            condition = {"IfNoneMatch": "*"} if self._conditional else {}
            await self._call("complete_multipart_upload", Key=key, UploadId=upload,
                             MultipartUpload={"Parts": parts}, **condition)
        except PreconditionFailed:
            await self._abort(key, upload)
            return False
        except ConditionUnsupported:
            await self._abort(key, upload)
            self._unconditional()
            raise TierError(Verdict.RETRY, "conditional puts refused: retried with a HEAD")
        except BaseException:
            self._count("blob", "failed")
            await self._abort(key, upload)
            raise
        self._count("blob")
        return True

    async def _abort(self, key: str, upload: str) -> None:
        try:
            await self._call("abort_multipart_upload", Key=key, UploadId=upload)
        except (TierError, PreconditionFailed, ConditionUnsupported) as exc:
            # The bucket's lifecycle rule removes the parts (``pullcache tier init``).
            log.warning("tier_upload_not_aborted", key=key, error=str(exc))

    def _unconditional(self) -> None:
        if self._conditional:
            self._conditional = False
            log.warning("tier_conditional_put_refused", where=self.where,
                        fallback="HEAD before each put")

    async def _link(self, repo: str, kind: str, digest: Digest) -> None:
        key = self.layout.link(repo, kind, digest)
        if self._known(key):
            return
        await self._call("put_object", Key=key, Body=b"", size=0, **self._stored())
        self._remember(key)

    def _stored(self) -> dict:
        c, out = self.config, {}
        if c.server_side_encryption:
            out["ServerSideEncryption"] = c.server_side_encryption
        if c.kms_key:
            out["SSEKMSKeyId"] = c.kms_key
        if c.storage_class:
            out["StorageClass"] = c.storage_class
        return out

    # -- bookkeeping ------------------------------------------------------------------------

    async def _once(self, key: str, fn: Callable[[str], Awaitable[str]]) -> str:
        """One flight per object; what is known there is not asked again for a while."""
        if self._known(key):
            return "present"

        async def flight() -> str:
            if await self._exists(key):
                return "present"      # no upload at all for what is there
            outcome = await fn(key)
            if outcome != "gone":
                self._remember(key)
            return outcome
        result, _ = await self._flights.do(key, flight)
        return result

    async def _exists(self, key: str) -> bool:
        if self._known(key):
            return True
        try:
            await self._call("head_object", Key=key)
        except TierError as exc:
            if exc.verdict == Verdict.MISSING:
                return False
            raise
        self._remember(key)
        return True

    async def _call(self, operation: str, *, size: int = 0, **kwargs):
        denied = self._denial()
        if denied:
            raise TierError(Verdict.DENIED, f"{self.where}: read-only, {denied} was denied",
                            action=denied, sent=False)
        timeout = self.config.header_timeout + size / self.config.upload_rate
        try:
            return await self.api.call(operation, self.breaker, timeout, **kwargs)
        except TierError as exc:
            if exc.verdict == Verdict.DENIED and operation != "head_object":
                self._read_only(exc)
            raise

    def _read_only(self, exc: TierError) -> None:
        until = self._clock() + self.config.denied_for
        if self._denial() is None:
            log.error("tier_read_only", where=self.where, action=exc.action, error=str(exc),
                      seconds=self.config.denied_for, needs=list(NEEDS))
        self._denied = (until, exc.action or "a write")

    def _denial(self) -> str | None:
        if self._denied is None:
            return None
        until, action = self._denied
        if self._clock() >= until:
            self._denied = None
            log.info("tier_writable_again", where=self.where)
            return None
        return action

    def _known(self, key: str) -> bool:
        at = self._present.get(key)
        if at is None:
            return False
        if self._clock() - at >= PRESENT_TTL:
            del self._present[key]
            return False
        return True

    def _remember(self, key: str) -> None:
        if len(self._present) >= MAX_REMEMBERED:
            self._present.pop(next(iter(self._present)))
        self._present[key] = self._clock()

    def _count(self, kind: str, outcome: str = "completed") -> None:
        if self._metrics is not None:
            self._metrics.tier_uploads.labels(kind, outcome).inc()


class _Parts:
    """A source's chunks cut into parts of ``size`` bytes (the last one shorter)."""

    def __init__(self, chunks: AsyncIterator[bytes], size: int) -> None:
        self._chunks = chunks
        self._size = size
        self._carry = b""
        self.ended = False

    async def next(self) -> bytes:
        part = bytearray(self._carry)
        self._carry = b""
        while len(part) <= self._size:
            chunk = await anext(self._chunks, None)
            if chunk is None:
                self.ended = True
                return bytes(part)
            part += chunk
        self._carry = bytes(part[self._size:])
        del part[self._size:]
        return bytes(part)
