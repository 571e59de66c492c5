"""pullcache.cache.fill: one verified download, tailed by many readers (real temp dirs).

The upstream is an in-memory ``Source`` whose chunks are released one at a time by events,
so each test decides exactly how far the download has got. A fill tries a list of
``Candidate`` sources in order (the backing tier, held back until verified; then the origin).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from pullcache.cache.fill import Candidate, Fill, FillFailed, Fills
from pullcache.cache.store import BlobStore, Budget
from pullcache.errors import (
    BlobUnknown, DigestMismatch, SizeInvalid, StorageError, UpstreamError, UpstreamTimeout)
from pullcache.oci import Digest
from tests.support.ports import eventually, settle

DATA = b"0123456789abcdefghij"      # 20 bytes, delivered as 3 chunks below
CHUNKS = [DATA[:8], DATA[8:15], DATA[15:]]
DIGEST = Digest.of(DATA)
AUTO = object()


class FakeSource:
    """``chunks()`` yields chunk i once ``gates[i]`` is set, then waits for ``end``."""

    def __init__(self, chunks: list[bytes], size=AUTO, *, error: Exception | None = None):
        self.size = sum(map(len, chunks)) if size is AUTO else size
        self.origin = "upstream"
        self._chunks = chunks
        self.gates = [asyncio.Event() for _ in chunks]
        self.end = asyncio.Event()
        self.error = error            # raised after the last chunk instead of finishing
        self.opened = 0
        self.closed = False

    async def chunks(self):
        for gate, chunk in zip(self.gates, self._chunks):
            await gate.wait()
            yield chunk
        await self.end.wait()
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        self.closed = True

    def release(self, n: int | None = None, *, end: bool = False) -> None:
        for gate in self.gates[:n]:
            gate.set()
        if end:
            self.end.set()

    def release_all(self) -> None:
        self.release(end=True)


def candidate(source: FakeSource | Exception, name: str = "origin", *,
              stream: bool = True) -> Candidate:
    """A Candidate whose open() returns ``source``, or raises it if it is an exception."""
    async def open_():
        if isinstance(source, Exception):
            raise source
        source.opened += 1
        return source
    return Candidate(name, open_, stream)


def origin(source: FakeSource) -> list[Candidate]:
    return [candidate(source)]


class Reader:
    """Consumes ``fill.read(...)`` in its own task; records whether the fill's bytes had
    been verified (a source recorded, or the fill ended) when each chunk arrived."""

    def __init__(self, fill: Fill, start: int = 0, end: int | None = None) -> None:
        self.fill = fill
        self.buf = bytearray()
        self.chunks: list[tuple[bytes, bool]] = []
        self._grew = asyncio.Event()
        self.task = asyncio.create_task(self._run(start, end))

    async def _run(self, start, end) -> bytes:
        async with contextlib.aclosing(self.fill.read(start, end)) as chunks:
            async for chunk in chunks:
                self.chunks.append((chunk, bool(self.fill.source) or self.fill.result.done()))
                self.buf += chunk
                self._grew.set()
        return bytes(self.buf)

    async def until(self, n: int) -> None:
        """Wait (on the reader's own progress, with a deadline) until ``n`` bytes arrived."""
        async with asyncio.timeout(5):
            while len(self.buf) < n:
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"reader ended with {len(self.buf)} < {n} bytes")
                self._grew.clear()
                grew = asyncio.ensure_future(self._grew.wait())
                try:
                    await asyncio.wait({self.task, grew}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    grew.cancel()

    async def result(self) -> bytes:
        async with asyncio.timeout(5):
            return await self.task



async def wait(awaitable, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        return await awaitable


@pytest.fixture
async def fills(store):
    events: list[str] = []
    fills = Fills(store, deadline=60, on_event=lambda event, **kw: events.append(event))
    fills.events = events  # type: ignore[attr-defined]
    yield fills
    await fills.close()


def temp_files(store: BlobStore) -> list:
    return list(store.tmp.iterdir())


async def settled(fills: Fills) -> None:
    """Wait until every fill task has finished its clean-up (its result is set earlier)."""
    await eventually(lambda: len(fills) == 0)


# --- the happy path -----------------------------------------------------------------------------

async def test_readers_get_bytes_before_the_fill_ends_and_the_blob_is_committed(fills, store):
    source = FakeSource(CHUNKS)
    fill, joined = fills.get_or_start("blob", DIGEST, origin(source))
    assert not joined
    reader = Reader(fill)
    assert await wait(fill.started()) == len(DATA)
    source.release(1)
    await reader.until(8)
    assert bytes(reader.buf) == DATA[:8]
    assert not fill.result.done()
    source.release_all()
    assert await reader.result() == DATA
    result = await wait(fill.result)
    assert (result.size, result.origin) == (len(DATA), "upstream")
    assert await store.stat("blob", DIGEST) == result.entry
    assert store.path(result.entry).read_bytes() == DATA
    assert temp_files(store) == []
    assert source.closed
    assert fills.events == ["committed"]
    await settled(fills)


async def test_second_caller_joins_the_running_fill(fills):
    source = FakeSource(CHUNKS)
    fill, joined = fills.get_or_start("blob", DIGEST, origin(source))
    again, joined_again = fills.get_or_start("blob", DIGEST, origin(FakeSource([b"never"])))
    assert (again, joined, joined_again) == (fill, False, True)
    assert len(fills) == 1
    other, joined_other = fills.get_or_start("manifest", DIGEST, origin(FakeSource(CHUNKS)))
    assert other is not fill and not joined_other          # one fill per (kind, digest)
    source.release_all()
    await wait(fill.result)


async def test_a_request_after_a_failure_starts_afresh_while_the_failed_fill_cleans_up(fills):
    # A failed fill stays listed until its clean-up (the temp file) is done; a request in
    # that moment once joined it and was cut at once (a flaky "broken transfer" retried).
    bad = FakeSource(CHUNKS[:1], size=len(DATA), error=UpstreamError("reset mid-blob"))
    fill, _ = fills.get_or_start("blob", DIGEST, origin(bad))
    bad.release_all()
    with pytest.raises(UpstreamError, match="reset mid-blob"):   # the source's own error
        await wait(fill.result)
    assert fill.failed
    good = FakeSource(CHUNKS)
    again, joined = fills.get_or_start("blob", DIGEST, origin(good))
    assert again is not fill and not joined
    # The failed fill's end removes itself from the list, never the newer fill.
    await eventually(lambda: fill not in fills._tasks.values())
    assert fills.running("blob", DIGEST) is again
    good.release_all()
    assert (await wait(again.result)).size == len(DATA)
    await settled(fills)


async def test_the_final_byte_is_held_back_until_the_digest_is_verified(fills):
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    source.release()                                        # every byte, but not the end
    await eventually(lambda: fill.written == len(DATA))
    reader = Reader(fill)
    await reader.until(len(DATA) - 1)
    # Everything written is there to read, yet the first read stops one byte short.
    assert reader.chunks == [(DATA[:-1], False)]
    source.end.set()
    assert await reader.result() == DATA
    assert reader.chunks[-1] == (DATA[-1:], True)


async def test_a_streaming_reader_never_sees_the_final_byte_before_the_end(fills):
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    reader = Reader(fill)
    for i in range(len(CHUNKS)):
        source.release(i + 1)
        await reader.until(min(sum(map(len, CHUNKS[:i + 1])), len(DATA) - 1))
    source.end.set()
    assert await reader.result() == DATA
    offset = 0
    for chunk, ended in reader.chunks:
        offset += len(chunk)
        assert ended == (offset == len(DATA))


async def test_unknown_size_streams_everything_and_ends_when_verified(fills, store):
    source = FakeSource(CHUNKS, size=None)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    assert await wait(fill.started()) is None
    reader = Reader(fill)
    source.release()
    await reader.until(len(DATA))
    assert not reader.task.done()                           # no end until verified
    source.end.set()
    assert await reader.result() == DATA
    assert (await wait(fill.result)).size == len(DATA)


async def test_unknown_size_is_counted_against_the_budget_as_it_arrives(fills, store):
    """No Content-Length: the reservation grows with the bytes, and makes room as it grows
    (a full cache evicts for it while it is still downloading)."""
    store.budget = Budget(16 << 20)
    for n in range(3):
        body = bytes([n]) * (4 << 20)
        await store.put_bytes("blob", Digest.of(body), body)
    volume = store.index.volume()
    assert volume >= 12 << 20
    source = FakeSource(CHUNKS, size=None)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    source.release()                                   # all its bytes; no end yet
    await eventually(lambda: fill.written == len(DATA), what="bytes written")
    usage = await store.usage()
    assert usage["reserved"] >= len(DATA)              # counted while in flight ...
    assert usage["bytes"] + usage["reserved"] <= store.budget.high   # ... with room made
    assert usage["bytes"] < volume                     # (by evicting the oldest)
    source.end.set()
    assert (await wait(fill.result)).size == len(DATA)
    assert (await store.usage())["reserved"] == 0      # released once the index counts it


# --- late readers and ranges -------------------------------------------------------------------------

async def test_a_late_reader_starts_from_byte_zero(fills):
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    source.release(2)
    await eventually(lambda: fill.written == 15)
    late = Reader(fill)
    await late.until(15)
    assert bytes(late.buf) == DATA[:15]
    source.release_all()
    assert await late.result() == DATA


async def test_a_reader_after_the_commit_reads_the_committed_file(fills, store):
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    source.release_all()
    await wait(fill.result)
    assert not fill.temp.exists()
    assert await Reader(fill).result() == DATA
    assert await Reader(fill, 5, 9).result() == DATA[5:9]


async def test_a_range_that_ends_early_is_served_before_the_fill_ends(fills):
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    source.release(1)
    assert await Reader(fill, 2, 8).result() == DATA[2:8]   # its last byte is the 8th
    assert not fill.result.done()
    source.release(2)
    assert await Reader(fill, 10, 15).result() == DATA[10:15]
    source.release_all()
    await wait(fill.result)


async def test_a_range_to_the_end_is_held_back_like_the_whole_blob(fills):
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    source.release()
    await eventually(lambda: fill.written == len(DATA))
    tail = Reader(fill, 12, len(DATA))
    await tail.until(len(DATA) - 13)
    assert tail.chunks == [(DATA[12:-1], False)]
    source.end.set()
    assert await tail.result() == DATA[12:]


async def test_cancelling_a_reader_leaves_the_fill_running(fills, store):
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    quitter = Reader(fill)
    stayer = Reader(fill)
    source.release(1)
    await quitter.until(8)
    assert fill.readers == 2
    quitter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter.task
    assert fill.readers == 1
    source.release_all()
    assert await stayer.result() == DATA
    assert (await wait(fill.result)).size == len(DATA)
    assert await store.stat("blob", DIGEST) is not None


# --- failures ----------------------------------------------------------------------------------------

async def test_digest_mismatch_fails_every_reader_and_keeps_nothing(fills, store):
    wrong = b"X" + DATA[1:]
    source = FakeSource([wrong[:8], wrong[8:]])
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    readers = [Reader(fill) for _ in range(3)]
    source.release()
    for reader in readers:
        await reader.until(len(DATA) - 1)
    source.end.set()
    for reader in readers:
        with pytest.raises(FillFailed):
            await reader.result()
        assert len(reader.buf) == len(DATA) - 1             # never a complete-looking blob
    with pytest.raises(DigestMismatch):
        await wait(fill.result)
    with pytest.raises(FillFailed):
        await Reader(fill).result()                         # a reader arriving afterwards
    await settled(fills)
    assert not fill.temp.exists() and temp_files(store) == []
    assert await store.stat("blob", DIGEST) is None
    assert list((store.root / "blobs").rglob("*")) == []
    assert fills.events == ["digest_mismatch", "failed"]
    assert source.closed


async def test_more_bytes_than_announced_is_size_invalid(fills, store):
    source = FakeSource(CHUNKS, size=10)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    reader = Reader(fill)
    source.release_all()
    with pytest.raises(SizeInvalid):
        await wait(fill.result)
    with pytest.raises(FillFailed):
        await reader.result()
    await settled(fills)
    assert temp_files(store) == [] and await store.stat("blob", DIGEST) is None


async def test_fewer_bytes_than_announced_is_size_invalid(fills, store):
    source = FakeSource(CHUNKS, size=len(DATA) + 5)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    source.release_all()
    with pytest.raises(SizeInvalid):
        await wait(fill.result)
    await settled(fills)
    assert temp_files(store) == [] and await store.stat("blob", DIGEST) is None


async def test_a_source_error_mid_stream_fails_the_readers(fills, store):
    source = FakeSource(CHUNKS[:1], size=len(DATA), error=ConnectionResetError("reset"))
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    reader = Reader(fill)
    source.release(1)
    await reader.until(8)
    source.end.set()
    with pytest.raises(FillFailed):
        await reader.result()
    with pytest.raises(ConnectionResetError):
        await wait(fill.result)
    await settled(fills)
    assert temp_files(store) == []
    assert source.closed


async def test_an_error_before_the_start_is_raised_by_started(fills, store):
    fill, _ = fills.get_or_start("blob", DIGEST, [candidate(BlobUnknown(str(DIGEST)))])
    with pytest.raises(BlobUnknown):
        await wait(fill.started())
    with pytest.raises(BlobUnknown):
        await wait(fill.result)
    await settled(fills)
    assert temp_files(store) == []
    # The key is free again: the next request starts a new fill.
    source = FakeSource(CHUNKS)
    source.release_all()
    fresh, joined = fills.get_or_start("blob", DIGEST, origin(source))
    assert fresh is not fill and not joined
    await wait(fresh.result)


async def test_the_deadline_fails_the_fill_with_upstream_timeout(store):
    fills = Fills(store, deadline=0.05)
    source = FakeSource(CHUNKS)                             # never released
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    with pytest.raises(UpstreamTimeout):
        await wait(fill.result)
    await settled(fills)
    assert temp_files(store) == []
    await fills.close()


async def test_close_cancels_a_running_fill_and_removes_its_temp_file(fills, store):
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    reader = Reader(fill)
    source.release(1)
    await reader.until(8)
    assert fill.temp.exists()
    await wait(fills.close())
    with pytest.raises(FillFailed):
        await wait(fill.result)
    with pytest.raises(FillFailed):
        await reader.result()
    assert not fill.temp.exists() and temp_files(store) == []
    assert await store.stat("blob", DIGEST) is None
    assert source.closed
    assert len(fills) == 0


# --- several sources: the backing tier (held back until verified), then the origin ------------

def tier_then_origin(tier: FakeSource | Exception, origin_source: FakeSource) -> list[Candidate]:
    return [candidate(tier, "ecr", stream=False), candidate(origin_source, "origin")]


async def test_a_tier_miss_hands_over_to_the_origin(fills, store):
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST,
                                 tier_then_origin(BlobUnknown(str(DIGEST)), source))
    reader = Reader(fill)
    assert await wait(fill.started()) == len(DATA)
    source.release(1)
    await reader.until(8)                                   # the origin streams as before
    source.release_all()
    assert await reader.result() == DATA
    assert (await wait(fill.result)).size == len(DATA)
    assert fill.source == "origin"
    assert fills.events == ["committed"]


async def test_a_held_back_source_shows_no_byte_until_verified(fills, store):
    tier, never = FakeSource(CHUNKS), FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, tier_then_origin(tier, never))
    reader = Reader(fill)
    early_range = Reader(fill, 0, 4)
    tier.release()
    await eventually(lambda: fill.written == len(DATA))
    assert fill.visible == 0 and reader.buf == b"" and early_range.buf == b""
    tier.end.set()
    assert await reader.result() == DATA
    assert await early_range.result() == DATA[:4]
    assert all(ended for _, ended in reader.chunks + early_range.chunks)
    assert fill.source == "ecr" and never.opened == 0
    await wait(fill.result)              # readers may finish before the commit does
    assert await store.stat("blob", DIGEST) is not None


async def test_a_corrupt_tier_copy_is_dropped_and_the_origin_used(fills, store):
    tier = FakeSource([b"X" + DATA[1:]])
    source = FakeSource(CHUNKS)
    tier.release_all()
    source.release_all()
    fill, _ = fills.get_or_start("blob", DIGEST, tier_then_origin(tier, source))
    result = await wait(fill.result)
    assert (result.size, fill.source) == (len(DATA), "origin")
    assert store.path(result.entry).read_bytes() == DATA
    assert await Reader(fill).result() == DATA
    assert fills.events == ["digest_mismatch", "committed"]
    assert tier.closed and source.closed
    await settled(fills)
    assert temp_files(store) == []


async def test_a_streamed_source_that_failed_after_readers_saw_bytes_is_not_replaced(fills):
    first = FakeSource(CHUNKS[:1], size=len(DATA), error=UpstreamError("reset mid-blob"))
    second = FakeSource(CHUNKS)
    second.release_all()
    fill, _ = fills.get_or_start("blob", DIGEST,
                                 [candidate(first, "mirror"), candidate(second, "origin")])
    reader = Reader(fill)
    first.release(1)
    await reader.until(8)
    first.end.set()
    with pytest.raises(UpstreamError):
        await wait(fill.result)
    with pytest.raises(FillFailed):
        await reader.result()
    assert second.opened == 0


async def test_when_every_source_fails_the_last_error_is_the_fill_s_error(fills, store):
    fill, _ = fills.get_or_start("blob", DIGEST, tier_then_origin(
        BlobUnknown("not in the tier"), UpstreamError("502 from the origin")))
    with pytest.raises(UpstreamError):
        await wait(fill.started())
    with pytest.raises(UpstreamError):
        await wait(fill.result)
    await settled(fills)
    assert temp_files(store) == []


async def test_a_reader_opened_during_a_corrupt_tier_copy_gets_the_origin_s_bytes(fills):
    """A held-back tier copy promises readers nothing: a reader arriving while it downloads
    opens no file until a verified or streaming source exists, so it can never pread the
    dropped copy; it gets the origin's bytes."""
    tier = FakeSource([(b"X" + DATA[1:])[:8], (b"X" + DATA[1:])[8:]])
    source = FakeSource(CHUNKS)
    source.release_all()
    fill, _ = fills.get_or_start("blob", DIGEST, tier_then_origin(tier, source))
    tier.release(1)
    await eventually(lambda: fill.written == 8)             # the tier's temp file exists
    reader = Reader(fill)
    await settle()
    assert fill.readers == 0, "a reader opened an unverified tier copy"
    tier.release_all()                                      # mismatch → the origin refills
    assert (await wait(fill.result)).size == len(DATA) and fill.source == "origin"
    assert await reader.result() == DATA


async def test_a_tier_copy_of_the_wrong_length_still_falls_back_to_the_origin(fills):
    tier = FakeSource([DATA + b"extra"])
    source = FakeSource(CHUNKS)
    tier.release_all()
    source.release_all()
    fill, _ = fills.get_or_start("blob", DIGEST, tier_then_origin(tier, source))
    result = await wait(fill.result)
    assert (result.size, fill.source) == (len(DATA), "origin")
    assert await wait(fill.started()) == len(DATA)


def resumable_tier(first: FakeSource, rest: list[FakeSource | Exception],
                   offsets: list[int]) -> Candidate:
    """The tier's candidate, held back, whose resume(offset) opens the next of ``rest``."""
    async def resume(offset: int):
        offsets.append(offset)
        nxt = rest.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        nxt.opened += 1
        return nxt
    base = candidate(first, "ecr", stream=False)
    return Candidate(base.name, base.open, False, resume)


async def test_a_cut_tier_transfer_resumes_where_it_was_cut(fills, store):
    """The tier's copy cut after 8 bytes: reopened from byte 8 (a Range request), hashed on
    as one stream, verified; the origin is never asked."""
    cut = FakeSource(CHUNKS[:1], size=len(DATA), error=UpstreamError("connection reset"))
    rest = FakeSource([DATA[8:]])
    never = FakeSource(CHUNKS)
    for source in (cut, rest):
        source.release_all()
    offsets: list[int] = []
    fill, _ = fills.get_or_start("blob", DIGEST, [resumable_tier(cut, [rest], offsets),
                                                   candidate(never, "origin")])
    assert await Reader(fill).result() == DATA
    result = await wait(fill.result)
    assert (result.size, fill.source, offsets) == (len(DATA), "ecr", [8])
    assert never.opened == 0 and cut.closed and rest.closed
    assert store.path(result.entry).read_bytes() == DATA


async def test_a_resume_that_cannot_continue_falls_back_to_the_origin(fills):
    """A resumed source announcing the wrong length, or failing again past the limit,
    hands over to the origin like any other tier failure."""
    cut = FakeSource(CHUNKS[:1], size=len(DATA), error=UpstreamError("reset"))
    wrong = FakeSource([DATA[8:] + b"x"])
    source = FakeSource(CHUNKS)
    for each in (cut, wrong, source):
        each.release_all()
    offsets: list[int] = []
    fill, _ = fills.get_or_start("blob", DIGEST, [resumable_tier(cut, [wrong], offsets),
                                                   candidate(source, "origin")])
    assert await Reader(fill).result() == DATA
    assert fill.source == "origin" and offsets == [8]


def joinable(whole: FakeSource, name: str, joins: list, *, stream: bool = True,
             tail: FakeSource | Exception | None = None) -> Candidate:
    """A candidate that opens ``whole``, and answers resume(offset) with ``tail`` (a
    FakeSource: a 206 with the rest; an exception: a refusal, e.g. a 200 for the whole
    blob), recording each offset in ``joins``."""
    async def resume(offset: int):
        joins.append((name, offset))
        if isinstance(tail, Exception):
            raise tail
        tail.opened += 1
        return tail
    base = candidate(whole, name, stream=stream)
    return Candidate(name, base.open, stream, resume if tail is not None else None)


def peer_cut_at_8(fills: Fills, joins: list, *, stream: bool,
                  own: Exception | None = None):
    """A fill whose peer is cut after 8 bytes (its own resume: ``own``), then the origin,
    which joins from there with the rest; (fill, peer, origin's whole, origin's rest)."""
    peer = FakeSource(CHUNKS[:1], size=len(DATA), error=UpstreamError("peer reset"))
    whole, rest = FakeSource(CHUNKS), FakeSource([DATA[8:]])
    for source in (peer, whole, rest):
        source.release_all()
    fill, _ = fills.get_or_start("blob", DIGEST, [
        joinable(peer, "peer", joins, stream=stream, tail=own),
        joinable(whole, "origin", joins, tail=rest)])
    return fill, peer, whole, rest


@pytest.mark.parametrize("stream", [False, True], ids=["held-back", "streamed"])
async def test_a_source_cut_midway_hands_over_to_the_next_with_a_range(fills, store, stream):
    """A peer (no way to resume it: it is gone) cut after 8 bytes: the next source joins
    with a Range from byte 8, the fill keeps the 8 bytes and their hash state, and the
    bytes are never fetched twice; readers that saw the peer's bytes read on."""
    joins: list = []
    fill, peer, whole, rest = peer_cut_at_8(fills, joins, stream=stream)
    reader = Reader(fill)
    assert await reader.result() == DATA
    result = await wait(fill.result)
    assert (result.size, fill.source, joins) == (len(DATA), "origin", [("origin", 8)])
    assert whole.opened == 0 and rest.opened == 1 and peer.closed and rest.closed
    assert store.path(result.entry).read_bytes() == DATA


async def test_a_held_back_source_s_bytes_stay_held_back_when_the_origin_joins(fills):
    """The tier's copy, held back, cut after 8 bytes; the origin joins from byte 8: no
    reader sees a byte (not even the tier's 8) before the whole blob is verified."""
    tier = FakeSource(CHUNKS[:1], size=len(DATA), error=UpstreamError("tier reset"))
    whole, rest = FakeSource(CHUNKS), FakeSource([DATA[8:15], DATA[15:]])
    tier.release_all()
    rest.release(1)
    joins: list = []
    fill, _ = fills.get_or_start("blob", DIGEST, [
        joinable(tier, "ecr", joins, stream=False),
        joinable(whole, "origin", joins, tail=rest)])
    reader = Reader(fill)
    await eventually(lambda: fill.written == 15)
    await settle()
    assert reader.buf == b"" and not fill._started.done()
    rest.release_all()
    assert await reader.result() == DATA
    assert joins == [("origin", 8)] and all(verified for _, verified in reader.chunks)


async def test_a_dead_source_s_own_resume_failing_hands_over_to_the_next(fills):
    """The cut source is asked again first (its resume refused: a killed peer), then the
    next joins where the cut was."""
    joins: list = []
    fill, _, whole, _ = peer_cut_at_8(fills, joins, stream=False,
                                      own=UpstreamError("connection refused"))
    assert await Reader(fill).result() == DATA
    assert joins == [("peer", 8), ("origin", 8)] and whole.opened == 0


async def test_a_successor_answering_200_to_the_range_is_not_joined(fills):
    """The origin answers the Range with the whole blob (its resume refuses): not joined.
    After a held-back source no reader saw a byte, so the origin starts over from 0; after
    a streamed one the readers saw bytes, so the fill fails (a cut the client resumes)."""
    for stream in (False, True):
        peer = FakeSource(CHUNKS[:1], size=len(DATA), error=UpstreamError("peer reset"))
        whole = FakeSource(CHUNKS)
        whole.release_all()
        peer.release_all()
        joins: list = []
        digest = Digest.of(DATA + bytes([stream]))   # a fill of its own per case
        fill, _ = fills.get_or_start("blob", DIGEST if not stream else digest, [
            joinable(peer, "peer", joins, stream=stream),
            joinable(whole, "origin", joins,
                     tail=UpstreamError("no range from byte 8 (answered 200)"))])
        reader = Reader(fill)
        if stream:
            with pytest.raises(FillFailed):
                await reader.result()
            assert whole.opened == 0
        else:
            assert await reader.result() == DATA
            assert whole.opened == 1 and fill.source == "origin"
        assert joins == [("origin", 8)]


async def read_raw(fill: Fill, into: bytearray) -> None:
    """What the owner's peer route reads: ``spans(raw=True)``, into ``into``."""
    async for fd, offset, length in fill.spans(raw=True):
        into.extend(os.pread(fd, length, offset))


async def test_a_raw_reader_gets_a_held_back_source_s_bytes_as_written(fills):
    """What an owner sends a peer: the size as soon as the held-back source answers, its
    bytes as written (the peer verifies them itself), the final byte at verification."""
    tier = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, [candidate(tier, "ecr", stream=False)])
    assert await wait(fill.sized()) == len(DATA)
    assert not fill._started.done()            # a client is promised nothing yet
    got = bytearray()
    task = asyncio.create_task(read_raw(fill, got))
    tier.release(2)
    await eventually(lambda: len(got) == 15)
    assert not fill.verified
    tier.release_all()
    await wait(task)
    assert bytes(got) == DATA


async def test_a_raw_reader_is_cut_when_the_source_it_read_is_dropped(fills):
    tier = FakeSource([(b"X" + DATA[1:])[:8], (b"X" + DATA[1:])[8:]])
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, tier_then_origin(tier, source))
    got = bytearray()
    task = asyncio.create_task(read_raw(fill, got))
    tier.release(1)
    await eventually(lambda: len(got) == 8)
    tier.release_all()                     # mismatch: the origin refills from 0
    source.release_all()
    with pytest.raises(FillFailed):
        await wait(task)
    assert (await wait(fill.result)).size == len(DATA) and fill.source == "origin"


# --- storage trouble ---------------------------------------------------------------------------------

async def test_a_failing_make_room_fails_the_fill_instead_of_hanging(tmp_path):
    unopened = BlobStore(tmp_path / "cache", Budget(1 << 40))  # make_room → StorageError
    fills = Fills(unopened, deadline=60)
    source = FakeSource(CHUNKS)
    source.release_all()
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    try:
        with pytest.raises(StorageError, match="cache is not open"):
            await wait(fill.result, timeout=5)
        with pytest.raises(FillFailed):
            await Reader(fill).result()
    finally:
        await fills.close()


# --- the pipeline: one writer thread, few wake-ups, the final byte at verification -------------

@pytest.fixture
def held_commit(store, monkeypatch) -> tuple[asyncio.Event, asyncio.Event]:
    """``store.commit`` sets the first event, then waits for the second."""
    committing, commit_may_go = asyncio.Event(), asyncio.Event()
    real_commit = store.commit

    async def slow_commit(*args, **kwargs):
        committing.set()
        await commit_may_go.wait()
        return await real_commit(*args, **kwargs)
    monkeypatch.setattr(store, "commit", slow_commit)
    return committing, commit_may_go


async def test_the_final_byte_is_released_at_verification_before_the_commit(fills, store,
                                                                             held_commit):
    committing, commit_may_go = held_commit
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    reader = Reader(fill)
    source.release_all()
    assert await reader.result() == DATA          # whole, while the commit has not run
    await wait(committing.wait())
    assert not fill.result.done() and fill.verified
    commit_may_go.set()
    assert (await wait(fill.result)).size == len(DATA)
    assert await store.stat("blob", DIGEST) is not None


async def test_a_disk_write_error_fails_the_fill_with_a_storage_error(fills, store,
                                                                      monkeypatch):
    import errno
    import pullcache.cache.writer as writer_module

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(writer_module.os, "write", full)
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    reader = Reader(fill)
    source.release_all()
    with pytest.raises(StorageError):
        await wait(fill.result)
    with pytest.raises(FillFailed):
        await reader.result()
    await settled(fills)
    assert temp_files(store) == [] and await store.stat("blob", DIGEST) is None


async def test_readers_are_woken_per_step_not_per_chunk(fills, monkeypatch):
    data = bytes(range(256)) * 4096 * 8          # 8 MiB in 512 chunks of 16 KiB
    chunks = [data[i:i + 16384] for i in range(0, len(data), 16384)]
    source = FakeSource(chunks)
    fill, _ = fills.get_or_start("blob", Digest.of(data), origin(source))
    wakes = 0
    real_wake = fill._wake

    def counting_wake():
        nonlocal wakes
        wakes += 1
        real_wake()
    monkeypatch.setattr(fill, "_wake", counting_wake)
    reader = Reader(fill)
    source.release_all()
    assert await reader.result() == data
    assert wakes < len(chunks) // 4, f"{wakes} wake-ups for {len(chunks)} chunks"


async def test_close_lets_a_verified_fill_commit_and_cancels_the_rest(fills, store,
                                                                     held_commit):
    committing, commit_may_go = held_commit
    done, downloading = FakeSource(CHUNKS), FakeSource(CHUNKS)
    verified, _ = fills.get_or_start("blob", DIGEST, origin(done))
    other_digest = Digest.of(b"another blob")
    unfinished, _ = fills.get_or_start("blob", other_digest, origin(downloading))
    done.release_all()
    downloading.release(1)
    await wait(committing.wait())                # verified, its commit under way
    closing = asyncio.create_task(fills.close())
    with pytest.raises(FillFailed):
        await wait(unfinished.result)            # the download is cancelled at once ...
    assert not closing.done()
    commit_may_go.set()                          # ... the verified one commits
    await wait(closing)
    assert (await wait(verified.result)).size == len(DATA)
    assert await store.stat("blob", DIGEST) is not None
    assert await store.stat("blob", other_digest) is None


async def test_an_announced_empty_blob_ends_only_when_verified(fills):
    source = FakeSource([], size=0)                # empty, but DIGEST is not the empty digest
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    reader = Reader(fill)
    await wait(fill.started())
    await settle()
    assert not reader.task.done(), "an unverified empty body looked complete"
    source.end.set()
    with pytest.raises(FillFailed):
        await reader.result()
    empty = Digest.of(b"")
    good = FakeSource([], size=0)
    good.release_all()
    fill, _ = fills.get_or_start("blob", empty, origin(good))
    assert await Reader(fill).result() == b""

# --- the budget ----------------------------------------------------------------------------------

class SampledSource(FakeSource):
    """Records the cache's disk use (indexed files, index database, temp files) before
    every chunk it hands over."""

    def __init__(self, chunks: list[bytes], store: BlobStore, peaks: list[int]) -> None:
        super().__init__(chunks)
        self.store, self.peaks = store, peaks
        self.release_all()

    async def chunks(self):
        async for chunk in super().chunks():
            self.peaks.append(disk_use(self.store))
            yield chunk


def disk_use(store: BlobStore) -> int:
    temps = 0
    for path in store.tmp.iterdir():
        try:
            temps += path.stat().st_size
        except FileNotFoundError:
            pass    # committed (renamed) by another fill's thread since the listing
    return store.index.volume() + temps


async def test_concurrent_fills_never_overshoot_the_budget(tmp_path):
    """Issue #8 item 4: 12 concurrent 1 MiB fills on a 10 MiB cache (high watermark 7 MiB),
    already holding 6 MiB of evictable blobs, stay within 10 MiB all along."""
    mib = 1 << 20
    store = BlobStore(tmp_path / "cache", Budget(10 * mib, 0.7, 0.5))
    await store.open()
    fills = Fills(store, deadline=60)
    try:
        for n in range(6):
            data = bytes([n]) * mib
            await store.put_bytes("blob", Digest.of(data), data)
        peaks: list[int] = []
        blobs = [bytes([100 + n]) * mib for n in range(12)]
        started = [fills.get_or_start("blob", Digest.of(data), [candidate(
            SampledSource([data[:mib // 2], data[mib // 2:]], store, peaks))])[0]
            for data in blobs]
        results = await wait(asyncio.gather(*(f.result for f in started)), timeout=30)
        await settled(fills)
        assert [r.size for r in results] == [mib] * 12
        peaks.append(disk_use(store))
        assert max(peaks) <= 10 * mib, f"peak {max(peaks) / mib:.2f} MiB"
        assert (await store.usage())["reserved"] == 0
        assert store.index.volume() <= store.budget.max_size
    finally:
        await fills.close()
        await store.close()
