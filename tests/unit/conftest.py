"""Fixtures shared by the unit tests of the cache."""

import pytest

from pullcache.cache.store import BlobStore, Budget


@pytest.fixture
async def store(tmp_path):
    """An open BlobStore in a temp dir, with a budget nothing reaches."""
    store = BlobStore(tmp_path / "cache", Budget(1 << 40))
    await store.open()
    yield store
    await store.close()
