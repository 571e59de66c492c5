"""pullcache.singleflight: N concurrent callers with one key share one execution."""

from __future__ import annotations

import asyncio

import pytest

from pullcache.singleflight import SingleFlight


class Work:
    """An async job that counts its runs and waits for ``release`` before answering."""

    def __init__(self, result="done", error: Exception | None = None) -> None:
        self.result = result
        self.error = error
        self.runs = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = 0
        self.cancelled = 0

    async def __call__(self):
        self.runs += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.error is not None:
            raise self.error
        return self.result


async def test_concurrent_callers_share_one_execution():
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    callers = asyncio.gather(*(flights.do("k", work) for _ in range(10)))
    await work.started.wait()
    assert flights.in_flight("k")
    work.release.set()
    results = await callers
    assert work.runs == 1
    assert [r for r, _ in results] == ["done"] * 10
    assert [joined for _, joined in results] == [False] + [True] * 9


async def test_different_keys_run_separately():
    flights: SingleFlight[str] = SingleFlight()
    a, b = Work("a"), Work("b")
    a.release.set()
    b.release.set()
    assert await asyncio.gather(flights.do("a", a), flights.do("b", b)) == [
        ("a", False), ("b", False)]
    assert (a.runs, b.runs) == (1, 1)


async def test_an_exception_reaches_every_caller():
    flights: SingleFlight[str] = SingleFlight()
    boom = ValueError("upstream said no")
    work = Work(error=boom)
    callers = asyncio.gather(*(flights.do("k", work) for _ in range(5)),
                             return_exceptions=True)
    await work.started.wait()
    work.release.set()
    assert await callers == [boom] * 5
    assert work.runs == 1
    assert not flights.in_flight("k")


async def test_a_cancelled_caller_does_not_cancel_the_work_for_others():
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    leader = asyncio.create_task(flights.do("k", work))
    await work.started.wait()
    follower = asyncio.create_task(flights.do("k", work))
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert flights.in_flight("k")
    work.release.set()
    assert await follower == ("done", True)
    assert (work.runs, work.finished, work.cancelled) == (1, 1, 0)


async def test_the_key_is_reusable_after_the_flight_lands():
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    work.release.set()
    assert await flights.do("k", work) == ("done", False)
    assert not flights.in_flight("k")
    assert await flights.do("k", work) == ("done", False)   # not memoised: runs again
    assert work.runs == 2


async def test_the_key_is_reusable_after_a_failure():
    flights: SingleFlight[str] = SingleFlight()
    failing = Work(error=RuntimeError("x"))
    failing.release.set()
    with pytest.raises(RuntimeError):
        await flights.do("k", failing)
    ok = Work("second")
    ok.release.set()
    assert await flights.do("k", ok) == ("second", False)


async def test_close_cancels_work_in_flight():
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    caller = asyncio.create_task(flights.do("k", work))
    await work.started.wait()
    await flights.close()
    assert work.cancelled == 1 and work.finished == 0
    assert not flights.in_flight("k")
    with pytest.raises(asyncio.CancelledError):
        await caller
