"""``pullcache tier status``: the ECR tier's write-behind queue (pending, in flight, failed
with the last error, per repository) and the repositories pullcache created.
``pullcache tier sync``: the jobs that failed for good, queued again.
``pullcache tier init``: the S3 bucket's lifecycle rule aborting incomplete multipart
uploads, or (without the permission) the JSON to apply by hand.

From the running daemon's admin API when one answers (its in-flight jobs included); else from
the durable queue on disk (``backing/journal.py``) and DescribeRepositories. Either way the
JSON has one shape (``backing/report.py``), plus ``source`` (``daemon`` | ``offline``):
``enabled``, ``pending``, ``in_flight``, ``failed``, ``queue`` (per repository: ``pending``,
``in_flight``, ``failed`` records), ``repositories`` (per name: ``state`` and the settings,
null where unknown) and ``repositories_error``. Offline nothing is in flight, and the
settings come from DescribeRepositories; the daemon knows the state of the repositories it
used.
"""

from __future__ import annotations

import asyncio
import json
import sys

from ..backing.report import requeue_failed, tier_status
from .client import AdminClient, AdminError, DaemonUnreachable


def tier_command(cfg, action: str = "status") -> int:
    if action == "sync":
        return _sync(cfg)
    if action == "init":
        return _init(cfg)
    return _from_daemon_or_disk(
        "status", lambda: AdminClient.for_config(cfg).get("/admin/tier"),
        lambda: asyncio.run(tier_status(cfg.cache.dir, cfg.backing_ecr, s3=cfg.backing_s3)))


def _sync(cfg) -> int:
    """Queue the jobs that failed for good again: in the daemon now, or (offline) in the
    journal on disk, for the next start."""
    return _from_daemon_or_disk(
        "sync", lambda: AdminClient.for_config(cfg).post("/admin/tier/sync"),
        lambda: {"queued": requeue_failed(cfg.cache.dir)})


def _from_daemon_or_disk(action: str, daemon, offline) -> int:
    """``daemon()``'s answer, or ``offline()``'s when no daemon answers, printed as JSON
    with its ``source``; exit 1 (the reason on stderr) when the daemon refuses."""
    try:
        out = {"source": "daemon", **daemon()}
    except DaemonUnreachable:
        out = {"source": "offline", **offline()}
    except AdminError as exc:
        print(f"pullcache: tier {action}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


def _init(cfg) -> int:
    """The S3 tier's bucket set up (exit 0), or the rule printed for the operator (exit 1)."""
    from ..backing.contract import TierError
    from ..backing.s3.lifecycle import init
    if not cfg.backing_s3.enabled:
        print("pullcache: tier init: only the S3 tier ([backing.s3]) needs it; ECR "
              "repositories are set up as they are made", file=sys.stderr)
        return 0 if cfg.backing_ecr.enabled else 1
    try:
        out = asyncio.run(init(cfg.backing_s3))
    except TierError as exc:
        print(f"pullcache: tier init: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    if not out["applied"]:
        print(f"pullcache: tier init: {out['action']} was denied: apply \"lifecycle\" above "
              f"to the bucket by hand (aws s3api put-bucket-lifecycle-configuration "
              f"--bucket {cfg.backing_s3.bucket} --lifecycle-configuration file://rule.json)",
              file=sys.stderr)
        return 1
    return 0
