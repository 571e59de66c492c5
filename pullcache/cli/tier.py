"""``pullcache tier status``: the ECR tier's write-behind queue (pending, in flight, failed
with the last error, per repository) and the repositories pullcache created.

From the running daemon's admin API when one answers (its in-flight jobs included); else from
the durable queue on disk (``backing/journal.py``) and DescribeRepositories.
"""

from __future__ import annotations

import asyncio
import json
import sys

from ..backing.report import tier_status
from .client import AdminClient, AdminError, DaemonUnreachable


def tier_command(cfg) -> int:
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
