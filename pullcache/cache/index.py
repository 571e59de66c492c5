"""The LRU index of committed files, on diskcache.

diskcache gives us what an index needs and is safe across threads and processes (so
``pullcache cache gc`` can run beside the daemon): a recency order kept by
``eviction_policy="least-recently-used"`` (its default is least-recently-*stored*, which
would evict a hot base layer first), byte accounting, and culling in that order.

Our blob files are not copied into diskcache. ``_RecordDisk`` stores an ``Entry`` as a row
whose ``filename`` is the blob's path relative to the cache root and whose ``size`` is the
blob's size, so ``volume()`` counts our bytes and ``cull()`` walks our LRU order. diskcache
deletes files in several places (``add`` on an existing key, failed transactions, culls);
``_RecordDisk.remove`` therefore never deletes: it reports the path, and ``Index`` unlinks
only paths whose key is no longer indexed and no response is serving.

Reading never writes: diskcache's own ``get`` under its LRU policy updates ``access_time``
(a SQLite write per hit), so ``get`` here reads the row with a plain SELECT, and recency is
written in bulk by ``touch`` (one transaction for the touches the hot layer buffered). Every
key the index drops is reported to ``forgotten`` (the hot layer) before its file may go.

Each key's links (``links.py``: which upstream and repository it may answer) are in the same
database and go with the key in the same transaction.

Every method here blocks; ``BlobStore`` calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN

from ..compat.diskcache_sql import CacheSQL
from ..oci import Digest
from .links import LinkTable, Where


@dataclass(frozen=True, slots=True)
class Entry:
    """One committed file: its path relative to the cache root, size and media type."""
    relpath: str
    size: int
    media_type: str | None = None


class _RecordDisk(diskcache.Disk):
    removed: Callable[[str], None] = staticmethod(lambda relpath: None)

    def store(self, value, read, key=UNKNOWN):
        if isinstance(value, Entry):
            meta = json.dumps({"media_type": value.media_type})
            return value.size, MODE_BINARY, value.relpath, meta
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode == MODE_BINARY and isinstance(value, str) and filename:
            meta = json.loads(value)
            return Entry(filename, -1, meta.get("media_type"))
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path):
        self.removed(file_path)


class Index:
    """Keys are ``<kind>:<digest>``; values ``Entry``. ``touch`` records recency."""

    forgotten: Callable[[list[str]], None] = staticmethod(lambda keys: None)
    # Told of each link found or recorded (the hot layer's ``KnownLinks.learn``).
    learned: Callable[[str, Where], None] = staticmethod(lambda key, where: None)

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache = diskcache.Cache(
            str(root / "index"), disk=_RecordDisk,
            eviction_policy="least-recently-used",  # explicit: diskcache defaults to LRS
            cull_limit=0,                           # never cull inside set/add; evict() does
            size_limit=2**62,
            statistics=False,
        )
        self._sql = CacheSQL(self._cache)
        self.links = LinkTable(self._sql)
        self._lock = threading.Lock()         # the released/deferred lists
        # Pins: files a response is serving. Taking a pin and choosing eviction victims are
        # atomic with respect to each other (``_evicting``), so a blob found by ``get(pin=…)``
        # is never evicted between being found and being served.
        self._pins: Counter[str] = Counter()
        self._pins_lock = threading.Lock()
        # Reentrant: a read that finds a vanished file drops its key under it.
        self._evicting = threading.RLock()
        self._released: list[str] = []
        self._deferred: set[str] = set()
        # Persistently pinned keys (``cache.pin``, see pins.py): never eviction victims.
        self.keeps: Callable[[str], bool] = lambda key: False
        self._cache.disk.removed = self._note_removed  # type: ignore[attr-defined]

    # -- diskcache hands us every path it would delete ---------------------------------------

    def _note_removed(self, relpath: str) -> None:
        with self._lock:
            self._released.append(relpath)

    def _unlink_released(self) -> list[str]:
        """Delete released files that no key points at any more and nobody is serving."""
        with self._lock:
            candidates, self._released = self._released, []
            candidates.extend(self._deferred)
            self._deferred = set()
        gone = []
        for relpath in candidates:
            key = key_for(relpath)
            if key is not None and key in self._cache:
                continue  # re-added (or an add() that lost a race): still live
            if self._is_pinned(relpath):
                with self._lock:
                    self._deferred.add(relpath)
                continue
            try:
                (self.root / relpath).unlink()
                gone.append(relpath)
            except FileNotFoundError:
                pass
        return gone

    # -- the index ------------------------------------------------------------------------

    def _is_pinned(self, relpath: str) -> bool:
        with self._pins_lock:
            return relpath in self._pins

    def pin(self, relpath: str) -> None:
        with self._pins_lock:
            self._pins[relpath] += 1

    def unpin(self, relpath: str) -> None:
        with self._pins_lock:
            self._pins[relpath] -= 1
            if self._pins[relpath] <= 0:
                del self._pins[relpath]

    def get(self, key: str, *, pin: bool = False,
            found: Callable[[str, Entry], None] | None = None) -> Entry | None:
        """The entry for ``key`` (read only: recency is ``touch``'s job), pinned if asked.

        ``found(key, entry)`` runs, like the pin, under the eviction lock: the hot layer
        learns of an entry that eviction cannot drop before ``forgotten`` reports it.
        """
        if not pin and found is None:
            return self._get(key)
        with self._evicting:
            entry = self._get(key)
            if entry is not None:
                if pin:
                    self.pin(entry.relpath)
                if found is not None:
                    found(key, entry)
            return entry

    def _get(self, key: str) -> Entry | None:
        row = self._sql.row(key)   # a read that leaves recency alone
        if row is None or not row[0]:
            return None
        relpath, size, meta = row
        # The file is the truth: an entry whose file is gone is a miss (and dropped).
        if not (self.root / relpath).is_file():
            self.drop(key)
            return None
        return Entry(relpath, size, json.loads(meta).get("media_type") if meta else None)

    def touch(self, touches: Mapping[str, float]) -> list[str]:
        """Write buffered uses (key → time) in one transaction; return keys no longer here."""
        if not touches:
            return []
        with self._cache.transact(retry=True):
            return self._sql.touch(touches)

    def add(self, key: str, entry: Entry) -> bool:
        added = self._cache.add(key, entry)
        self._unlink_released()  # an add() that found the key releases nothing we own
        return added

    def drop(self, key: str) -> None:
        with self._evicting:
            with self._cache.transact(retry=True):
                self._cache.delete(key)
                self.links.drop([key])
            self.forgotten([key])
        self._unlink_released()

    # -- links ------------------------------------------------------------------------------

    def link(self, key: str, where: Where) -> bool:
        """Record that ``key``'s content may answer ``where``; False (nothing recorded) when
        the key is not indexed: a link never outlives, nor precedes, its file."""
        with self._evicting:
            if key not in self._cache:
                return False
            self.links.add(key, where)
            self.learned(key, where)
            return True

    def linked(self, key: str, where: Where) -> bool:
        """Whether ``key`` is linked to ``where`` (read only)."""
        with self._evicting:
            if not self.links.has(key, where):
                return False
            self.learned(key, where)
            return True

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def keys(self) -> Iterator[str]:
        return iter(self._cache)

    def last_used(self, key: str) -> float | None:
        """When ``key`` was last read or stored (wall clock), without touching its recency."""
        return self._sql.access_time(key)

    def volume(self) -> int:
        """Bytes used: indexed files plus the index database itself."""
        return self._cache.volume()

    def count(self) -> int:
        return len(self._cache)

    def evict_to(self, target: int, touches: Mapping[str, float] | None = None) -> list[str]:
        """Drop least-recently-used entries until ``volume() <= target``; return paths freed.

        ``touches`` (uses not yet flushed) are written first, so the order honours them.
        Entries a response is serving are skipped. diskcache's own ``cull()`` deletes ten rows
        per step whatever their size, far too coarse for multi-GiB layers, so we read its
        LRU order (the same query its cull uses) and delete exactly enough.
        """
        with self._evicting:
            self.forgotten(self.touch(touches or {}))
            excess = self._cache.volume() - target
            if excess <= 0:
                return []
            victims: list[str] = []
            for key, filename, size in self._sql.lru_order():
                if excess <= 0:
                    break
                if filename and not self._is_pinned(filename) and not self.keeps(key):
                    victims.append(key)
                    excess -= size or 0
            with self._cache.transact(retry=True):
                for key in victims:
                    self._cache.delete(key)
                self.links.drop(victims)
            self.forgotten(victims)
        return self._unlink_released()

    def release_unpinned(self) -> list[str]:
        """Delete deferred files whose last response has finished."""
        return self._unlink_released()

    def close(self) -> None:
        self._cache.close()


def key_for(relpath: str) -> str | None:
    """``blobs/sha256/ab/abcd…`` → ``blob:sha256:abcd…`` (the inverse of ``relpath_for``)."""
    parts = Path(relpath).parts
    if len(parts) != 4 or parts[0] not in _DIRS:
        return None
    return f"{_DIRS[parts[0]]}:{parts[1]}:{parts[3]}"


def relpath_for(kind: str, algorithm: str, hex_: str) -> str:
    return f"{_KINDS[kind]}/{algorithm}/{hex_[:2]}/{hex_}"


def relpath_of(key: str) -> str:
    """``blob:sha256:abcd…`` → ``blobs/sha256/ab/abcd…`` (the inverse of ``key_for``). Raises
    DigestInvalid for a malformed digest, KeyError for a kind the cache does not hold."""
    kind, _, digest = key.partition(":")
    parsed = Digest.parse(digest)
    return relpath_for(kind, parsed.algorithm, parsed.hex)


_KINDS = {"blob": "blobs", "manifest": "manifests"}
_DIRS = {v: k for k, v in _KINDS.items()}
