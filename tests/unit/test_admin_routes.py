"""Where the ops routes live: on the admin app, or on the public app when admin_listen = "";
and what /readyz reports."""

import asyncio
import time

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pullcache.config import loads
from pullcache.ops.samples import Samples
from pullcache.server.admin import build_admin_app
from pullcache.server.app import build_app
from tests.support.ports import eventually


def paths(app):
    return {r.get_info().get("path") for r in app.router.resources()}


def test_ops_routes_only_on_the_admin_app(tmp_path):
    public = build_app(loads(f'[cache]\ndir = "{tmp_path}"\n', env={}))
    assert not {"/metrics", "/healthz", "/readyz"} & paths(public)
    assert {"/metrics", "/healthz", "/readyz"} <= paths(build_admin_app(public))


def test_ops_routes_on_the_public_app_without_an_admin_listener(tmp_path):
    cfg = loads(f'[server]\nadmin_listen = ""\n[cache]\ndir = "{tmp_path}"\n', env={})
    assert {"/metrics", "/healthz", "/readyz"} <= paths(build_app(cfg))


async def test_readyz_reports_a_background_loop_that_keeps_failing(tmp_path, monkeypatch):
    """The status sampler, a real loop of a real app, made to fail on every sample: it is
    restarted (not lost for good) and /readyz says so with a 503."""
    samples = 0

    def broken_take(self) -> None:
        nonlocal samples
        samples += 1
        raise RuntimeError("a counter that cannot be read")
    monkeypatch.setattr(Samples, "take", broken_take)
    core = build_app(loads(f'[cache]\ndir = "{tmp_path}"\n', env={}))
    runner = web.AppRunner(core)
    await runner.setup()   # the cleanup contexts: the cache, the operator's loops
    try:
        async with TestClient(TestServer(build_admin_app(core))) as client:
            await eventually(lambda: samples >= 3, what="the sampler to be restarted twice")

            async def readyz() -> tuple[int, dict]:
                r = await client.get("/readyz")
                return r.status, await r.json()
            status, body = await readyz()
            deadline = time.monotonic() + 10
            while status != 503 and time.monotonic() < deadline:   # the third failure's report
                await asyncio.sleep(0.05)
                status, body = await readyz()
            assert status == 503, body
            [problem] = body["problems"]
            assert "status samples" in problem and "a counter that cannot be read" in problem
    finally:
        await runner.cleanup()
