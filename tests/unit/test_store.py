"""pullcache.cache.store and .index: commit, LRU accounting, budget, recovery (real disk)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import os
from pathlib import Path

import pytest
import structlog

from pullcache.cache.index import Entry, key_for, relpath_for
from pullcache.cache.store import BlobStore, Budget
from pullcache.errors import StorageError
from pullcache.oci import Digest
from tests.support.ports import eventually

KiB, MiB = 1 << 10, 1 << 20


def blob(n: int, size: int) -> bytes:
    """Distinct content of ``size`` bytes."""
    return (f"{n:08d}".encode() * (size // 8 + 1))[:size]


async def open_store(root: Path, max_size: int = 1 << 40) -> BlobStore:
    store = BlobStore(root, Budget(max_size))
    await store.open()
    return store


async def put(store: BlobStore, n: int, size: int = 64 * KiB) -> tuple[Digest, Entry]:
    data = blob(n, size)
    digest = Digest.of(data)
    return digest, await store.put_bytes("blob", digest, data)


def indexed(store: BlobStore) -> set[str]:
    return set(store.index.keys())


def files(store: BlobStore) -> set[str]:
    return {p.relative_to(store.root).as_posix()
            for top in ("blobs", "manifests", "tmp") for p in (store.root / top).rglob("*")
            if p.is_file()}


# --- paths ---------------------------------------------------------------------------------------

def test_relpath_and_key_are_inverses():
    hex_ = "ab" * 32
    relpath = relpath_for("blob", "sha256", hex_)
    assert relpath == f"blobs/sha256/ab/{hex_}"
    assert key_for(relpath) == f"blob:sha256:{hex_}"
    assert key_for(relpath_for("manifest", "sha512", "cd" * 64)) == f"manifest:sha512:{'cd' * 64}"


@pytest.mark.parametrize("relpath", ["tmp/x.part", "blobs/sha256/ab", "index/cache.db",
                                     "blobs/sha256/ab/cd/ef"])
def test_key_for_foreign_paths(relpath):
    assert key_for(relpath) is None


# --- put, stat, commit ----------------------------------------------------------------------------

async def test_put_bytes_then_stat(store):
    data = b'{"schemaVersion":2}'
    digest = Digest.of(data)
    entry = await store.put_bytes("manifest", digest, data, "application/vnd.oci.image.manifest.v1+json")
    assert entry == Entry(relpath_for("manifest", "sha256", digest.hex), len(data),
                          "application/vnd.oci.image.manifest.v1+json")
    assert await store.stat("manifest", digest) == entry
    assert await store.read_bytes(entry) == data
    assert await store.stat("blob", digest) is None          # kinds are separate
    assert files(store) == {entry.relpath}                   # no temp file left behind


async def test_stat_miss(store):
    assert await store.stat("blob", Digest.of(b"never stored")) is None


async def test_commit_moves_the_temp_file_into_place(store):
    data = blob(1, 1000)
    digest = Digest.of(data)
    temp = store.temp_path()
    temp.write_bytes(data)
    entry = await store.commit("blob", digest, temp, len(data))
    assert not temp.exists()
    assert store.path(entry).read_bytes() == data
    assert (await store.stat("blob", digest)).size == 1000


async def test_commit_of_an_already_indexed_digest_keeps_the_live_file(store):
    digest, first = await put(store, 1)
    inode = store.path(first).stat().st_ino
    temp = store.temp_path()
    temp.write_bytes(blob(1, 64 * KiB))
    again = await store.commit("blob", digest, temp, 64 * KiB)
    assert again.relpath == first.relpath
    assert not temp.exists()
    assert store.path(first).stat().st_ino == inode


async def test_index_add_of_an_existing_key_never_deletes_the_live_file(store):
    digest, entry = await put(store, 1)
    key = f"blob:{digest}"
    assert store.index.add(key, entry) is False
    assert store.path(entry).is_file()
    assert await store.stat("blob", digest) == Entry(entry.relpath, entry.size)


async def test_stat_of_an_entry_whose_file_vanished_is_a_miss_and_drops_it(store):
    digest, entry = await put(store, 1)
    store.path(entry).unlink()
    assert await store.stat("blob", digest) is None
    assert f"blob:{digest}" not in store.index


async def test_commit_failure_is_a_storage_error(store):
    digest = Digest.of(b"x")
    with pytest.raises(StorageError):
        await store.commit("blob", digest, store.tmp / "no-such.part", 1)
    assert f"blob:{digest}" not in store.index


async def test_not_open_is_a_storage_error(tmp_path):
    store = BlobStore(tmp_path, Budget(MiB))
    with pytest.raises(StorageError):
        await store.stat("blob", Digest.of(b"x"))


async def test_concurrent_stats_from_many_tasks(store):
    stored = [await put(store, n, 4 * KiB) for n in range(5)]
    missing = Digest.of(b"missing")
    wanted = [stored[i % 5] for i in range(60)]
    results = await asyncio.gather(*(store.stat("blob", d) for d, _ in wanted),
                                   *(store.stat("blob", missing) for _ in range(10)))
    assert results[:60] == [e for _, e in wanted]
    assert results[60:] == [None] * 10


# --- accounting and LRU ---------------------------------------------------------------------------

async def test_volume_counts_the_committed_bytes(store):
    base = store.index.volume()
    sizes = [10 * KiB, 300 * KiB, 1 * MiB + 7]
    entries = [(await put(store, n, size))[1] for n, size in enumerate(sizes)]
    assert [store.path(e).stat().st_size for e in entries] == sizes
    assert store.index.volume() - base == sum(sizes)
    usage = await store.usage()
    assert usage["entries"] == 3 and usage["bytes"] == store.index.volume()
    store.index.drop(key_for(entries[1].relpath))
    assert store.index.volume() - base == sizes[0] + sizes[2]
    assert not store.path(entries[1]).exists()


async def test_eviction_order_is_by_use_not_by_storage(store):
    (a, _), (b, _), (c, _) = [await put(store, n) for n in range(3)]
    assert await store.stat("blob", a) is not None         # a is now the most recently used
    assert await store.flush_recency() == 1
    freed = store.index.evict_to(store.index.volume() - 1)
    assert freed == [relpath_for("blob", "sha256", b.hex)]
    assert indexed(store) == {f"blob:{a}", f"blob:{c}"}


async def test_evict_to_frees_exactly_enough(store):
    stored = [await put(store, n, 100 * KiB) for n in range(5)]
    target = store.index.volume() - 150 * KiB
    freed = store.index.evict_to(target)
    assert freed == [e.relpath for _, e in stored[:2]]     # two, not diskcache's ten
    assert store.index.volume() <= target
    assert indexed(store) == {f"blob:{d}" for d, _ in stored[2:]}
    assert files(store) == {e.relpath for _, e in stored[2:]}


async def test_evict_to_with_room_to_spare_evicts_nothing(store):
    await put(store, 1)
    assert store.index.evict_to(store.index.volume()) == []
    assert store.index.count() == 1


async def test_pinned_entries_are_skipped_by_eviction(store):
    (a, ea), (b, eb), (c, _) = [await put(store, n) for n in range(3)]
    with store.pin(ea):
        assert store.index.evict_to(store.index.volume() - 1) == [eb.relpath]
    assert store.path(ea).is_file()
    assert indexed(store) == {f"blob:{a}", f"blob:{c}"}
    # Unpinned again, it is the oldest and goes first.
    assert store.index.evict_to(store.index.volume() - 1) == [ea.relpath]


async def test_a_pinned_file_dropped_from_the_index_is_unlinked_after_release(store):
    digest, entry = await put(store, 1)
    with store.pin(entry), store.pin(entry):
        store.index.drop(f"blob:{digest}")
        assert store.path(entry).is_file()                 # still being served
        await store.release()
        assert store.path(entry).is_file()
    await store.release()
    assert not store.path(entry).exists()


# --- budget -----------------------------------------------------------------------------------------

@pytest.fixture
async def budgeted(tmp_path):
    """10 MiB budget: high watermark 9.5 MiB, low 8.5 MiB."""
    evicted: list[tuple[int, int]] = []
    store = BlobStore(tmp_path / "cache", Budget(10 * MiB),
                      on_evict=lambda n, nbytes: evicted.append((n, nbytes)))
    await store.open()
    store.evicted = evicted  # type: ignore[attr-defined]
    yield store
    await store.close()


async def test_make_room_does_nothing_below_the_high_watermark(budgeted):
    for n in range(8):
        await put(budgeted, n, MiB)
    assert await budgeted.make_room(incoming=MiB) == 0      # 9 MiB + index < 9.5 MiB
    assert budgeted.index.count() == 8
    assert budgeted.evicted == []


async def test_make_room_evicts_down_to_the_low_watermark(budgeted):
    stored = [await put(budgeted, n, MiB) for n in range(9)]
    freed = await budgeted.make_room(incoming=MiB)
    # Over 9.5 MiB with the incoming MiB: down to 8.5 - 1 = 7.5 MiB, i.e. two files go.
    assert freed == 2 * MiB
    assert budgeted.evicted == [(2, 2 * MiB)]
    assert indexed(budgeted) == {f"blob:{d}" for d, _ in stored[2:]}
    assert budgeted.index.volume() + MiB <= budgeted.budget.low


async def test_reserve_makes_room_and_counts_the_reservation_in_one_step(budgeted):
    stored = [await put(budgeted, n, MiB) for n in range(8)]
    assert await budgeted.make_room() == 0
    with await budgeted.reserve(2 * MiB):
        assert (await budgeted.usage())["reserved"] == 2 * MiB
        # 8 MiB + 2 MiB incoming passes 9.5 MiB: down to 8.5 - 2 MiB, by reserve itself.
        assert budgeted.evicted == [(2, 2 * MiB)]
        assert indexed(budgeted) == {f"blob:{d}" for d, _ in stored[2:]}
        assert await budgeted.make_room() == 0          # the reservation is counted
    assert (await budgeted.usage())["reserved"] == 0


async def test_a_reservation_far_below_the_high_watermark_does_not_ask_the_index(budgeted):
    """No thread before a cold blob's first byte while the cache has room; the count it
    keeps instead (the last measure, plus the bytes committed since: reservations released,
    manifests stored) sends the next reservation to the index once it would pass."""
    asked = []
    index = budgeted.room._index
    budgeted.room._index = lambda: asked.append(1) or index()
    for n in range(2):
        await put(budgeted, n, MiB)
    await budgeted.make_room()                          # measured: 2 MiB and the index's pages
    assert len(asked) == 1
    with await budgeted.reserve(3 * MiB):               # 2 + 3 < 9.5 MiB
        pass                                            # released: counted as committed
    await put(budgeted, 2, MiB)                         # stored without a reservation
    assert len(asked) == 1
    with await budgeted.reserve(4 * MiB):               # 2 + 3 + 1 + 4 > 9.5 MiB by the count
        assert len(asked) == 2                          # so the index is asked: 3 MiB in fact
    assert budgeted.evicted == []                       # and there was room after all


async def test_reserve_waits_while_fills_in_flight_leave_no_room(budgeted):
    first = await budgeted.reserve(6 * MiB)
    with structlog.testing.capture_logs() as logs:
        second = asyncio.create_task(budgeted.reserve(6 * MiB))   # 12 MiB would pass 10 MiB
        await eventually(lambda: any(e["event"] == "cache_full_waited" for e in logs),
                         what="cache_full_waited")
    assert not second.done()
    first.release()
    async with asyncio.timeout(5):
        (await second).release()
    first.release()                                      # idempotent
    assert (await budgeted.usage())["reserved"] == 0


async def test_a_fill_alone_is_never_kept_waiting(budgeted):
    with await budgeted.reserve(20 * MiB):              # bigger than the whole cache
        assert (await budgeted.usage())["reserved"] == 20 * MiB


def test_budget_watermarks():
    budget = Budget(1000, high_watermark=0.9, low_watermark=0.5)
    assert (budget.high, budget.low) == (900, 500)
    assert (Budget(100).high, Budget(100).low) == (95, 85)


# --- reconcile ---------------------------------------------------------------------------------------

async def test_reconcile_deletes_temp_files(store):
    for name in ("a.part", "b.part", ".ready-x"):
        (store.tmp / name).write_bytes(b"partial")
    result = await store.reconcile()
    assert result.temp_files_removed == 3
    assert list(store.tmp.iterdir()) == []


async def test_reconcile_clears_directories_and_links_in_tmp_and_nothing_outside(store,
                                                                                  tmp_path):
    """Issue 26 #21: a directory in tmp/ crashed the start-up reconcile (IsADirectoryError)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"not the cache's")
    nested = store.tmp / "stray" / "deeper"
    nested.mkdir(parents=True)
    (nested / "x.part").write_bytes(b"partial")
    (store.tmp / "stray" / "link-out").symlink_to(outside)
    (store.tmp / "dir-link").symlink_to(outside, target_is_directory=True)
    (store.tmp / "a.part").write_bytes(b"partial")
    result = await store.reconcile()
    assert result.temp_files_removed == 3
    assert list(store.tmp.iterdir()) == []
    assert (outside / "precious").read_bytes() == b"not the cache's"


async def test_reconcile_drops_entries_whose_file_is_gone(store):
    (_gone, egone), (kept, _) = await put(store, 1), await put(store, 2)
    store.path(egone).unlink()
    result = await store.reconcile()
    assert result.entries_dropped == 1
    assert indexed(store) == {f"blob:{kept}"}


async def test_reconcile_adopts_a_correct_orphan_blob(store):
    data = blob(7, 5000)
    digest = Digest.of(data)
    path = store.root / relpath_for("blob", "sha256", digest.hex)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)                  # a crash between rename and index
    result = await store.reconcile()
    assert (result.files_adopted, result.files_rejected) == (1, 0)
    assert await store.stat("blob", digest) == Entry(path.relative_to(store.root).as_posix(), 5000)


async def test_reconcile_deletes_a_corrupt_orphan(store):
    digest = Digest.of(b"the real content")
    path = store.root / relpath_for("blob", "sha256", digest.hex)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"something else")
    result = await store.reconcile()
    assert (result.files_adopted, result.files_rejected) == (0, 1)
    assert not path.exists()
    assert await store.stat("blob", digest) is None


async def test_reconcile_deletes_an_orphan_manifest_whose_media_type_is_lost(store):
    data = b'{"schemaVersion":2}'
    path = store.root / relpath_for("manifest", "sha256", Digest.of(data).hex)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    result = await store.reconcile()
    assert result.files_rejected == 1 and not path.exists()


async def test_reconcile_leaves_a_consistent_cache_alone(store):
    stored = [await put(store, n) for n in range(3)]
    result = await store.reconcile()
    assert (result.temp_files_removed, result.entries_dropped, result.files_adopted,
            result.files_rejected) == (0, 0, 0, 0)
    assert indexed(store) == {f"blob:{d}" for d, _ in stored}


async def test_reopen_runs_reconcile(tmp_path):
    first = await open_store(tmp_path)
    digest, entry = await put(first, 1)
    (first.tmp / "crashed.part").write_bytes(b"x")
    await first.close()
    second = await open_store(tmp_path)
    try:
        assert list(second.tmp.iterdir()) == []
        assert await second.stat("blob", digest) == Entry(entry.relpath, entry.size)
    finally:
        await second.close()


# --- readiness ----------------------------------------------------------------------------------------

async def test_ready(store):
    assert await store.readiness() == []


async def test_unwritable_cache_dir_is_reported(store):
    store.tmp.chmod(0o500)
    try:
        if os.access(store.tmp, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        problems = await store.readiness()
    finally:
        store.tmp.chmod(0o700)
    assert len(problems) == 1 and "not writable" in problems[0]


async def test_cache_tmp_replaced_by_a_file_is_reported(store):
    # Works as root too: no permission bit can make a regular file a directory.
    store.tmp.rmdir()
    store.tmp.write_bytes(b"")
    problems = await store.readiness()
    assert len(problems) == 1 and "not writable" in problems[0]


async def test_stat_with_pin_is_atomic_with_eviction(tmp_path):
    """A blob found with ``stat(pin=True)`` survives eviction until unpinned, and then goes.

    The lookup and the eviction race in two threads released together by a barrier, many
    times: whichever wins, a lookup that found the blob must find its file still there."""
    store = BlobStore(tmp_path / "c", Budget(4 * 1000, 0.5, 0.25))
    await store.open()
    a = Digest.of(b"a" * 1000)
    barrier = threading.Barrier(2)

    def racing(coroutine_fn):
        def run():
            barrier.wait(timeout=10)
            return asyncio.run(coroutine_fn())
        return run

    try:
        found = 0
        for round_ in range(30):
            await store.put_bytes("blob", a, b"a" * 1000)
            for i in range(4):
                data = bytes([round_, i]) * 500
                await store.put_bytes("blob", Digest.of(data), data)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                lookup = pool.submit(racing(lambda: store.stat("blob", a, pin=True)))
                evict = pool.submit(racing(store.make_room))
                entry, _ = lookup.result(timeout=30), evict.result(timeout=30)
            await store.make_room()                 # evicts a's entry if the lookup won
            if entry is not None:
                found += 1
                assert store.path(entry).exists(), f"round {round_}: evicted while pinned"
                assert store.path(entry).read_bytes() == b"a" * 1000
                store.unpin(entry)
                await store.make_room()
                await store.release()
                assert await store.stat("blob", a) is None
                assert not store.path(entry).exists()
        assert found, "the lookup never won the race: nothing was checked"
    finally:
        await store.close()


# --- eviction racing a committed read (issue #8) -------------------------------------------------

async def test_eviction_racing_a_committed_read_never_removes_the_file_under_it(store):
    """A response holds a FileBody (found and pinned in one step); eviction runs in another
    thread while it reads. Every byte read is the blob's, the file outlives the response,
    and once the response lets go the evicted file is unlinked."""
    from pullcache.cache.body import FileBody
    digest, _ = await put(store, 1, 2 * MiB)
    entry = await store.stat("blob", digest, pin=True)
    body = await FileBody.open(store, entry)
    path = store.path(entry)
    evicting = threading.Event()

    def evict_repeatedly() -> None:
        evicting.set()
        for _ in range(50):
            store.index.evict_to(0)
            store.index.drop(f"blob:{digest}")   # as `cache rm` would, while we read
    worker = threading.Thread(target=evict_repeatedly)
    worker.start()
    await asyncio.to_thread(evicting.wait, 5)
    got = bytearray()
    async for fd, offset, length in body.spans(0, body.size):
        got += await asyncio.to_thread(os.pread, fd, length, offset)
        assert path.exists(), "the file went while a response was reading it"
    await asyncio.to_thread(worker.join, 10)
    assert bytes(got) == blob(1, 2 * MiB)
    assert path.exists() and f"blob:{digest}" not in indexed(store)
    await body.aclose()
    await store.release()
    assert not path.exists(), "the evicted file outlived its last reader"
