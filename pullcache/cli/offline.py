"""The cache commands without a daemon: on the cache dir directly, under its lock (the
caller holds it). Same result shapes as the admin API (``ops/summary.py``), with
``daemon: false`` and null for the daemon's traffic figures."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console

from ..cache.disk import Disk
from ..cache.pins import PinSet
from ..cache.store import BlobStore, Budget
from ..ops.catalog import Catalog
from ..ops.jobs import describe
from ..ops.summary import summary
from ..ops.verify import Verifier, VerifyProgress
from . import render


def run(cfg, args, console: Console) -> int:
    return asyncio.run(_run(cfg, args, console))


async def _run(cfg, args, console: Console) -> int:
    store = BlobStore(cfg.cache.dir, Budget(cfg.cache.max_size, cfg.cache.high_watermark,
                                            cfg.cache.low_watermark))
    # No reconcile: that is the daemon's start-up work, and the lock is all this needs.
    await store.open(reconcile=False)
    # The budget the daemon would have: max_size, less what min_free keeps free on the disk.
    await Disk(store, None, max_size=cfg.cache.max_size, min_free=cfg.cache.min_free).refresh()
    pins = await asyncio.to_thread(PinSet(cfg.cache.dir).load)
    store.index.keeps = pins.keeps   # offline gc keeps what the daemon pinned
    try:
        return await ACTIONS[args.action](cfg, args, console, store, pins)
    finally:
        await store.close()


async def _summary(cfg, store: BlobStore, pins: PinSet) -> dict:
    return summary(cfg.cache.dir, await store.usage(), pins.pinned_bytes(), None)


async def _stats(cfg, args, console, store, pins) -> int:
    return render.stats(await _summary(cfg, store, pins), args.json, console)


async def _ls(cfg, args, console, store, pins) -> int:
    catalog = Catalog(store, pins)
    await catalog.open()
    try:
        rows = await catalog.ls(args.repo)
    finally:
        await catalog.close()
    return render.ls({"images": rows, "totals": await _summary(cfg, store, pins)},
                     args.json, console)


async def _gc(cfg, args, console, store, pins) -> int:
    freed = await store.make_room()
    await store.release()
    return render.gc({"freed_bytes": freed, **await store.usage()}, args.json, console)


async def _verify(cfg, args, console, store, pins) -> int:
    progress = VerifyProgress(repair=args.repair)
    verifier = Verifier(store, rate=args.rate)
    created = time.time()
    with render.VerifyDisplay(console, enabled=not args.json) as display:
        task = asyncio.create_task(verifier.run(progress))
        while not task.done():
            display.update({**progress.snapshot(), "state": "running"})
            await asyncio.wait([task], timeout=0.25)
        # The same job shape as the daemon's (``ops/jobs.py``): a crash is a failed job
        # with its error, which ``render.verified`` reports.
        error = task.exception()
        state = "failed" if error is not None or not task.result() else "done"
        job = {"id": None, "kind": "verify", "state": state,
               "error": describe(error) if error else None, "created": created,
               "ended": time.time(), **progress.snapshot()}
        display.update(job)
    return render.verified(job, args.json, console)


async def _pins(cfg, args, console, store, pins) -> int:
    listed = [{"ref": p.ref, "digest": p.digest, "bytes": p.bytes, "keys": len(p.sizes),
               "checked_at": p.checked_at, "error": p.error, "warming": None}
              for p in pins.pins()]
    return render.pins({"pins": listed, "pinned_bytes": pins.pinned_bytes(),
                        "max_size": cfg.cache.max_size, "over_budget": None},
                       args.json, console)


ACTIONS = {"stats": _stats, "ls": _ls, "gc": _gc, "verify": _verify, "pins": _pins}
