"""``cache stats`` and the totals of ``cache ls``: one JSON shape whether the daemon answers
(its admin API) or the CLI reads the cache dir itself (docs/operations.md)::

    {"dir": str, "bytes": int, "entries": int, "max_size": int, "reserved": int,
     "pinned_bytes": int, "daemon": bool,
     "hits", "misses", "hit_ratio", "evicted_files", "evicted_bytes",
     "served_from_cache_bytes", "fetched_upstream_bytes", "fills_in_flight"}

``max_size`` is the budget in force: ``cache.max_size``, less what ``cache.min_free`` keeps
free on the disk. The traffic figures (the second group) are the daemon's since it started:
null without a daemon, never absent.
"""

from __future__ import annotations

from pathlib import Path

TRAFFIC = ("hits", "misses", "hit_ratio", "evicted_files", "evicted_bytes",
           "served_from_cache_bytes", "fetched_upstream_bytes", "fills_in_flight")


def summary(cache_dir: Path, usage: dict[str, int], pinned_bytes: int,
            traffic: dict | None) -> dict:
    """``usage``: ``BlobStore.usage()``; ``traffic``: the daemon's figures (keys
    ``TRAFFIC``), None offline."""
    if traffic is not None and set(traffic) != set(TRAFFIC):
        raise ValueError(f"traffic figures {sorted(traffic)} are not {sorted(TRAFFIC)}")
    return {"dir": str(cache_dir), **usage, "pinned_bytes": pinned_bytes,
            "daemon": traffic is not None, **{k: (traffic or {}).get(k) for k in TRAFFIC}}
