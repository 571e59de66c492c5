"""The cache's filesystem as the budget and the fills see it.

- **Room**: the budget is ``min(max_size, used + free − min_free)``, with free space from
  ``statvfs(2)`` read at start and after each commit, so a disk smaller than ``max_size`` (a
  small CI runner) fills up to ``min_free`` and no further. A blob larger than that limit
  can never be held: its fill passes through from the start.
- **Health**: a fill or write the disk refused (ENOSPC, EDQUOT, EIO, EROFS, a removed
  directory) marks the cache *degraded* (``/readyz`` says so, with the error) until a commit
  succeeds again; meanwhile fills pass through memory (``passthrough.py``). A read-only
  filesystem is logged loudly: until it is remounted, nothing can be cached.
- **Repair**: a removed cache root (``rm -rf`` under the daemon, a tmpfs remounted) is
  recreated, tree and index, on the first operation that fails on it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import structlog

from .passthrough import as_oserror, is_disk_error
from .store import BlobStore, Budget
from .tags import TagStore

log = structlog.get_logger("pullcache.cache")
TREE = ("blobs", "manifests", "tmp", "index", "tags")


class Disk:
    def __init__(self, store: BlobStore, tags: TagStore | None, *, max_size: int,
                 min_free: int) -> None:
        self.store = store
        self.tags = tags
        self.root = store.root
        self.max_size = max_size
        self.min_free = min_free
        self.degraded: str | None = None   # why the disk refused the last write, if it did
        self.readonly = False
        self._repairing: asyncio.Lock | None = None
        self._scratch: Path | None = None   # the index's home when the root is read-only

    # -- opening -----------------------------------------------------------------------------

    async def open(self, *, reconcile: bool) -> None:
        """Open the store and the tag records. On a filesystem that refuses writes (read-only,
        say) the daemon still starts, in pass-through mode: the index and tag records live
        in a private scratch dir (removed at ``close``), every fill passes through, nothing
        is cached until a restart finds the filesystem writable."""
        try:
            await self.store.open(reconcile=reconcile)
            if self.tags is not None:
                await self.tags.open()
            return
        except (OSError, sqlite3.Error) as exc:
            cause = as_oserror(exc)
            if not is_disk_error(cause):
                raise
            self.refused("opening the cache", cause)
        self._scratch = Path(await asyncio.to_thread(tempfile.mkdtemp,
                                                     prefix="pullcache-scratch-"))
        log.error("cache_passthrough_mode", root=str(self.root), scratch=str(self._scratch),
                  detail=self.degraded)
        await self.store.open(reconcile=False, index_root=self._scratch)
        if self.tags is not None:
            await self.tags.open(self._scratch)

    @property
    def home(self) -> Path:
        """Where the index and tag records live: the root, or the scratch dir (read-only)."""
        return self._scratch or self.root

    async def close(self) -> None:
        if self._scratch is not None:
            await asyncio.to_thread(shutil.rmtree, self._scratch, True)

    # -- room --------------------------------------------------------------------------------

    async def refresh(self) -> int:
        """Re-read free space and set the store's budget to what the disk allows."""
        def _statvfs() -> tuple[int, int] | None:
            try:
                st = os.statvfs(self.root)
                return st.f_bavail * st.f_frsize, self.store.index.volume()
            except (OSError, sqlite3.Error):
                return None     # a removed tree: repaired by the next failing operation
        got = await asyncio.to_thread(_statvfs)
        if got is None:
            return self.store.budget.max_size
        free, used = got
        limit = max(0, min(self.max_size, used + free - self.min_free))
        budget = self.store.budget
        if limit != budget.max_size:
            self.store.budget = Budget(limit, budget.high_watermark, budget.low_watermark)
        return limit

    def fits(self, nbytes: int) -> bool:
        """Whether a blob of ``nbytes`` could be held at all, everything else evicted."""
        return nbytes <= self.store.budget.max_size

    # -- health ------------------------------------------------------------------------------

    def refused(self, what: str, exc: OSError) -> None:
        """The disk refused a write: degraded until a commit succeeds (``recovered``)."""
        detail = f"{what}: {exc.strerror or exc} (errno {errno.errorcode.get(exc.errno, exc.errno)})"
        first = self.degraded is None
        self.degraded = detail
        if exc.errno == errno.EROFS:
            if not self.readonly:
                log.error("cache_readonly", root=str(self.root), detail=detail,
                          mode="pass-through: nothing is cached until the filesystem is "
                               "writable again")
            self.readonly = True
        elif first:
            log.error("cache_disk_degraded", root=str(self.root), detail=detail)

    def recovered(self) -> None:
        if self.degraded is not None:
            log.info("cache_disk_recovered", root=str(self.root), was=self.degraded)
        self.degraded = None
        self.readonly = False

    def status(self) -> dict | None:
        """For ``/readyz``: None when healthy."""
        if self.degraded is None:
            return None
        return {"degraded": "disk", "detail": self.degraded,
                "mode": "pass-through (read-only filesystem)" if self.readonly
                else "pass-through"}

    async def failed(self, what: str, exc: Exception) -> None:
        """A cache operation failed with ``exc`` (a ``StorageError`` from the store or the
        tag records): note what the disk refused, and repair a removed tree."""
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if is_disk_error(cause):
            self.refused(what, cause)
        await self.repair()

    # -- repair ------------------------------------------------------------------------------

    async def repair(self) -> bool:
        """Recreate a removed cache tree and reopen its index; True if anything was missing
        and is back. Safe to call from many requests at once (one repair runs)."""
        if self._scratch is not None:
            return False        # read-only at start: pass-through until a restart
        if self._repairing is None:
            self._repairing = asyncio.Lock()
        async with self._repairing:
            missing = await asyncio.to_thread(
                lambda: [d for d in TREE if not (self.root / d).is_dir()])
            if not missing:
                return False
            try:
                await self.store.open(reconcile=False)   # the tree and a new, empty index
                if self.tags is not None:
                    await self.tags.open()
            except OSError as exc:
                self.refused("recreating the cache tree", exc)
                return False
            log.warning("cache_root_recreated", root=str(self.root), missing=missing)
            return True
