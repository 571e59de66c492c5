"""``pullcache cluster status``: the running daemon's view of cluster mode (its admin API's
``/admin/cluster``): this node, the members, each peer's breaker and last error, and blob
requests and bytes by source (local, peer, tier, origin)."""

from __future__ import annotations

import json
import sys

from .client import AdminClient, AdminError, DaemonUnreachable
from ..units import human_size as size


def cluster_command(cfg, as_json: bool) -> int:
    try:
        status = AdminClient.for_config(cfg).get("/admin/cluster")
    except (DaemonUnreachable, AdminError) as exc:
        print(f"pullcache: cluster status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if as_json else render(status))
    return 0


def render(status: dict) -> str:
    if not status.get("enabled"):
        lines = ["cluster mode: off"]
    else:
        dns = status.get("dns")
        lines = [f"this node: {status['me']}    members: {status['members']}"
                 + (f"    from DNS {dns['name']}" + (f" (failing: {dns['error']})"
                                                     if dns.get("error") else "")
                    if dns else "")]
        peers = status.get("peers", [])
        width = max([len(p["address"]) for p in peers] + [4])
        lines.append(f"{'PEER':<{width}}  {'BREAKER':<9}  LAST ERROR")
        lines += [f"{p['address']:<{width}}  {p['breaker']:<9}  {p['last_error'] or '-'}"
                  for p in peers] or ["(no peer: this node alone)"]
    lines.append("blobs by source: " + ", ".join(
        f"{name} {int(v['requests'])} ({size(v['bytes'])})"
        for name, v in status["sources"].items()))
    return "\n".join(lines)
