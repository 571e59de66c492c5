"""``pullcache tier status``, offline: the durable queue in the cache dir plus the tier's
repositories as DescribeRepositories tells them (the daemon need not run).

Offline, a job being pushed right now counts as pending: only the daemon's own
``WriteBehind.status()`` tells in-flight jobs apart.
"""

from __future__ import annotations

import asyncio

from .. import errors
from .ecr import EcrApi, repository_name
from .journal import JOURNAL_DIR, Journal


async def tier_status(cache_dir, ecr) -> dict:
    """``ecr`` is the ``[backing.ecr]`` section."""
    pending, failed = await asyncio.to_thread(_journal, cache_dir / JOURNAL_DIR)
    queue: dict[str, dict] = {}

    def of(upstream: str, repo: str) -> dict:
        name = repository_name(ecr.repository_prefix, upstream, repo)
        return queue.setdefault(name, {"pending": 0, "failed": []})
    for job in pending:
        of(job.upstream, job.repo)["pending"] += 1
    for item in failed:
        of(item["upstream"], item["repo"])["failed"].append(
            {k: item.get(k) for k in ("kind", "digest", "tag", "error", "at")})
    out = {"pending": len(pending), "failed": len(failed), "queue": queue}
    if ecr.enabled:
        out["repositories"] = await _described(ecr)
    return out


def requeue_failed(cache_dir) -> int:
    """Offline ``tier sync``: the failed jobs pending again in the journal (the daemon runs
    them at its next start); how many."""
    directory = cache_dir / JOURNAL_DIR
    if not directory.is_dir():
        return 0
    journal = Journal(directory).open()
    try:
        return journal.requeue()
    finally:
        journal.close()


def _journal(directory) -> tuple[list, list[dict]]:
    if not directory.is_dir():   # never created: nothing was ever queued (and none made here)
        return [], []
    journal = Journal(directory).open()
    try:
        return journal.pending(), journal.failed()
    finally:
        journal.close()


async def _described(ecr) -> dict | str:
    async with EcrApi(ecr.region, registry_id=ecr.registry_id, profile=ecr.profile,
                      endpoint_url=ecr.endpoint_url) as api:
        try:
            found = await api.repositories(ecr.repository_prefix + "/")
        except errors.PullcacheError as exc:
            return f"DescribeRepositories failed: {exc}"
    return {r["repositoryName"]: {
        "encryption": (r.get("encryptionConfiguration") or {}).get("encryptionType"),
        "kms_key": (r.get("encryptionConfiguration") or {}).get("kmsKey"),
        "scan_on_push": (r.get("imageScanningConfiguration") or {}).get("scanOnPush"),
        "tag_mutability": r.get("imageTagMutability"),
        "created_at": r["createdAt"].isoformat() if r.get("createdAt") else None,
    } for r in found}
