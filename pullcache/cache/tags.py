"""Tag records: which manifest digest a tag named, for which kind of client, and when.

A tag belongs to its upstream and repository. Upstreams answer a tag differently by the
client's ``Accept`` (a multi-arch tag is an index for a client that takes indexes and a
platform manifest for one that does not), so a record is kept per *accept class*: the
manifest media types the client's Accept names (``negotiation.accept_class``; never the raw
Accept string). A client is answered by its own class's record, or by another class's that
the upstream would answer it with alike (``negotiation.stands_in``, where the rule is
written down): the newest of them.

Records are read from the hot layer (memory) first and written through to disk, so a fresh
tag is answered without SQLite or a thread. The disk store is least-recently-*stored*: a
read never writes it, and a tag in use is re-stored at every revalidation anyway.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import diskcache

from ..errors import StorageError
from .hot import HotLayer
from .negotiation import accept_class, stands_in
from .passthrough import as_oserror

__all__ = ["TagRecord", "TagStore", "accept_class"]


@dataclass(frozen=True, slots=True)
class TagRecord:
    digest: str
    media_type: str
    checked_at: float  # wall clock: records survive restarts

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.checked_at


class TagStore:
    def __init__(self, root: Path, hot: HotLayer | None = None) -> None:
        self._root = root
        self._hot = hot if hot is not None else HotLayer(0)
        self._cache: diskcache.Cache | None = None

    async def open(self, root: Path | None = None) -> None:
        """``root``: elsewhere than the cache root (a scratch dir when it is read-only)."""
        def _open() -> diskcache.Cache:
            return diskcache.Cache(str((root or self._root) / "tags"),
                                   eviction_policy="least-recently-stored",
                                   size_limit=256 * 1024 * 1024)
        self._cache = await asyncio.to_thread(_open)

    async def close(self) -> None:
        if self._cache is not None:
            await asyncio.to_thread(self._cache.close)

    def cached(self, upstream: str, repo: str, tag: str, aclass: str) -> TagRecord | None:
        """The record that answers ``aclass`` if memory has it (its own, or one standing in
        for it): the hot path, no I/O."""
        own = self._hot.get(_HOT + _key(upstream, repo, tag, aclass))
        classes = self._hot.get(_HOT + _classes_key(upstream, repo, tag))
        if not classes or classes == (aclass,):
            return own
        records = {c: self._hot.get(_HOT + _key(upstream, repo, tag, c)) for c in classes}
        records[aclass] = own
        return _answering(records, aclass)

    async def get(self, upstream: str, repo: str, tag: str, aclass: str) -> TagRecord | None:
        """The record that answers ``aclass``: from memory, else from disk."""
        record = self.cached(upstream, repo, tag, aclass)
        if record is None:
            record = _answering(await self.records(upstream, repo, tag), aclass)
        return record

    async def put(self, upstream: str, repo: str, tag: str, aclass: str,
                  record: TagRecord) -> None:
        key = _key(upstream, repo, tag, aclass)

        def _put() -> None:
            with self._cache.transact():
                self._cache.set(key, asdict(record))
                # Which accept classes hold a record of this tag, for ``get_all``.
                classes = self._cache.get(_classes_key(upstream, repo, tag), ())
                if aclass not in classes:
                    self._cache.set(_classes_key(upstream, repo, tag), (*classes, aclass))
        try:
            await asyncio.to_thread(_put)
        except (OSError, sqlite3.Error) as exc:   # a read-only or removed cache dir
            raise StorageError(f"tag record: {exc}") from as_oserror(exc)
        self._keep(key, record)
        self._keep_classes(upstream, repo, tag, (aclass,))

    async def records(self, upstream: str, repo: str, tag: str) -> dict[str, TagRecord]:
        """Every accept class's record of the tag, from disk (and kept in memory)."""
        def _all() -> dict[str, TagRecord]:
            classes = self._cache.get(_classes_key(upstream, repo, tag), ())
            raws = {c: self._cache.get(_key(upstream, repo, tag, c)) for c in classes}
            return {c: TagRecord(**raw) for c, raw in raws.items() if raw}
        try:
            found = await asyncio.to_thread(_all)
        except (OSError, sqlite3.Error) as exc:   # a removed or unreadable cache dir
            raise StorageError(f"tag records: {exc}") from as_oserror(exc)
        for aclass, record in found.items():
            self._keep(_key(upstream, repo, tag, aclass), record)
        self._keep_classes(upstream, repo, tag, tuple(found))
        return found

    async def get_all(self, upstream: str, repo: str, tag: str) -> list[TagRecord]:
        """Every accept class's record of the tag, newest first (for stale answers: any
        cached manifest of the tag the client accepts beats an error)."""
        found = await self.records(upstream, repo, tag)
        return sorted(found.values(), key=lambda r: r.checked_at, reverse=True)

    def _keep(self, key: str, record: TagRecord) -> None:
        self._hot.put(_HOT + key, record)

    def _keep_classes(self, upstream: str, repo: str, tag: str,
                      classes: tuple[str, ...]) -> None:
        """Remember in memory which classes hold a record of the tag (for ``cached``)."""
        key = _HOT + _classes_key(upstream, repo, tag)
        known = self._hot.get(key) or ()
        merged = tuple(dict.fromkeys(known + classes))
        if merged != known:
            self._hot.put(key, merged)

    async def get_list(self, upstream: str, repo: str) -> list[str] | None:
        return await asyncio.to_thread(self._cache.get, f"{upstream}/{repo}#tags/list")

    async def put_list(self, upstream: str, repo: str, tags: list[str]) -> None:
        await asyncio.to_thread(self._cache.set, f"{upstream}/{repo}#tags/list", tags)

    async def get_referrers(self, upstream: str, repo: str, subject: str) -> dict | None:
        """The last referrers list the upstream's API gave for ``subject``, with its time."""
        return await asyncio.to_thread(self._cache.get, f"{upstream}/{repo}@{subject}#referrers")

    async def put_referrers(self, upstream: str, repo: str, subject: str, record: dict) -> None:
        await asyncio.to_thread(self._cache.set, f"{upstream}/{repo}@{subject}#referrers",
                                record)


_HOT = "tag:"   # the hot layer's namespace for tag records (index keys are blob:/manifest:)


def _answering(records: dict[str, TagRecord | None], aclass: str) -> TagRecord | None:
    """The newest of ``aclass``'s own record and those standing in for it."""
    fits = [r for c, r in records.items() if r is not None
            and (c == aclass or stands_in(r.media_type, c, aclass))]
    return max(fits, key=lambda r: r.checked_at, default=None)


def hot_key(key: str) -> str:
    """The hot layer's key for the tag record stored under ``key`` on disk: whoever deletes
    a record on disk (``cache rm``) forgets this one too, or memory keeps answering it."""
    return _HOT + key


def _key(upstream: str, repo: str, tag: str, aclass: str) -> str:
    return f"{upstream}/{repo}:{tag}#{aclass}"


def _classes_key(upstream: str, repo: str, tag: str) -> str:
    return f"{upstream}/{repo}:{tag}#*"
