"""Guards for the adapters over library internals (``pullcache/compat``): each fails, naming
its adapter, when an upgrade of the library breaks what the adapter assumes."""

from __future__ import annotations

import asyncio

import pytest

from pullcache.compat import aiohttp_takeover, diskcache_sql, semaphore


@pytest.mark.parametrize("adapter", [diskcache_sql, semaphore, aiohttp_takeover],
                         ids=lambda m: m.__name__)
def test_adapter_fits_the_installed_library(adapter) -> None:
    adapter.check()


def test_semaphore_guard_names_its_adapter(monkeypatch) -> None:
    """What an upgrade that renames the counter looks like: the guard says which adapter."""
    def renamed(self, value: int = 1) -> None:
        self._count, self._waiters = value, None
    monkeypatch.setattr(asyncio.Semaphore, "__init__", renamed)
    with pytest.raises(AssertionError, match="pullcache.compat.semaphore"):
        semaphore.check()


def test_diskcache_guard_names_its_adapter(monkeypatch) -> None:
    import diskcache
    policy = dict(diskcache.core.EVICTION_POLICY)
    policy["least-recently-used"] = {**policy["least-recently-used"], "cull": "SELECT 1"}
    monkeypatch.setattr(diskcache.core, "EVICTION_POLICY", policy)
    with pytest.raises(AssertionError, match="pullcache.compat.diskcache_sql"):
        diskcache_sql.check()


def test_aiohttp_guard_names_its_adapter(monkeypatch) -> None:
    import aiohttp
    monkeypatch.delattr(aiohttp.StreamReader, "read_nowait")
    with pytest.raises(AssertionError, match="pullcache.compat.aiohttp_takeover"):
        aiohttp_takeover.check()
