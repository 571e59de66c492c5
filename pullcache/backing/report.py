"""``pullcache tier status``: one JSON shape, from the daemon or offline.

``report`` builds it for both: ``WriteBehind.status()`` (the daemon's queue, what the node
knows of each repository) and ``tier_status`` here (no daemon: the durable queue in the cache
dir, and the repositories as DescribeRepositories tells them)::

    {"enabled": bool,                      # a tier ([backing.ecr] or [backing.s3]) enabled
     "pending": int, "in_flight": int, "failed": int,
     "queue": {REPOSITORY: {"pending": int, "in_flight": int,
                            "failed": [{"kind", "digest", "tag", "error", "at"}]}},
     "repositories": {REPOSITORY: {"state": "created" | "existing" | "denied",
                                   "encryption", "kms_key", "scan_on_push",
                                   "tag_mutability", "created_at"}},
     "repositories_error": str | null}     # why the repositories could not be listed

Offline, nothing is in flight (no daemon pushes), and every repository DescribeRepositories
lists is ``existing`` with its settings; the daemon knows the state of the repositories it
has used, not their settings (null). With the S3 tier, the one "repository" is the bucket
and prefix (``s3://bucket/prefix/``), its state "writable" or "read-only: …" (the daemon's;
offline, none is listed).
"""

from __future__ import annotations

import asyncio
from typing import Callable, Iterable

from .. import errors
from .ecr import EcrApi, repository_name
from .journal import JOURNAL_DIR, Journal
from .s3.layout import repository as s3_repository

SETTINGS = ("encryption", "kms_key", "scan_on_push", "tag_mutability", "created_at")


def report(*, enabled: bool, name: Callable[[str, str], str],
           jobs: Iterable[tuple[str, str, bool]], failed: Iterable[dict],
           repositories: dict[str, dict], repositories_error: str | None = None) -> dict:
    """The tier status. ``name``: the tier repository of (upstream, repository); ``jobs``:
    (upstream, repository, in flight) per queued job; ``failed``: failure records (with
    ``upstream`` and ``repo``); ``repositories``: name → ``{"state": …}`` and, where known,
    the settings."""
    queue: dict[str, dict] = {}

    def of(upstream: str, repo: str) -> dict:
        try:
            mirrored = name(upstream, repo)
        except errors.PullcacheError:   # a name that cannot be mirrored: the client's
            mirrored = f"{upstream}/{repo}"
        return queue.setdefault(mirrored, {"pending": 0, "in_flight": 0, "failed": []})
    for upstream, repo, in_flight in jobs:
        of(upstream, repo)["in_flight" if in_flight else "pending"] += 1
    for item in failed:
        of(item["upstream"], item["repo"])["failed"].append(
            {k: item.get(k) for k in ("kind", "digest", "tag", "error", "at")})
    return {"enabled": enabled,
            "pending": sum(r["pending"] for r in queue.values()),
            "in_flight": sum(r["in_flight"] for r in queue.values()),
            "failed": sum(len(r["failed"]) for r in queue.values()), "queue": queue,
            "repositories": {n: {"state": r.get("state"), **{k: r.get(k) for k in SETTINGS}}
                             for n, r in sorted(repositories.items())},
            "repositories_error": repositories_error}


async def tier_status(cache_dir, ecr, s3=None) -> dict:
    """``ecr`` and ``s3`` are the ``[backing.ecr]`` and ``[backing.s3]`` sections."""
    pending, failed = await asyncio.to_thread(_journal, cache_dir / JOURNAL_DIR)
    if s3 is not None and s3.enabled:
        # A bucket has no repositories to describe: the daemon tells the tier's state.
        return report(enabled=True, name=s3_repository,
                      jobs=((job.upstream, job.repo, False) for job in pending),
                      failed=failed, repositories={})
    repositories, error = await _described(ecr) if ecr.enabled else ({}, None)
    return report(enabled=ecr.enabled,
                  name=lambda upstream, repo: repository_name(ecr.repository_prefix,
                                                              upstream, repo),
                  jobs=((job.upstream, job.repo, False) for job in pending), failed=failed,
                  repositories=repositories, repositories_error=error)


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


async def _described(ecr) -> tuple[dict[str, dict], str | None]:
    async with EcrApi(ecr.region, registry_id=ecr.registry_id, profile=ecr.profile,
                      endpoint_url=ecr.endpoint_url) as api:
        try:
            found = await api.repositories(ecr.repository_prefix + "/")
        except errors.PullcacheError as exc:
            return {}, f"DescribeRepositories failed: {exc}"
    return {r["repositoryName"]: {
        "state": "existing",
        "encryption": (r.get("encryptionConfiguration") or {}).get("encryptionType"),
        "kms_key": (r.get("encryptionConfiguration") or {}).get("kmsKey"),
        "scan_on_push": (r.get("imageScanningConfiguration") or {}).get("scanOnPush"),
        "tag_mutability": r.get("imageTagMutability"),
        "created_at": r["createdAt"].isoformat() if r.get("createdAt") else None,
    } for r in found}, None
