"""``pullcache tier init`` for the S3 tier: the bucket's lifecycle rule that removes the parts
of multipart uploads nobody completed or aborted (a node killed mid-upload), which S3 keeps,
and bills, for ever otherwise.

The rule is merged into the bucket's configuration (other rules kept; ours, by its ID,
replaced). Without ``s3:PutLifecycleConfiguration`` the rule is returned for the operator
to apply by hand.
"""

from __future__ import annotations

from ..contract import TierError, Verdict
from .client import S3Api
from .layout import Layout

RULE_ID = "pullcache-abort-incomplete-multipart-uploads"
ABORT_AFTER_DAYS = 1


def rule(prefix: str) -> dict:
    return {"ID": RULE_ID, "Status": "Enabled", "Filter": {"Prefix": Layout(prefix).root()},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_AFTER_DAYS}}


async def init(config) -> dict:
    """Set the rule on the bucket: ``{"applied": True, "rules": [...]}``, or, when the
    credentials may not, ``{"applied": False, "error": ..., "action": ...,
    "lifecycle": {...}}`` (the whole configuration to apply by hand)."""
    timeout = config.header_timeout
    async with S3Api(config) as api:
        try:
            answer = await api.call("get_bucket_lifecycle_configuration", None, timeout)
            rules = [r for r in answer.get("Rules", []) if r.get("ID") != RULE_ID]
        except TierError as exc:
            if exc.verdict == Verdict.DENIED:
                return _by_hand([rule(config.prefix)], exc)
            if exc.verdict != Verdict.MISSING:
                raise
            rules = []
        rules.append(rule(config.prefix))
        try:
            await api.call("put_bucket_lifecycle_configuration", None, timeout,
                           LifecycleConfiguration={"Rules": rules})
        except TierError as exc:
            if exc.verdict != Verdict.DENIED:
                raise
            return _by_hand(rules, exc)
    return {"applied": True, "bucket": config.bucket, "rules": rules}


def _by_hand(rules: list[dict], exc: TierError) -> dict:
    return {"applied": False, "error": str(exc), "action": exc.action,
            "lifecycle": {"Rules": rules}}
