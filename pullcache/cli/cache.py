"""``pullcache cache …``: inspect or trim the cache."""

from __future__ import annotations

import json

from ..cache.store import BlobStore, Budget


async def cache_command(cfg, action: str) -> int:
    store = BlobStore(cfg.cache.dir, Budget(cfg.cache.max_size, cfg.cache.high_watermark,
                                            cfg.cache.low_watermark))
    # No reconcile here: the daemon may be mid-fill, and its temp files are not orphans.
    await store.open(reconcile=False)
    try:
        if action == "gc":
            freed = await store.make_room()
            await store.release()
            print(json.dumps({"freed_bytes": freed, **await store.usage()}))
        else:
            print(json.dumps({"dir": str(cfg.cache.dir), **await store.usage()}, indent=2))
    finally:
        await store.close()
    return 0
