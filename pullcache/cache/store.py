"""Content-addressed files under the cache root, their LRU index, budget and recovery.

Layout (all on one filesystem, so a commit is an atomic rename)::

    <root>/blobs/sha256/ab/abcd…       committed blobs
    <root>/manifests/sha256/ab/abcd…   committed manifests (their media type is in the index)
    <root>/tmp/                        fills in progress; anything here at start-up is a crash
    <root>/index/                      diskcache: LRU index of the two trees above
    <root>/tags/                       diskcache: tag records (see tags.py)

Paths are built only from a parsed ``Digest`` (hex checked by oci.Digest.parse), so no
request can name a path outside the root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import structlog

from ..errors import StorageError
from ..oci import Digest
from .index import Entry, Index, key_for, relpath_for
from .passthrough import as_oserror
from .verify import file_matches

log = structlog.get_logger("pullcache.cache")
KINDS = ("blob", "manifest")


@dataclass(frozen=True, slots=True)
class Budget:
    max_size: int
    high_watermark: float = 0.95
    low_watermark: float = 0.85

    @property
    def high(self) -> int:
        return int(self.max_size * self.high_watermark)

    @property
    def low(self) -> int:
        return int(self.max_size * self.low_watermark)


@dataclass(frozen=True, slots=True)
class Reconciled:
    temp_files_removed: int
    entries_dropped: int
    files_adopted: int
    files_rejected: int


class BlobStore:
    """Committed content: stat, open, commit, evict. Async façade over blocking I/O."""

    def __init__(self, root: Path, budget: Budget, *, on_evict=None) -> None:
        self.root = root
        self.budget = budget
        self.tmp = root / "tmp"
        self._reserved = 0  # bytes promised to fills in progress
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
        await asyncio.to_thread(_open)
        return await self.reconcile() if reconcile else None

    async def close(self) -> None:
        if self._index is not None:
            await asyncio.to_thread(self._index.close)

    @property
    def index(self) -> Index:
        if self._index is None:
            raise StorageError("cache is not open")
        return self._index

    # -- reads -------------------------------------------------------------------------------

    async def stat(self, kind: str, digest: Digest, *, pin: bool = False) -> Entry | None:
        """The committed entry for ``digest``, refreshing its recency; None on a miss.

        ``pin``: also keep its file from eviction until ``unpin`` (a response will serve
        it); found and pinned in one step, so eviction cannot come in between.
        """
        try:
            return await asyncio.to_thread(self.index.get, _key(kind, digest), pin=pin)
        except (OSError, sqlite3.Error) as exc:   # a removed or unreadable cache dir
            raise StorageError(f"index: {exc}") from as_oserror(exc)

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
                     media_type: str | None = None) -> Entry:
        """Move a verified, fsynced temp file into place and index it.

        The order (rename, fsync the directory, then index) means a crash leaves at worst a
        file without an entry, which ``reconcile`` verifies and adopts.
        """
        relpath = relpath_for(kind, digest.algorithm, digest.hex)
        entry = Entry(relpath, size, media_type)

        def _commit() -> Entry:
            final = self.root / relpath
            final.parent.mkdir(parents=True, exist_ok=True)
            key = _key(kind, digest)
            if key in self.index:
                temp.unlink(missing_ok=True)   # someone else committed it meanwhile
                return self.index.get(key) or entry
            os.replace(temp, final)
            _fsync_dir(final.parent)
            self.index.add(key, entry)
            return entry
        try:
            return await asyncio.to_thread(_commit)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(str(exc)) from as_oserror(exc)

    async def put_bytes(self, kind: str, digest: Digest, data: bytes,
                        media_type: str | None = None) -> Entry:
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
        return await self.commit(kind, digest, temp, len(data), media_type)

    # -- budget ------------------------------------------------------------------------------

    @contextmanager
    def reservation(self, nbytes: int) -> Iterator[None]:
        """Count a fill's expected size against the budget until it commits or fails."""
        self._reserved += nbytes
        try:
            yield
        finally:
            self._reserved -= nbytes

    async def make_room(self, incoming: int = 0) -> int:
        """Evict LRU entries when usage would pass the high watermark; return bytes freed.

        Eviction goes down to the low watermark, less what fills in progress will add.
        Files a response is serving are unlinked once it ends (``release``).
        """
        def _evict() -> tuple[int, int]:
            used = self.index.volume() + self._reserved + incoming
            if used <= self.budget.high:
                return 0, 0
            target = self.budget.low - self._reserved - incoming
            before = self.index.volume()
            freed = self.index.evict_to(target)
            return len(freed), max(before - self.index.volume(), 0)
        count, nbytes = await asyncio.to_thread(_evict)
        if count:
            log.info("cache_evicted", files=count, bytes=nbytes)
            self._on_evict(count, nbytes)
        return nbytes

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
        result = await asyncio.to_thread(self._reconcile)
        log.info("cache_reconciled", **dataclasses.asdict(result))
        return result

    def _reconcile(self) -> Reconciled:
        temps = 0
        for temp in self.tmp.iterdir():
            temp.unlink(missing_ok=True)
            temps += 1
        dropped = 0
        for key in list(self.index.keys()):
            kind, _, digest = key.partition(":")
            try:
                parsed = Digest.parse(digest)
            except Exception:  # noqa: BLE001 - a foreign key is simply dropped
                parsed = None
            if parsed is None or kind not in KINDS or not (
                    self.root / relpath_for(kind, parsed.algorithm, parsed.hex)).is_file():
                self.index.drop(key)
                dropped += 1
        adopted = rejected = 0
        for kind in KINDS:
            top = relpath_for(kind, "x", "xx").split("/")[0]
            for path in (self.root / top).glob("*/*/*"):
                relpath = path.relative_to(self.root).as_posix()
                key = key_for(relpath)
                if key is None or key in self.index:
                    continue
                if kind == "manifest":
                    # Its media type died with the crash; it will be fetched again.
                    path.unlink(missing_ok=True)
                    rejected += 1
                elif file_matches(path, key.split(":", 1)[1]):
                    self.index.add(key, Entry(relpath, path.stat().st_size))
                    adopted += 1
                else:
                    path.unlink(missing_ok=True)
                    rejected += 1
        return Reconciled(temps, dropped, adopted, rejected)


def _key(kind: str, digest: Digest) -> str:
    return f"{kind}:{digest}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
