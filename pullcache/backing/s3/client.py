"""One aiobotocore S3 client for the app's lifetime, and the adapter where botocore's errors
become ``contract.TierError`` verdicts (docs/operations.md §13).

Every call passes a breaker (the tier's read or write breaker) and a deadline: a store that
is down or slow costs a pull at most the tier's short timeout, and then nothing while the
breaker is open. botocore retries nothing here: the fill falls over to the origin, and the
write-behind backs off with the job's verdict.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any


from ... import errors
from ...upstream.breaker import Breaker
from ..aws import AioClient
from ..contract import TierError, Verdict, verdict_of

_MISSING = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload",
                      "NoSuchLifecycleConfiguration"})
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                        "TooManyRequests", "TooManyRequestsException", "429", "503"})
_DENIED = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "ExpiredToken", "InvalidToken", "KMS.AccessDeniedException",
                     "KMS.DisabledException", "AllAccessDisabled", "AccountProblem"})
_NEVER = frozenset({"EntityTooLarge", "InvalidStorageClass", "KeyTooLongError",
                    "InvalidArgument"})
# AWS names what it refused ("... is not authorized to perform: kms:GenerateDataKey").
_ACTION = re.compile(r"perform:? ([a-z0-9-]+:[A-Za-z]+)")
# The IAM action each S3 call needs, for an AccessDenied whose message names none.
ACTIONS = {"head_object": "s3:GetObject", "get_object": "s3:GetObject",
           "put_object": "s3:PutObject", "create_multipart_upload": "s3:PutObject",
           "upload_part": "s3:PutObject", "complete_multipart_upload": "s3:PutObject",
           "abort_multipart_upload": "s3:AbortMultipartUpload",
           "put_bucket_lifecycle_configuration": "s3:PutLifecycleConfiguration",
           "get_bucket_lifecycle_configuration": "s3:GetLifecycleConfiguration"}


class PreconditionFailed(Exception):
    """``If-None-Match: *`` and the object exists: another node put it first."""


class ConditionUnsupported(Exception):
    """The store refuses conditional puts (501 NotImplemented)."""


class S3Api(AioClient):
    """The S3 client (``open``/``close``, or ``async with``) for one bucket."""

    def __init__(self, config, *, resolver=None) -> None:
        self.config = config             # the [backing.s3] section
        self.bucket = config.bucket
        self._resolver = resolver        # an aiohttp resolver instead of the system's

    def _create(self):
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession
        c = self.config
        session = AioSession(profile=c.profile)
        keys = {"aws_access_key_id": c.access_key_id,
                "aws_secret_access_key": c.secret_access_key} if c.access_key_id else {}
        config = AioConfig(
            s3={"addressing_style": c.addressing_style},
            connect_timeout=c.connect_timeout, read_timeout=c.read_timeout,
            # One attempt (botocore's "max_attempts" counts retries; this counts tries).
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=64,
            # Checksums only where S3 requires them: several S3-compatible stores (GCS, R2,
            # older MinIO and Ceph) refuse the CRC32 trailers botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **({"connector_args": {"resolver": self._resolver}} if self._resolver else {}))
        return session.create_client("s3", region_name=c.region or "us-east-1",
                                     endpoint_url=c.endpoint_url, config=config, **keys)

    async def call(self, operation: str, breaker: Breaker | None, timeout: float,
                   **kwargs) -> Any:
        """``operation`` on the bucket within ``timeout`` seconds, through ``breaker``.

        Raises ``TierError`` (its verdict), or ``PreconditionFailed`` /
        ``ConditionUnsupported`` for a conditional put. A miss, a denial and a refused
        condition are answers: they close the breaker; a timeout trips it."""
        from botocore.exceptions import BotoCoreError, ClientError
        if self._client is None:
            raise TierError(Verdict.RETRY, "S3 client is not open", sent=False)
        ticket = 0
        if breaker is not None:
            try:
                ticket = breaker.check()
            except errors.CircuitOpen as exc:   # nothing was sent
                raise verdict_of(exc) from exc
        verdict: str | None = None     # "ok" | "failure" | "trip"
        try:
            async with asyncio.timeout(timeout):
                answer = await getattr(self._client, operation)(Bucket=self.bucket, **kwargs)
            verdict = "ok"
            return answer
        except ClientError as exc:
            error = translate(operation, exc)
            verdict = "failure" if isinstance(error, TierError) and \
                error.verdict == Verdict.RETRY else "ok"
            raise error from exc
        except TimeoutError as exc:
            verdict = "trip"
            raise TierError(Verdict.RETRY, f"S3 {operation}: no answer within "
                                           f"{timeout:.1f}s") from exc
        except (BotoCoreError, OSError) as exc:
            verdict = "failure"
            raise TierError(Verdict.RETRY, f"S3 {operation}: {exc}") from exc
        finally:
            if breaker is not None:
                if verdict == "ok":
                    breaker.success()
                elif verdict == "failure":
                    breaker.failure()
                elif verdict == "trip":
                    breaker.trip()
                else:           # cancelled: no verdict on the store
                    breaker.release(ticket)


def translate(operation: str, exc) -> Exception:
    """botocore's ClientError → a ``TierError`` (or a conditional put's outcome)."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    detail = f"S3 {operation}: {code or status}: {message}"[:512]
    if code in ("PreconditionFailed", "412") or status == 412:
        return PreconditionFailed()
    if code == "NotImplemented" or status == 501:
        return ConditionUnsupported()
    if code in _MISSING or status == 404:
        return TierError(Verdict.MISSING, detail)
    if code in _THROTTLED or status in (429, 503):
        return TierError(Verdict.RETRY, detail, throttled=True)
    if code in _DENIED or status == 403 or code.startswith("KMS."):
        named = _ACTION.search(message)
        action = named[1] if named else ACTIONS.get(operation, "s3:" + operation)
        return TierError(Verdict.DENIED, detail, action=action)
    if code in _NEVER:
        return TierError(Verdict.SKIP, detail)
    return TierError(Verdict.RETRY, detail)   # 5xx, NoSuchBucket, anything unforeseen

