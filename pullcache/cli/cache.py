"""``pullcache cache ls|rm|gc|verify|stats|pins``: through the daemon's admin API when one
runs, so pins, the index and the metrics are the daemon's own; ``ls``, ``gc``, ``verify``,
``stats`` and ``pins`` also work without a daemon, directly on the cache dir, holding its lock
(``cache/lock.py``) so that no daemon starts meanwhile.

``--json`` prints the same shape either way: ``stats`` and the ``totals`` of ``ls`` are
``ops/summary.py``'s (the daemon's traffic figures are null offline, never absent);
``verify`` prints its job (``id`` null offline); in the figures, ``daemon`` says which
answered.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console

from ..cache.lock import CacheLock, CacheLocked
from . import offline, render
from .client import AdminClient, AdminError, DaemonUnreachable

OFFLINE = ("ls", "gc", "verify", "stats", "pins")


def cache_command(cfg, args) -> int:
    console = render.console()
    try:
        try:
            client = AdminClient.for_config(cfg)
            return ONLINE[args.action](client, args, console)
        except DaemonUnreachable as exc:
            if args.action not in OFFLINE:
                print(f"pullcache: cache {args.action} needs the running daemon: {exc}",
                      file=sys.stderr)
                return 1
            try:
                with CacheLock(cfg.cache.dir, f"pullcache cache {args.action}"):
                    return offline.run(cfg, args, console)
            except CacheLocked as locked:
                print(f"pullcache: {locked}, and its admin API did not answer: {exc}",
                      file=sys.stderr)
                return 1
    except AdminError as exc:
        print(f"pullcache: cache {args.action}: {exc}", file=sys.stderr)
        return 1


def _stats(client: AdminClient, args, console: Console) -> int:
    return render.stats(client.get("/admin/stats"), args.json, console)


def _ls(client: AdminClient, args, console: Console) -> int:
    query = f"?repo={_quote(args.repo)}" if args.repo else ""
    return render.ls(client.get("/admin/ls" + query), args.json, console)


def _rm(client: AdminClient, args, console: Console) -> int:
    result = client.post("/admin/rm", {"refs": args.refs})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        render.removed(result, console)
    return 1 if result["not_cached"] else 0


def _gc(client: AdminClient, args, console: Console) -> int:
    return render.gc(client.post("/admin/gc"), args.json, console)


def _verify(client: AdminClient, args, console: Console) -> int:
    job = client.post("/admin/verify", {"repair": args.repair,
                                        **({"rate": args.rate} if args.rate else {})})
    with render.VerifyDisplay(console, enabled=not args.json) as display:
        job = client.follow(job, display.update)
    return render.verified(job, args.json, console)


def _pins(client: AdminClient, args, console: Console) -> int:
    return render.pins(client.get("/admin/pins"), args.json, console)


def _quote(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")


ONLINE = {"stats": _stats, "ls": _ls, "rm": _rm, "gc": _gc, "verify": _verify,
          "pins": _pins}
