"""pullcache.cache.passthrough: a fill the disk refuses carries on in memory (real temp dirs,
a real memfd); its readers get the verified stream, nothing is cached."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from pullcache.cache.disk import Disk
from pullcache.cache.fill import FillFailed, Fills
from pullcache.cache import writer as writer_module
from pullcache.cache import passthrough as passthrough_module
from pullcache.cache import tail as tail_module
from pullcache.cache.passthrough import Window
from pullcache.errors import DigestMismatch
from pullcache.oci import Digest
from tests.unit.test_fill import (CHUNKS, DATA, DIGEST, FakeSource, Reader, candidate,
                                  eventually, origin, settled, temp_files, wait)


@pytest.fixture
async def disk(store):
    disk = Disk(store, None, max_size=1 << 40, min_free=0)
    await disk.refresh()
    return disk


def make_fills(store, disk, window: int = 1 << 20) -> Fills:
    events: list[str] = []
    fills = Fills(store, deadline=60, on_event=lambda event, **kw: events.append(event),
                  disk=disk, window=window)
    fills.events = events  # type: ignore[attr-defined]
    return fills


def disk_full_after(fill, good_writes: int, code: int = errno.ENOSPC) -> None:
    """The temp file takes ``good_writes`` chunks, then the disk refuses with ``code`` (in
    the fill's writer thread, where a refused write surfaces)."""
    real, calls = os.write, [0]

    def write(fd, data):
        if fd == fill._fd and fd >= 0:
            calls[0] += 1
            if calls[0] > good_writes:
                raise OSError(code, os.strerror(code))
        return real(fd, data)
    writer_module.os = _PatchedOs(write)


class _PatchedOs:
    """``os`` as the writer module sees it, with ``write`` replaced (undone by ``_os``)."""

    def __init__(self, write) -> None:
        self.write = write

    def __getattr__(self, name):
        return getattr(os, name)


@pytest.fixture(autouse=True)
def _os():
    yield
    writer_module.os = os


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO],
                         ids=["ENOSPC", "EDQUOT", "EIO"])
async def test_a_disk_error_mid_fill_passes_the_verified_stream_through(store, disk, code):
    fills = make_fills(store, disk)
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    disk_full_after(fill, 1, code)
    early = Reader(fill)
    source.release(1)
    await early.until(len(CHUNKS[0]))          # it read the first chunk from the temp file
    source.release()
    await eventually(lambda: fill.written == len(DATA))
    late = Reader(fill)                         # joins after the switch, from byte 0
    await late.until(len(DATA) - 1)
    assert late.buf == DATA[:-1]                # the final byte waits for the digest
    source.end.set()
    assert await early.result() == DATA and await late.result() == DATA
    result = await wait(fill.result)
    assert result.entry is None                 # served, not cached
    await settled(fills)
    assert temp_files(store) == [] and await store.stat("blob", DIGEST) is None
    assert "passthrough" in fills.events and "committed" not in fills.events
    assert disk.status()["degraded"] == "disk"
    # The next fill that commits clears the degraded state.
    again = FakeSource(CHUNKS)
    fill2, _ = fills.get_or_start("blob", DIGEST, origin(again))
    again.release_all()
    assert (await wait(fill2.result)).entry is not None
    assert disk.status() is None
    await fills.close()


async def test_a_wrong_stream_in_pass_through_is_still_cut_before_its_last_byte(store, disk):
    fills = make_fills(store, disk)
    wrong = b"X" + DATA[1:]
    source = FakeSource([wrong[:8], wrong[8:]])
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    disk_full_after(fill, 0)
    reader = Reader(fill)
    source.release()
    await reader.until(len(DATA) - 1)
    source.end.set()
    with pytest.raises(FillFailed):
        await reader.result()
    assert len(reader.buf) == len(DATA) - 1     # never a complete-looking blob
    with pytest.raises(DigestMismatch):
        await wait(fill.result)
    await fills.close()


async def test_a_follower_behind_the_window_is_cut(store, disk):
    page = os.sysconf("SC_PAGE_SIZE")
    data = bytes(range(256)) * (4 * page // 256)           # four pages
    chunks = [data[i:i + page] for i in range(0, len(data), page)]
    fills = make_fills(store, disk, window=page + 100)
    source = FakeSource(chunks)
    fill, _ = fills.get_or_start("blob", Digest.of(data), origin(source))
    disk_full_after(fill, 0)
    source.release()
    await eventually(lambda: fill.written == len(data))
    # Older bytes released, in whole pages only (a page a socket still holds keeps its bytes).
    assert fill.window.start == 2 * page
    behind = Reader(fill)                       # wants byte 0: gone
    with pytest.raises(FillFailed, match="fell behind"):
        await behind.result()
    resumed = Reader(fill, start=2 * page)      # a Range resume inside the window works
    source.end.set()
    assert await resumed.result() == data[2 * page:]
    await fills.close()


async def test_too_big_to_fit_passes_through_from_the_start(store, disk):
    store.budget = type(store.budget)(10)       # the disk holds 10 bytes
    fills = make_fills(store, disk)
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    reader = Reader(fill)
    source.release_all()
    assert await reader.result() == DATA
    assert (await wait(fill.result)).entry is None
    assert not fill.temp.exists() and disk.status() is None   # the disk refused nothing
    await fills.close()


async def test_a_reader_opening_the_temp_file_as_the_fill_passes_through_reads_the_window(
        store, disk, monkeypatch):
    """The reader's open of the temp file runs in a thread while the disk refuses the temp
    file and the whole blob goes through the window: the reader gets the window's bytes,
    not "passed through, not cached"."""
    opening, landed = asyncio.Event(), asyncio.Event()
    real_open = tail_module.open_fd

    async def refused(path, flags=os.O_RDONLY, mode=0o777):
        await opening.wait()                     # the reader is in its open by now
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    async def slow_open(path, *args):
        opening.set()
        await landed.wait()
        return await real_open(path, *args)
    monkeypatch.setattr(passthrough_module, "open_fd", refused)
    monkeypatch.setattr(tail_module, "open_fd", slow_open)
    fills = make_fills(store, disk)
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    reader = Reader(fill)
    source.release_all()
    assert (await wait(fill.result)).entry is None       # passed through, and ended
    landed.set()                                         # the reader's open lands: ENOENT
    assert await reader.result() == DATA
    await fills.close()


def held(window: Window) -> int:
    """The window's memory: the memfd's pages (punched pages are freed)."""
    return os.fstat(window.fd).st_blocks * 512


def pages(n: int) -> tuple[bytes, list[bytes]]:
    page = os.sysconf("SC_PAGE_SIZE")
    data = bytes(range(256)) * (n * page // 256)
    return data, [data[i:i + page] for i in range(0, len(data), page)]


async def follow(reader: Reader, source: FakeSource, chunks: list[bytes]) -> None:
    """The origin's chunks one by one, each once the reader has it (a client keeping up)."""
    for i in range(len(chunks)):
        source.gates[i].set()
        await reader.until(sum(map(len, chunks[:i + 1])) - (i == len(chunks) - 1))
    source.end.set()


def held_back_then_origin(tier: FakeSource, source: FakeSource):
    return [candidate(tier, "ecr", stream=False), candidate(source, "origin")]


async def test_a_held_back_source_too_big_for_the_cache_and_the_window_yields(store, disk):
    """The budget cannot hold the blob and the window cannot hold it whole: the tier's copy
    (held back until verified) is not taken, the origin streams it through the window."""
    data, chunks = pages(4)
    store.budget = type(store.budget)(10)
    fills = make_fills(store, disk, window=os.sysconf("SC_PAGE_SIZE") + 100)
    tier, source = FakeSource(chunks), FakeSource(chunks)
    tier.release_all()
    fill, _ = fills.get_or_start("blob", Digest.of(data), held_back_then_origin(tier, source))
    reader = Reader(fill)                       # from byte 0, following the origin's writer
    await follow(reader, source, chunks)
    assert await reader.result() == data
    assert fill.source == "origin" and (await wait(fill.result)).entry is None
    await fills.close()


async def test_a_held_back_source_the_disk_refuses_midway_yields_to_the_origin(store, disk):
    data, chunks = pages(4)
    fills = make_fills(store, disk, window=os.sysconf("SC_PAGE_SIZE") + 100)
    tier, source = FakeSource(chunks), FakeSource(chunks)
    fill, _ = fills.get_or_start("blob", Digest.of(data), held_back_then_origin(tier, source))
    disk_full_after(fill, 1)
    reader = Reader(fill)
    tier.release_all()
    await follow(reader, source, chunks)
    assert await reader.result() == data
    assert fill.source == "origin"
    await fills.close()


async def test_a_held_back_source_that_fits_the_window_passes_through(store, disk):
    store.budget = type(store.budget)(10)
    fills = make_fills(store, disk)             # a window far bigger than the blob
    tier, never = FakeSource(CHUNKS), FakeSource(CHUNKS)
    tier.release_all()
    fill, _ = fills.get_or_start("blob", DIGEST, held_back_then_origin(tier, never))
    assert await Reader(fill).result() == DATA
    assert fill.source == "ecr" and never.opened == 0
    await fills.close()


def test_window_releases_memory_but_not_a_span_in_flight():
    window = Window(limit=1 << 20)
    block = os.urandom(1 << 20)
    for i in range(4):
        window.put(i << 20, block)
    assert window.hold(token=1, offset=1 << 20, length=1 << 20)   # a reader sending MiB 1
    window.trim(4 << 20)                                 # floor at MiB 3
    assert window.start == 3 << 20                       # the window moved on...
    assert os.pread(window.fd, 1 << 20, 1 << 20) == block  # ...its span kept, whole
    assert held(window) <= (2 << 20) + (64 << 10)        # MiB 0 and MiB 2 released
    assert not window.hold(token=1, offset=2 << 20, length=1 << 20)  # cut at its next step
    window.release(1)
    window.trim(4 << 20)                                 # the span let go: released too
    assert held(window) <= (1 << 20) + (64 << 10)
    assert os.pread(window.fd, 16, (3 << 20)) == block[:16]
    window.close()


def test_a_stalled_reader_costs_its_span_whatever_the_writer_puts():
    """One reader stalls mid-span (its send never ends) while 256 MiB go through a 1 MiB
    window: the window holds its limit and that one span, never what came after it."""
    window = Window(limit=1 << 20)
    block = os.urandom(1 << 20)
    window.put(0, block)
    assert window.hold(token=1, offset=4096, length=1 << 20)   # stalled from here on
    peak = 0
    for i in range(1, 256):
        window.put(i << 20, block)
        window.trim((i + 1) << 20)
        peak = max(peak, held(window))
    assert peak <= (1 << 20) + (1 << 20) + 2 * 4096 + (64 << 10), f"{peak} bytes held"
    assert os.pread(window.fd, 1 << 20, 4096) == (block + block)[4096:(1 << 20) + 4096]
    assert not window.hold(token=1, offset=4096 + (1 << 20), length=1 << 20)  # cut
    window.release(1)
    window.trim(256 << 20)
    assert held(window) <= (1 << 20) + (64 << 10)
    window.close()
