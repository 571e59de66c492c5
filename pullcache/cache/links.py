"""Links: which (upstream, repository) each cached file may answer.

Files are content-addressed and shared: one file per digest, whoever fetched it. Whether a
request may be *served* that file is a separate fact, kept here: the link ``(index key,
upstream, repository)``. The proxy's rule (``proxy/links.py``) is that a hit needs one
(docs/architecture.md, "The index, the budget and the hot layer").

Links live in the index's own SQLite database, in a ``Link`` table beside diskcache's
``Cache`` table, on the same connection (``compat.diskcache_sql``): dropping a key (eviction,
``cache rm``, ``cache verify --repair``, a vanished file) deletes its links in the same
transaction, so a link never outlives its file, and a restart keeps every link.

``LinkTable`` is the table (blocking; ``Index`` calls it under its eviction lock).
``KnownLinks`` is what the hot layer remembers of it, so that a linked hit needs no thread:
a bounded cache of the table, never a second source of truth (a miss here asks the table).
"""

from __future__ import annotations

from typing import Iterable

from ..compat.diskcache_sql import CacheSQL
from .hot import HotLayer

Where = tuple[str, str]   # (upstream host, repository)

_CREATE = ("CREATE TABLE IF NOT EXISTS Link (key TEXT NOT NULL, upstream TEXT NOT NULL,"
           " repo TEXT NOT NULL, PRIMARY KEY (key, upstream, repo)) WITHOUT ROWID")
_ADD = "INSERT OR IGNORE INTO Link (key, upstream, repo) VALUES (?, ?, ?)"
_HAS = "SELECT 1 FROM Link WHERE key = ? AND upstream = ? AND repo = ?"
_OF = "SELECT upstream, repo FROM Link WHERE key = ? ORDER BY upstream, repo"
_DROP = "DELETE FROM Link WHERE key = ?"
# Links whose key the index no longer holds (raw keys: ``Index`` stores str keys raw).
_SWEEP = "DELETE FROM Link WHERE key NOT IN (SELECT key FROM Cache WHERE raw = 1)"
_COUNT = "SELECT COUNT(*) FROM Link"


class LinkTable:
    """The ``Link`` table. Blocking; every method runs in the caller's transaction if any."""

    def __init__(self, sql: CacheSQL) -> None:
        self._sql = sql
        sql.execute(_CREATE)

    def add(self, key: str, where: Where) -> None:
        self._sql.execute(_ADD, (key, *where))

    def has(self, key: str, where: Where) -> bool:
        return self._sql.execute(_HAS, (key, *where)).fetchone() is not None

    def of(self, key: str) -> list[Where]:
        """Every (upstream, repository) linked to ``key``."""
        return [tuple(row) for row in self._sql.execute(_OF, (key,)).fetchall()]

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._sql.execute(_DROP, (key,))

    def sweep(self) -> int:
        """Delete links whose key is gone (recovery); return how many."""
        return self._sql.execute(_SWEEP).rowcount

    def count(self) -> int:
        return self._sql.execute(_COUNT).fetchone()[0]


_HOT = "link:"   # the hot layer's namespace for link sets (index keys are blob:/manifest:)


class KnownLinks:
    """The links the hot layer remembers, per index key: a frozenset of ``Where``.

    ``known`` is the hot path (a dict lookup). ``learn`` and ``forget`` are called by the
    index under its eviction lock, so a key's set cannot be learned after eviction forgot
    the key; a set is replaced whole, never mutated, so a reader sees the old or the new.
    """

    def __init__(self, hot: HotLayer) -> None:
        self._hot = hot

    def known(self, key: str, where: Where) -> bool:
        found = self._hot.get(_HOT + key)
        return found is not None and where in found

    def learn(self, key: str, where: Where) -> None:
        found = self._hot.get(_HOT + key) or frozenset()
        if where in found:
            return
        grown = found | {where}
        self._hot.put(_HOT + key, grown)

    def forget(self, keys: Iterable[str]) -> None:
        self._hot.forget([_HOT + key for key in keys])
