"""pullcache.cache.fill: the moment a fill's source answers, its waiting readers go first.

A request for an uncached blob waits in ``Fill.started`` for the upstream's answer, then
sends its response headers (the client's first byte). Those readers must run before the
fill sets up its temp file (room in the budget, the file, the writer thread: work in
threads that then competes with the loop for the GIL).
"""

from __future__ import annotations

import asyncio

from pullcache.cache.fill import Candidate, Fills
from tests.unit.test_fill import DATA, DIGEST, FakeSource


async def test_readers_waiting_for_the_source_run_before_the_fill_sets_up(store, monkeypatch):
    order: list[str] = []
    reserve = store.reserve

    async def reserving(nbytes):
        order.append("fill sets up")
        return await reserve(nbytes)
    monkeypatch.setattr(store, "reserve", reserving)
    source, answered = FakeSource([DATA]), asyncio.Event()

    async def open_():
        await answered.wait()       # the upstream's headers, later than the readers
        return source
    fills = Fills(store, deadline=60)
    try:
        fill, _ = fills.get_or_start("blob", DIGEST, [Candidate("origin", open_)])

        async def reader(name: str) -> None:
            assert await fill.started() == len(DATA)
            order.append(name)
        readers = [asyncio.create_task(reader(f"reader {i}")) for i in range(2)]
        await asyncio.sleep(0)      # both are waiting in started()
        answered.set()
        await asyncio.wait_for(asyncio.gather(*readers), 5)
        source.release_all()
        await asyncio.wait_for(fill.result, 5)
        assert order == ["reader 0", "reader 1", "fill sets up"]
    finally:
        await fills.close()
