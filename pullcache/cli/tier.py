"""``pullcache tier status``: the ECR tier's write-behind queue (pending, in flight, failed
with the last error, per repository) and the repositories pullcache created.
``pullcache tier sync``: the jobs that failed for good, queued again.

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
    try:
        status = AdminClient.for_config(cfg).get("/admin/tier")
        status["source"] = "daemon"
    except DaemonUnreachable:
        status = {"source": "offline", **asyncio.run(tier_status(cfg.cache.dir,
                                                                 cfg.backing_ecr))}
    except AdminError as exc:
        print(f"pullcache: tier status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2))
    return 0


def _sync(cfg) -> int:
    """Queue the jobs that failed for good again: in the daemon now, or (offline) in the
    journal on disk, for the next start."""
    try:
        out = {"source": "daemon", **AdminClient.for_config(cfg).post("/admin/tier/sync")}
    except DaemonUnreachable:
        out = {"source": "offline", "queued": requeue_failed(cfg.cache.dir)}
    except AdminError as exc:
        print(f"pullcache: tier sync: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0
