"""diskcache's SQL, for what its public ``Cache`` API does not offer.

The index needs four statements diskcache has no method for: a row read that does not touch
its recency, a bulk update of access times in one transaction, an access-time read, and an
ordered scan in diskcache's own least-recently-used order (its ``cull()`` deletes ten rows a
step whatever their size, too coarse for multi-GiB layers). They run on ``Cache._sql``, the
connection diskcache itself uses, against its ``Cache`` table. The index's own tables (the
links of ``cache/links.py``) live in the same database and use the same connection
(``execute``), so a key's row and its links change in one of diskcache's transactions.
``check`` says whether the installed diskcache still has what this module assumes.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import diskcache

_ROW = "SELECT filename, size, value FROM Cache WHERE key = ? AND raw = 1"
_TOUCH = ("UPDATE Cache SET access_time = ?, access_count = access_count + 1"
          " WHERE key = ? AND raw = 1")
_ACCESS_TIME = "SELECT access_time FROM Cache WHERE key = ? AND raw = 1"


def _lru_order() -> str:
    cull = diskcache.core.EVICTION_POLICY["least-recently-used"]["cull"]
    return cull.format(fields="key, filename, size").replace(" LIMIT ?", "")


_LRU_ORDER = _lru_order()


class CacheSQL:
    """Statements on one ``diskcache.Cache``'s own connection (keys stored raw)."""

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache

    def _sql(self, statement: str, params: tuple = ()):
        return self._cache._sql(statement, params)  # noqa: SLF001 - this adapter's purpose

    def execute(self, statement: str, params: tuple = ()):
        """Run one of our own statements on diskcache's connection (inside its transaction,
        when the caller holds one: ``Cache.transact``)."""
        return self._sql(statement, params)

    def row(self, key: str) -> tuple[str | None, int | None, bytes | str | None] | None:
        """(filename, size, value) of ``key``, without touching its recency."""
        return self._sql(_ROW, (key,)).fetchone()

    def touch(self, touches: Mapping[str, float]) -> list[str]:
        """Set each key's access time, in the caller's transaction; return keys not found."""
        return [key for key, at in touches.items()
                if self._sql(_TOUCH, (at, key)).rowcount == 0]

    def access_time(self, key: str) -> float | None:
        rows = self._sql(_ACCESS_TIME, (key,)).fetchall()
        return rows[0][0] if rows else None

    def lru_order(self) -> Iterator[tuple[str, str | None, int | None]]:
        """(key, filename, size), least recently used first; closed when exhausted or dropped."""
        rows = self._sql(_LRU_ORDER)
        try:
            yield from rows
        finally:
            rows.close()


def check() -> None:
    """Raise AssertionError, naming this adapter, if diskcache no longer fits it: each
    statement runs against a throwaway cache."""
    import tempfile
    where = "pullcache.compat.diskcache_sql"
    policy = getattr(diskcache.core, "EVICTION_POLICY", {}).get("least-recently-used", {})
    assert "{fields}" in policy.get("cull", "") and " LIMIT ?" in policy.get("cull", ""), \
        f"{where}: diskcache's least-recently-used cull query changed shape"
    with tempfile.TemporaryDirectory() as tmp, diskcache.Cache(tmp) as cache:
        assert hasattr(cache, "_sql"), \
            f"{where}: diskcache.Cache._sql is gone (diskcache {diskcache.__version__})"
        cache.set("old", b"x" * 8)
        cache.set("new", b"y" * 8)
        sql = CacheSQL(cache)
        assert sql.row("old") is not None, f"{where}: the row read found nothing"
        with cache.transact():
            assert sql.touch({"old": 2e9, "gone": 1.0}) == ["gone"], \
                f"{where}: the access-time update"
        assert sql.access_time("old") == 2e9, f"{where}: the access-time read"
        assert [k for k, _, _ in sql.lru_order()] == ["new", "old"], \
            f"{where}: the least-recently-used order"
        sql.execute("CREATE TABLE Own (key TEXT)")
        with cache.transact():
            cache.delete("old")
            sql.execute("INSERT INTO Own VALUES (?)", ("old",))
        assert sql.execute("SELECT key FROM Own").fetchall() == [("old",)], \
            f"{where}: a statement of our own inside diskcache's transaction"
