"""pullcache.cache.links through the store and the index: which (upstream, repository) a
cached file may answer, kept in the index's database beside its key (real disk)."""

from __future__ import annotations

import asyncio

from pullcache.cache.fill import Fills
from pullcache.cache.hot import HotLayer, footprint
from pullcache.cache.store import BlobStore, Budget
from pullcache.oci import Digest
from tests.support.spies import Spy
from tests.unit.test_fill import FakeSource, origin

A, B, C = ("up.example", "team/a"), ("up.example", "team/b"), ("other.example", "team/a")


async def open_store(root, hot: HotLayer | None = None) -> BlobStore:
    store = BlobStore(root, Budget(1 << 40), hot=hot or HotLayer(1 << 20))
    await store.open()
    return store


async def put(store: BlobStore, n: int, *links) -> Digest:
    body = f"content {n}".encode() * 100
    digest = Digest.of(body)
    await store.put_bytes("blob", digest, body, links=frozenset(links))
    return digest


async def test_a_commit_links_its_repository_and_no_other(tmp_path):
    store = await open_store(tmp_path / "c")
    try:
        digest = await put(store, 1, A)
        assert store.known_link("blob", digest, A)             # memory learnt it at once
        assert await store.linked("blob", digest, A)
        for other in (B, C):                                   # same repo name, other host
            assert not store.known_link("blob", digest, other)
            assert not await store.linked("blob", digest, other)
        assert not await store.linked("manifest", digest, A)  # kinds are separate keys
        await put(store, 1, B)                                 # the same bytes again, for B
        assert store.index.links.of(f"blob:{digest}") == [A, B]
        assert len([p for p in (store.root / "blobs").rglob("*") if p.is_file()]) == 1
    finally:
        await store.close()


async def test_a_link_needs_its_key(store):
    digest = Digest.of(b"never cached")
    assert await store.link("blob", digest, A) is False
    assert store.index.links.count() == 0 and not store.known_link("blob", digest, A)
    cached = await put(store, 2)
    assert await store.link("blob", cached, A) is True
    assert await store.linked("blob", cached, A)


async def test_links_survive_a_restart_and_a_linked_hit_is_then_a_memory_lookup(tmp_path):
    store = await open_store(tmp_path / "c")
    digest = await put(store, 1, A)
    await store.close()
    store = await open_store(tmp_path / "c")                  # memory is cold after a restart
    try:
        assert not store.known_link("blob", digest, A)
        assert await store.linked("blob", digest, A)          # from the index, once
        spy = store._index = Spy(store._index)
        for _ in range(3):
            assert store.known_link("blob", digest, A)
            assert await store.linked("blob", digest, A)
            assert await store.link("blob", digest, A)
        assert spy.used == []                                 # no SQLite, no thread
        store._index = spy.target
    finally:
        await store.close()


async def test_dropping_a_key_drops_its_links(tmp_path):
    """``cache rm`` and ``cache verify --repair`` drop keys this way."""
    store = await open_store(tmp_path / "c")
    try:
        digest, kept = await put(store, 1, A, B), await put(store, 2, A)
        assert store.known_link("blob", digest, A)
        store.index.drop(f"blob:{digest}")
        assert store.index.links.of(f"blob:{digest}") == []
        assert not store.known_link("blob", digest, A)
        assert not await store.linked("blob", digest, A)
        assert store.index.links.of(f"blob:{kept}") == [A]
        await put(store, 1, C)                                 # cached again, for another
        assert not await store.linked("blob", digest, A)
        assert store.index.links.of(f"blob:{digest}") == [C]
    finally:
        await store.close()


async def test_eviction_takes_its_victims_links(tmp_path):
    store = await open_store(tmp_path / "c")
    try:
        digest = await put(store, 1, A, B)
        assert store.known_link("blob", digest, B)
        store.index.evict_to(0)
        assert await store.stat("blob", digest) is None
        assert store.index.links.count() == 0
        assert not store.known_link("blob", digest, A)
        assert not store.known_link("blob", digest, B)
    finally:
        await store.close()


async def test_reconcile_drops_the_links_of_entries_whose_file_is_gone(tmp_path):
    store = await open_store(tmp_path / "c")
    gone, kept = await put(store, 1, A), await put(store, 2, A)
    entry = await store.stat("blob", gone)
    store.path(entry).unlink()                                 # behind the index's back
    store.index.links.add("blob:sha256:" + "e" * 64, B)       # a link without any key
    await store.close()
    store = await open_store(tmp_path / "c")                  # open() reconciles
    try:
        assert store.index.links.count() == 1
        assert await store.linked("blob", kept, A) and not await store.linked("blob", gone, A)
    finally:
        await store.close()


async def test_memory_of_links_is_bounded_and_the_index_answers_beyond_it(tmp_path):
    hot = HotLayer(4 * footprint("link:blob:x", frozenset({("up.example", "team/0")})))
    store = await open_store(tmp_path / "c", hot)
    try:
        digest = await put(store, 1)
        repos = [("up.example", f"team/{i}") for i in range(50)]
        for where in repos:
            assert await store.link("blob", digest, where)
        assert hot.nbytes <= hot.capacity
        assert all(await asyncio.gather(*(store.linked("blob", digest, w) for w in repos)))
        assert len(store.index.links.of(f"blob:{digest}")) == 50
    finally:
        await store.close()


async def test_a_fill_records_who_it_is_for_and_who_joined_it(store):
    fills = Fills(store, deadline=60)
    try:
        source = FakeSource([b"joined bytes"])
        digest = Digest.of(b"joined bytes")
        fill, joined = fills.get_or_start("blob", digest, origin(source), link=A)
        assert not joined and fill.links == {A}
        await fill.add_link(B)                       # confirmed while it downloads
        source.release_all()
        async with asyncio.timeout(5):
            await fill.result
        assert fill.links_taken
        await fill.add_link(C)                       # confirmed after the commit took them
        assert store.index.links.of(f"blob:{digest}") == sorted([A, B, C])
    finally:
        await fills.close()
