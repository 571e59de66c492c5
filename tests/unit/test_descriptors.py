"""A cancelled open must not leak what its thread opens: ``FileBody.open`` and a fill's
reader, cancelled at the ``await`` while ``os.open`` blocks (on a FIFO: an open for reading
waits for a writer), hold no descriptor and no pin once that open lands."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time

import pytest

from pullcache.cache.body import FileBody
from pullcache.cache.fill import Fills
from tests.support.ports import eventually, settle
from tests.unit.test_fill import CHUNKS, DIGEST, FakeSource, origin


def descriptors_on(path) -> list[int]:
    """This process's descriptors open on ``path``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                found.append(int(name))
    return found


async def cancelled_while_opening(task: asyncio.Task, fifo) -> None:
    """Cancel ``task`` while its thread blocks opening ``fifo``, then let that open land
    (open the writing end) and wait until the executor has run it."""
    await settle()                       # the task is at its await, the thread in open(2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while True:                          # ENXIO: no reader yet (the thread is not in open)
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            assert exc.errno == errno.ENXIO and time.monotonic() < deadline, exc
            await asyncio.sleep(0.001)
    try:
        # The reader's open has landed (it held the FIFO open for us to open it): its
        # descriptor is closed as soon as the loop hears of it.
        await eventually(lambda: descriptors_on(fifo) == [writer], timeout=5,
                         what="no descriptor left on the FIFO but the writer's")
    finally:
        os.close(writer)


async def test_a_cancelled_file_body_open_leaks_neither_descriptor_nor_pin(store):
    entry = await store.put_bytes("blob", DIGEST, b"".join(CHUNKS))
    path = store.path(entry)
    path.unlink()
    os.mkfifo(path)
    store.index.pin(entry.relpath)              # the caller's pin, handed to open
    task = asyncio.create_task(FileBody.open(store, entry))
    await cancelled_while_opening(task, path)
    assert not store.index._is_pinned(entry.relpath)


async def test_a_cancelled_reader_open_leaks_no_descriptor(store):
    fills = Fills(store, deadline=60)
    source = FakeSource(CHUNKS)
    fill, _ = fills.get_or_start("blob", DIGEST, origin(source))
    await eventually(lambda: fill.temp.exists(), what="temp file created")
    fill.temp.unlink()
    os.mkfifo(fill.temp)                        # the reader's open of it now blocks

    async def read() -> None:
        async with contextlib.aclosing(fill.spans(0)) as spans:
            async for _ in spans:
                pass
    task = asyncio.create_task(read())
    await cancelled_while_opening(task, fill.temp)
    assert fill.readers == 0
    fill.temp.unlink()
    source.release_all()
    await fills.close()
