"""Content-addressed files under the cache root, their LRU index, budget and recovery.

Layout (all on one filesystem, so a commit is an atomic rename)::

    <root>/blobs/sha256/ab/abcd…       committed blobs
    <root>/manifests/sha256/ab/abcd…   committed manifests (their media type is in the index)
    <root>/tmp/                        fills in progress; anything here at start-up is a crash
    <root>/index/                      diskcache: LRU index of the two trees above
    <root>/tags/                       diskcache: tag records (see tags.py)

Paths are built only from a parsed ``Digest`` (hex checked by oci.Digest.parse), so no
request can name a path outside the root.

A hit is served from the ``HotLayer`` (memory: entries, manifest bodies) without SQLite or a
thread; a miss reads the index (without writing it) and warms the hot layer. Recency goes
to the index in bulk (``flush_recency``). Links (``links.py``: which upstream and repository
a file may answer) are read the same way: memory first, else the index, warming memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import structlog

from ..errors import StorageError
from ..oci import Digest
from .budget import Budget, Reservation
from .hot import HotLayer
from .index import Entry, Index, relpath_for
from .links import KnownLinks, Where
from .passthrough import as_oserror
from .recovery import KINDS, Reconciled, reconcile  # noqa: F401 - KINDS: part of the API

log = structlog.get_logger("pullcache.cache")


class BlobStore:
    """Committed content: stat, open, commit, evict. Async façade over blocking I/O."""

    def __init__(self, root: Path, budget: Budget, *, on_evict=None,
                 hot: HotLayer | None = None) -> None:
        self.root = root
        self.budget = budget
        self.tmp = root / "tmp"
        self.hot = hot if hot is not None else HotLayer(0)
        self.known_links = KnownLinks(self.hot)
        self._reserved = 0  # bytes promised to fills in progress
        self._evicted_bytes = 0
        # Making room and reserving are one step under this lock (else concurrent fills
        # each see room for themselves and overshoot together); ``_released`` wakes a fill
        # waiting for in-flight reservations to end.
        self._budget_lock = asyncio.Lock()
        self._released = asyncio.Event()
        self._on_evict = on_evict or (lambda n, nbytes: None)
        self._index: Index | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self, *, reconcile: bool = True,
                   index_root: Path | None = None) -> Reconciled | None:
        """``index_root``: keep the index elsewhere (a scratch dir when the cache root is
        read-only: ``disk.Disk.open``)."""
        def _open() -> None:
            if index_root is None:
                for sub in ("blobs", "manifests", "tmp"):
                    (self.root / sub).mkdir(parents=True, exist_ok=True)
            self._index = Index(index_root or self.root)
            self._index.forgotten = self._forget  # type: ignore[method-assign]
            self._index.learned = self.known_links.learn  # type: ignore[method-assign]
        await asyncio.to_thread(_open)
        return await self.reconcile() if reconcile else None

    async def close(self) -> None:
        if self._index is not None:
            await self.flush_recency()
            await asyncio.to_thread(self._index.close)

    @property
    def index(self) -> Index:
        if self._index is None:
            raise StorageError("cache is not open")
        return self._index

    # -- reads -------------------------------------------------------------------------------

    def lookup(self, kind: str, digest: Digest, *, pin: bool = False) -> Entry | None:
        """The entry if the hot layer has it (no I/O, no thread), recording the use."""
        key = _key(kind, digest)
        value = self.hot.get(key, self._pin_value if pin else None)
        if value is None:
            return None
        self.hot.touch(key)
        return value[0]

    async def stat(self, kind: str, digest: Digest, *, pin: bool = False) -> Entry | None:
        """The committed entry for ``digest``, recording the use; None on a miss.

        ``pin``: also keep its file from eviction until ``unpin`` (a response will serve
        it); found and pinned in one step, so eviction cannot come in between.
        """
        entry = self.lookup(kind, digest, pin=pin)
        if entry is None:
            key = _key(kind, digest)
            try:
                entry = await asyncio.to_thread(self._warm, key, pin, False)
            except (OSError, sqlite3.Error) as exc:   # a removed or unreadable cache dir
                raise StorageError(f"index: {exc}") from as_oserror(exc)
            if entry is not None:
                self.hot.touch(key)   # here, on the loop: touches are the loop's alone
        return entry

    def cached_manifest(self, digest: Digest) -> tuple[Entry, bytes] | None:
        """A manifest and its body from memory, or None: the hot path, no I/O."""
        key = _key("manifest", digest)
        value = self.hot.get(key)
        if value is None or value[1] is None:
            return None
        self.hot.touch(key)
        return value

    async def manifest(self, digest: Digest) -> tuple[Entry, bytes] | None:
        """A manifest and its body: from memory, else from disk (warming memory)."""
        found = self.cached_manifest(digest)
        if found is None:
            key = _key("manifest", digest)
            try:
                found = await asyncio.to_thread(self._warm, key, False, True)
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"index: {exc}") from as_oserror(exc)
            if found is not None:
                self.hot.touch(key)
        return found

    # -- links -------------------------------------------------------------------------------

    def known_link(self, kind: str, digest: Digest, where: Where) -> bool:
        """Whether memory knows ``kind:digest`` is linked to ``where``: the hot path."""
        return self.known_links.known(_key(kind, digest), where)

    async def linked(self, kind: str, digest: Digest, where: Where) -> bool:
        """Whether ``kind:digest`` is linked to ``where``: memory, else the index."""
        return await self._on_links("linked", kind, digest, where)

    async def link(self, kind: str, digest: Digest, where: Where) -> bool:
        """Record that ``kind:digest`` may answer ``where``; False when it is not cached."""
        return await self._on_links("link", kind, digest, where)

    async def _on_links(self, method: str, kind: str, digest: Digest, where: Where) -> bool:
        """True when memory knows the link; else the index's ``method``, in a thread."""
        key = _key(kind, digest)
        if self.known_links.known(key, where):
            return True
        try:
            return await asyncio.to_thread(getattr(self.index, method), key, where)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"index: {exc}") from as_oserror(exc)

    def _forget(self, keys: list[str]) -> None:
        """(under the index's eviction lock) Keys dropped: their entries and links."""
        self.hot.forget(keys)
        self.known_links.forget(keys)

    def _pin_value(self, value: tuple[Entry, bytes | None]) -> None:
        self.index.pin(value[0].relpath)

    def _warm(self, key: str, pin: bool, body: bool):
        """(thread) Read ``key`` from the index and keep it in the hot layer: under the
        index's eviction lock, so an eviction cannot forget it before it is kept.

        Returns the ``Entry``, or with ``body`` the ``(Entry, bytes)`` pair; None on a miss.
        """
        kept: list = []

        def keep(key: str, entry: Entry) -> None:
            data = None
            if body or key.startswith("manifest:"):
                with contextlib.suppress(FileNotFoundError):
                    data = (self.root / entry.relpath).read_bytes()
            self.hot.put(key, (entry, data))
            kept.append((entry, data))
        entry = self.index.get(key, pin=pin, found=keep)
        if entry is None:
            return None
        if not body:
            return entry
        return kept[0] if kept and kept[0][1] is not None else None

    async def flush_recency(self) -> int:
        """Write the buffered uses to the index in one transaction; return how many."""
        touches = self.hot.take_touches()
        if touches:
            self.hot.forget(await asyncio.to_thread(self.index.touch, touches))
        return len(touches)

    def unpin(self, entry: Entry) -> None:
        self.index.unpin(entry.relpath)

    def path(self, entry: Entry) -> Path:
        return self.root / entry.relpath

    async def read_bytes(self, entry: Entry) -> bytes:
        return await asyncio.to_thread(self.path(entry).read_bytes)

    @contextmanager
    def pin(self, entry: Entry) -> Iterator[None]:
        """Keep ``entry``'s file on disk while a response serves it (see ``stat(pin=…)``)."""
        self.index.pin(entry.relpath)
        try:
            yield
        finally:
            self.unpin(entry)

    # -- writes ------------------------------------------------------------------------------

    def temp_path(self) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}.part"

    async def commit(self, kind: str, digest: Digest, temp: Path, size: int,
                     media_type: str | None = None, links: frozenset[Where] = frozenset(),
                     ) -> Entry:
        """Move a verified, fsynced temp file into place and index it, linked to ``links``.

        The order (rename, fsync the directory, then index) means a crash leaves at worst a
        file without an entry, which ``reconcile`` verifies and adopts (without links).
        """
        relpath = relpath_for(kind, digest.algorithm, digest.hex)
        entry = Entry(relpath, size, media_type)

        def _commit() -> Entry:
            final = self.root / relpath
            final.parent.mkdir(parents=True, exist_ok=True)
            key = _key(kind, digest)
            if key in self.index:
                temp.unlink(missing_ok=True)   # someone else committed it meanwhile
                entry_now = self.index.get(key) or entry
            else:
                os.replace(temp, final)
                _fsync_dir(final.parent)
                self.index.add(key, entry)
                self._warm(key, False, False)   # the next request for it: a memory hit
                entry_now = entry
            for where in links:
                self.index.link(key, where)
            return entry_now
        try:
            return await asyncio.to_thread(_commit)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(str(exc)) from as_oserror(exc)

    async def put_bytes(self, kind: str, digest: Digest, data: bytes,
                        media_type: str | None = None,
                        links: frozenset[Where] = frozenset()) -> Entry:
        """Commit small verified content (a manifest) held in memory."""
        temp = self.temp_path()

        def _write() -> None:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        try:
            await asyncio.to_thread(_write)
        except OSError as exc:
            with suppress(OSError):       # a read-only or removed tree refuses this too
                temp.unlink(missing_ok=True)
            raise StorageError(str(exc)) from exc
        return await self.commit(kind, digest, temp, len(data), media_type, links)

    # -- budget ------------------------------------------------------------------------------

    async def reserve(self, nbytes: int) -> Reservation:
        """Make room for ``nbytes`` and count them against the budget, as one step.

        While fills in progress hold so much that even after eviction ``nbytes`` would not
        fit in ``max_size``, wait for one of them to end. A fill alone is never kept waiting
        (a blob bigger than the cache, or a cache full of pinned files, still goes through).
        """
        while True:
            async with self._budget_lock:
                released = self._released
                volume = await self._make_room(nbytes)
                if self._reserved == 0 or volume + self._reserved + nbytes <= self.budget.max_size:
                    self._reserved += nbytes
                    return Reservation(self._unreserve, nbytes)
            log.info("cache_full_waited", bytes=nbytes, reserved=self._reserved)
            await released.wait()

    async def grow(self, reservation: Reservation, nbytes: int) -> None:
        """Count ``nbytes`` more for a fill whose source announced no length, having made
        room for them. Never waits for other fills (they may be growing too, each waiting
        for the other to end); the bytes are counted even if the index cannot evict now."""
        async with self._budget_lock:
            if not reservation.held:
                return                      # released meanwhile: nothing to count
            self._reserved += nbytes
            reservation.nbytes += nbytes
            await self._make_room(0)

    def _unreserve(self, nbytes: int) -> None:
        self._reserved -= nbytes
        released, self._released = self._released, asyncio.Event()
        released.set()

    async def make_room(self, incoming: int = 0) -> int:
        """Evict LRU entries when usage would pass the high watermark; return bytes freed.

        Eviction goes down to the low watermark, less what fills in progress will add.
        Files a response is serving are unlinked once it ends (``release``).
        """
        async with self._budget_lock:
            before = self._evicted_bytes
            await self._make_room(incoming)
            return self._evicted_bytes - before

    async def _make_room(self, incoming: int) -> int:
        """(under the budget lock) Flush recency, evict if needed; return the volume after."""
        reserved = self._reserved
        touches = self.hot.take_touches()   # the LRU order is flushed recency plus these

        def _evict() -> tuple[int, int, int]:
            before = self.index.volume()
            if before + reserved + incoming <= self.budget.high:
                self.hot.forget(self.index.touch(touches))
                return 0, 0, before
            freed = self.index.evict_to(self.budget.low - reserved - incoming, touches)
            after = self.index.volume()
            return len(freed), max(before - after, 0), after
        try:
            count, nbytes, volume = await asyncio.to_thread(_evict)
        except (OSError, sqlite3.Error) as exc:   # a read-only or removed index: these
            raise StorageError(f"index: {exc}") from as_oserror(exc)   # uses are lost
        if count:
            log.info("cache_evicted", files=count, bytes=nbytes)
            self._evicted_bytes += nbytes
            self._on_evict(count, nbytes)
        return volume

    async def release(self) -> None:
        """Unlink evicted files whose last reader has gone."""
        await asyncio.to_thread(self.index.release_unpinned)

    async def usage(self) -> dict[str, int]:
        def _usage() -> dict[str, int]:
            return {"bytes": self.index.volume(), "entries": self.index.count(),
                    "max_size": self.budget.max_size, "reserved": self._reserved}
        return await asyncio.to_thread(_usage)

    async def readiness(self) -> list[str]:
        """What stops this cache from serving: an unwritable directory, a closed index."""
        def _check() -> list[str]:
            problems = []
            probe = self.tmp / f".ready-{uuid.uuid4().hex}"
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                problems.append(f"cache dir not writable: {exc}")
            try:
                self.index.count()
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                problems.append(f"index unavailable: {exc}")
            return problems
        return await asyncio.to_thread(_check)

    # -- recovery ----------------------------------------------------------------------------

    async def reconcile(self) -> Reconciled:
        """Make index and disk agree after a crash (or a hand-edit).

        Temp files are unfinished fills: deleted. Entries whose file is gone: dropped. Files
        without an entry (a crash between rename and index): hashed, adopted when the content
        matches the name, deleted otherwise.
        """
        result = await asyncio.to_thread(reconcile, self.root, self.tmp, self.index)
        log.info("cache_reconciled", **dataclasses.asdict(result))
        return result

def _key(kind: str, digest: Digest) -> str:
    return f"{kind}:{digest}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
