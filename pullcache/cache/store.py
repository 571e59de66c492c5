"""Content-addressed files under the cache root: their LRU index, room (room.py), recovery.

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
from .room import Room
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
        self.room = Room(lambda: self.budget, self.hot, lambda: self.index, on_evict)
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
        entry = await self.commit(kind, digest, temp, len(data), media_type, links)
        self.room.added(len(data))   # (no reservation counted these bytes)
        return entry

    # -- budget ------------------------------------------------------------------------------

    async def reserve(self, nbytes: int) -> Reservation:
        """``nbytes`` counted against the budget, room made for them (``Room.reserve``)."""
        return await self.room.reserve(nbytes)

    async def grow(self, reservation: Reservation, nbytes: int) -> None:
        """``nbytes`` more for a fill of unknown length (``Room.grow``)."""
        await self.room.grow(reservation, nbytes)

    async def make_room(self, incoming: int = 0) -> int:
        """Evict down to the low watermark if past the high one; bytes freed
        (``Room.make_room``)."""
        return await self.room.make_room(incoming)

    async def release(self) -> None:
        """Unlink evicted files whose last reader has gone."""
        await asyncio.to_thread(self.index.release_unpinned)

    async def usage(self) -> dict[str, int]:
        def _usage() -> dict[str, int]:
            return {"bytes": self.index.volume(), "entries": self.index.count(),
                    "max_size": self.budget.max_size, "reserved": self.room.reserved}
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
