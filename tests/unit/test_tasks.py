"""Supervised background loops (``pullcache/tasks.py``): a loop that raises is logged with its
traceback and restarted; one that keeps failing is reported (``/readyz``); a vital loop that
ends is not restarted but marks the process as lost."""

from __future__ import annotations

import asyncio

import structlog

from pullcache.tasks import Loops
from tests.support.ports import eventually


async def test_a_loop_that_raises_is_logged_and_restarted():
    loops = Loops(backoff=0.01, max_backoff=0.02)
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"run {runs} broke")
        await asyncio.Event().wait()   # the third run lives
    with structlog.testing.capture_logs() as logs:
        task = loops.start("flaky", body)
        await eventually(lambda: runs == 3, what="the third run")
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert [(e["task"], e["failures"]) for e in failed] == [("flaky", 1), ("flaky", 2)]
    assert isinstance(failed[0]["exc_info"], RuntimeError)   # logged with its traceback
    assert not task.done() and not loops.lost.is_set()
    await loops.stop()
    assert task.cancelled()


async def test_a_step_every_interval_survives_a_step_that_raises():
    loops = Loops(backoff=0.01)
    steps: list[int] = []

    def step() -> None:
        steps.append(len(steps))
        if len(steps) == 2:
            raise OSError("index unreadable")
    with structlog.testing.capture_logs() as logs:
        loops.every("samples", 0.001, step)
        await eventually(lambda: len(steps) >= 5, what="sampling to go on")
    assert [e["task"] for e in logs if e["event"] == "task_failed"] == ["samples"]
    await loops.stop()


async def test_a_loop_that_keeps_failing_is_reported_until_it_runs_healthy():
    loops = Loops(backoff=0.001, max_backoff=0.002, failing_after=3, healthy=0.2)
    broken = True

    async def body() -> None:
        if broken:
            raise RuntimeError("disk gone")
        await asyncio.Event().wait()
    loops.start("recency", body)
    await eventually(lambda: loops.failing(), what="the loop to be reported")
    [problem] = loops.failing()
    assert "recency" in problem and "RuntimeError: disk gone" in problem
    broken = False   # the next run lives: after `healthy` seconds it is no longer reported
    await eventually(lambda: not loops.failing(), what="the report to clear")
    await loops.stop()


async def test_a_vital_loop_that_dies_is_not_restarted_and_marks_the_process_lost():
    loops = Loops(backoff=0.001)
    runs = 0

    async def accept() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("listening socket lost")
    task = loops.start("accept http://127.0.0.1:5000", accept, vital=True)
    await asyncio.wait_for(loops.lost.wait(), 5)
    await task
    assert runs == 1 and "listening socket lost" in loops.lost_reason
