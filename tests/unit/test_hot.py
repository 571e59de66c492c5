"""pullcache.cache.hot and the store's hot path: memory hits, buffered recency (real disk)."""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path

import pytest

from pullcache.cache.hot import HotLayer, footprint
from pullcache.cache.index import Entry
from pullcache.cache.store import BlobStore, Budget
from pullcache.cache.tags import TagRecord, TagStore
from pullcache.oci import Digest
from tests.support.spies import Spy

KiB = 1 << 10


def data(n: int, size: int = 4 * KiB) -> bytes:
    return (f"{n:08d}".encode() * (size // 8 + 1))[:size]


async def open_store(root, hot=None, max_size: int = 1 << 40) -> BlobStore:
    store = BlobStore(root, Budget(max_size), hot=hot or HotLayer(1 << 20))
    await store.open()
    return store


async def put(store: BlobStore, n: int, kind: str = "blob") -> Digest:
    body = data(n)
    digest = Digest.of(body)
    await store.put_bytes(kind, digest, body, "application/x-test" if kind == "manifest" else None)
    return digest


def access_times(store: BlobStore) -> dict[str, float]:
    con = sqlite3.connect(store.root / "index" / "cache.db")
    try:
        return dict(con.execute("SELECT key, access_time FROM Cache"))
    finally:
        con.close()


# --- the layer --------------------------------------------------------------------------------

def test_bounded_by_bytes_least_recently_used_out_first():
    cost = footprint("a", "A" * 100)
    hot = HotLayer(3 * cost)
    for key in "abc":
        hot.put(key, key.upper() * 100)
    assert hot.get("a") == "A" * 100          # a is now the most recently used
    hot.put("d", "D" * 100)
    assert hot.get("b") is None and [hot.get(k)[0] for k in "acd"] == ["A", "C", "D"]
    assert hot.nbytes == 3 * cost
    hot.put("big", "X" * 10 * KiB)            # bigger than the whole layer: not kept
    assert hot.get("big") is None and len(hot) == 3


def index_item(n: int, *, manifest: bool = False) -> tuple[str, tuple[Entry, bytes | None]]:
    """An item as the store keeps it: an index entry, with its body for a manifest."""
    hex_ = f"{n:064x}"
    entry = Entry(f"blobs/sha256/{hex_[-2:]}/{hex_}", 1000 + n,
                  "application/vnd.oci.image.manifest.v1+json" if manifest else None)
    return (f"{'manifest' if manifest else 'blob'}:sha256:{hex_}",
            (entry, b"%064d" % n * 10 if manifest else None))


@pytest.mark.parametrize("kind, count", [("entries", 100_000), ("manifests", 30_000),
                                         ("tag records", 50_000)])
def test_the_layer_holds_what_it_charges(kind, count):
    """Filled far past its capacity, the layer's real memory (tracemalloc) is its budget."""
    budget = 8 << 20

    def item(n: int):
        if kind == "tag records":
            record = TagRecord(f"sha256:{n:064x}",
                               "application/vnd.oci.image.index.v1+json", 1.7e9 + n)
            return f"tag:docker.io/library/r{n}:v{n}#{kind}", record
        return index_item(n, manifest=kind == "manifests")

    tracemalloc.start()
    try:
        hot = HotLayer(budget)
        before = tracemalloc.get_traced_memory()[0]
        for n in range(count):
            hot.put(*item(n))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(hot) < count and hot.nbytes <= budget       # it did push items out
    assert abs(held - budget) <= 0.15 * budget, f"{held} bytes held for a {budget} budget"


def test_forget_drops_the_item_and_its_pending_touch():
    hot = HotLayer(1 << 20)
    hot.put("blob:x", "entry")
    hot.touch("blob:x")
    hot.touch("blob:y")
    hot.forget(["blob:x"])
    assert hot.get("blob:x") is None and hot.nbytes == 0
    assert set(hot.take_touches()) == {"blob:y"} and hot.take_touches() == {}


# --- hits -------------------------------------------------------------------------------------

async def test_a_manifest_hit_uses_no_sqlite(tmp_path):
    store = await open_store(tmp_path / "c")
    try:
        digest = await put(store, 1, "manifest")
        spy = store.index._cache = Spy(store.index._cache)
        for _ in range(3):
            entry, body = store.cached_manifest(digest)
            assert body == data(1) and entry.media_type == "application/x-test"
            assert (await store.manifest(digest))[1] == body
            assert await store.stat("manifest", digest) == entry
        assert spy.used == []
        assert store.hot.pending() == 1
        assert await store.flush_recency() == 1
        assert spy.used                                  # the spy does see the index
    finally:
        await store.close()


async def test_a_cold_manifest_is_read_from_disk_without_writing_the_index(tmp_path):
    store = await open_store(tmp_path / "c")
    digest = await put(store, 1, "manifest")
    await store.close()
    store = await open_store(tmp_path / "c")            # memory is cold after a restart
    try:
        before = access_times(store)
        assert store.cached_manifest(digest) is None
        entry, body = await store.manifest(digest)
        assert body == data(1) and entry.media_type == "application/x-test"
        assert access_times(store) == before             # a read, not a write
        assert store.cached_manifest(digest) == (entry, body)   # now warm
    finally:
        await store.close()


async def test_a_tag_record_is_served_from_memory_and_written_through(tmp_path):
    hot = HotLayer(1 << 20)
    tags = TagStore(tmp_path, hot)
    await tags.open()
    record = TagRecord("sha256:" + "a" * 64, "application/x-test", 1.0)
    await tags.put("up", "repo", "v1", "x", record)
    spy = tags._cache = Spy(tags._cache)
    assert tags.cached("up", "repo", "v1", "x") == record
    assert await tags.get("up", "repo", "v1", "x") == record
    assert spy.used == []
    tags._cache = spy.target
    await tags.close()
    cold = TagStore(tmp_path, HotLayer(1 << 20))         # a restart: from disk
    await cold.open()
    try:
        assert cold.cached("up", "repo", "v1", "x") is None
        assert await cold.get("up", "repo", "v1", "x") == record
        assert cold.cached("up", "repo", "v1", "x") == record
    finally:
        await cold.close()


async def test_an_evicted_entry_leaves_memory_before_its_file_goes(tmp_path, monkeypatch):
    store = await open_store(tmp_path / "c")
    try:
        a = await put(store, 1, "manifest")
        assert store.cached_manifest(a) is not None
        # At the moment each file is unlinked: is its manifest still served from memory?
        in_memory_at_unlink: dict[str, bool] = {}
        real_unlink = Path.unlink

        def unlink(path, *args, **kwargs):
            in_memory_at_unlink[path.name] = store.cached_manifest(a) is not None
            return real_unlink(path, *args, **kwargs)
        monkeypatch.setattr(Path, "unlink", unlink)
        store.index.evict_to(0)
        monkeypatch.undo()
        assert in_memory_at_unlink == {a.hex: False}, in_memory_at_unlink
        assert store.cached_manifest(a) is None and await store.manifest(a) is None
    finally:
        await store.close()


async def test_a_hot_hit_pinned_survives_eviction_until_unpinned(tmp_path):
    store = await open_store(tmp_path / "c")
    try:
        a = await put(store, 1)
        assert await store.stat("blob", a) is not None    # warm
        entry = store.lookup("blob", a, pin=True)
        store.index.evict_to(0)                          # skips the pinned entry
        assert store.lookup("blob", a) == entry
        store.unpin(entry)
        entry = store.lookup("blob", a, pin=True)
        store.index.drop(f"blob:{a}")                    # dropped under a response
        assert store.path(entry).is_file(), "unlinked under a response"
        assert store.lookup("blob", a) is None
        store.unpin(entry)
        await store.release()
        assert not store.path(entry).exists()
    finally:
        await store.close()


# --- recency ----------------------------------------------------------------------------------

async def test_eviction_order_honours_touches_not_yet_flushed(tmp_path):
    store = await open_store(tmp_path / "c", max_size=1 << 30)
    try:
        a, b, c = [await put(store, n) for n in range(3)]
        before = access_times(store)
        assert await store.stat("blob", a) is not None    # a: most recently used, in memory
        assert access_times(store) == before and store.hot.pending() == 1
        volume = store.index.volume()                     # 3 files and the database
        store.budget = Budget(volume, (volume - 1) / volume, (volume - 5 * KiB) / volume)
        await store.make_room()                          # two 4 KiB files must go
        # The LRU order is flushed recency plus the pending touch: b and c go before a.
        remaining = set(store.index.keys())
        assert remaining == {f"blob:{a}"}
    finally:
        await store.close()


async def test_recency_is_flushed_and_survives_a_clean_restart(tmp_path):
    store = await open_store(tmp_path / "c")
    a, b = [await put(store, n) for n in range(2)]
    assert await store.stat("blob", a) is not None
    await store.close()                                  # flushes the pending touch
    store = await open_store(tmp_path / "c")
    try:
        times = access_times(store)
        assert times[f"blob:{a}"] > times[f"blob:{b}"]
        assert store.index.evict_to(store.index.volume() - 1) == [
            f"blobs/sha256/{b.hex[:2]}/{b.hex}"]
    finally:
        await store.close()


async def test_a_flush_drops_entries_another_process_removed(tmp_path):
    store = await open_store(tmp_path / "c")
    other = await open_store(tmp_path / "c")             # like `pullcache cache gc`
    try:
        a = await put(store, 1, "manifest")
        assert store.cached_manifest(a) is not None
        other.index.drop(f"manifest:{a}")
        await store.flush_recency()
        assert store.cached_manifest(a) is None
    finally:
        await other.close()
        await store.close()


@pytest.mark.parametrize("kind", ["blob", "manifest"])
async def test_a_flush_writes_every_touch_in_one_transaction(tmp_path, kind):
    store = await open_store(tmp_path / "c")
    try:
        digests = [await put(store, n, kind) for n in range(5)]
        for d in digests:
            await store.stat(kind, d)
        before = access_times(store)
        spy = store.index._cache = Spy(store.index._cache)
        assert await store.flush_recency() == 5
        assert spy.used.count("transact") == 1
        store.index._cache = spy.target
        after = access_times(store)
        assert all(after[f"{kind}:{d}"] > before[f"{kind}:{d}"] for d in digests)
    finally:
        await store.close()
