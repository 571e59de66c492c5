"""pullcache.server.middleware: request ids, the error envelope, the access line."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from aiohttp import web
from prometheus_client import generate_latest
from aiohttp.test_utils import TestClient, TestServer

from pullcache import logs
from pullcache.errors import ManifestUnknown, StorageError, UpstreamTimeout, UpstreamUnavailable
from pullcache.metrics import Metrics
from pullcache.config import loads
from pullcache.gate.identity import AccessControl
from pullcache.server.keys import EXCHANGE, METRICS
from pullcache.server.middleware import AccessLogger, front, new_request_id
from tests.support.ports import eventually

SECRET_PATH = "/var/cache/pullcache/blobs/sha256/ab/abcdef"


@pytest.fixture
async def client():
    async def ok(request):
        return web.Response(text=request[EXCHANGE].request_id)

    async def os_error(request):
        raise OSError(28, "No space left on device", SECRET_PATH)

    async def storage_error(request):
        raise StorageError(f"[Errno 28] No space left on device: '{SECRET_PATH}'")

    metrics = Metrics()
    app = web.Application(middlewares=[front(AccessControl(loads("", env={}).access),
                                             metrics)])
    app[METRICS] = metrics
    app.router.add_get("/ok", ok)
    app.router.add_get("/os", os_error)
    app.router.add_get("/storage", storage_error)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.mark.parametrize("sent", ["abc", "req-1.2_3", "A" * 64])
async def test_a_plain_client_request_id_is_kept_and_echoed(client, sent):
    async with client.get("/ok", headers={"X-Request-Id": sent}) as r:
        assert r.headers["X-Request-Id"] == sent and await r.text() == sent


@pytest.mark.parametrize("sent", ["A" * 65, "has space", "quote\"d", "semi;colon", "ü",
                                  "{\"event\": \"forged\"}", ""])
async def test_a_long_or_odd_client_request_id_is_replaced(client, sent):
    async with client.get("/ok", headers={"X-Request-Id": sent}) as r:
        echoed = r.headers["X-Request-Id"]
        assert echoed != sent and len(echoed) == 16 and int(echoed, 16) >= 0
        assert await r.text() == echoed


async def test_generated_request_ids_are_unique():
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000


@pytest.mark.parametrize("path", ["/os", "/storage"])
async def test_a_storage_failure_names_no_path_to_the_client(client, path):
    async with client.get(path) as r:
        body = await r.text()
        assert r.status == 500
        assert "/var/cache" not in body and "abcdef" not in body
        assert json.loads(body)["errors"][0]["code"] == "UNKNOWN"


async def test_responses_are_counted_by_method_and_status(client):
    for _ in range(3):
        async with client.get("/ok"):
            pass
    async with client.get("/os"):
        pass
    metrics = client.server.app[METRICS]
    assert metrics.http_responses.value("GET", 200) == 3
    assert metrics.http_responses.value("GET", 500) == 1
    scraped = generate_latest(metrics.registry).decode()
    assert 'pullcache_http_responses_total{method="GET",status="200"} 3.0' in scraped
    assert 'pullcache_http_responses_total{method="GET",status="500"} 1.0' in scraped


def test_the_json_access_line_is_the_structlog_line_and_scrubbed():
    out = io.StringIO()
    write = logs._json_access_writer(out)
    write(request_id="r1", method="GET", path="/v2/x/manifests/\"q\"", status=200, bytes=12,
          seconds=0.0012, cache="hit", upstream=None, user="ci", outcome="ok",
          user_agent="curl https://user:pw@host Bearer abc.def")
    record = json.loads(out.getvalue())
    assert record["event"] == "request" and record["level"] == "info"
    assert record["path"] == "/v2/x/manifests/\"q\"" and record["upstream"] is None
    assert record["user"] == "ci"
    assert record["bytes"] == 12 and record["seconds"] == 0.0012 and record["status"] == 200
    assert "pw" not in record["user_agent"] and "abc.def" not in record["user_agent"]
    assert record["timestamp"].endswith("Z") and len(record["timestamp"]) == 27


async def test_access_lines_of_one_loop_iteration_go_out_together_at_its_end():
    class File(io.StringIO):
        writes = 0

        def write(self, text):
            File.writes += 1
            return super().write(text)
    out = File()
    write = logs._json_access_writer(out)
    fields = dict(method="GET", path="/v2/", status=200, bytes=2, seconds=0.001, cache=None,
                  upstream=None, user=None, outcome="ok", user_agent=None)
    for n in range(3):
        write(request_id=f"r{n}", **fields)
    assert out.getvalue() == ""                      # not yet: the iteration is not over
    await eventually(out.getvalue, what="the batch written")
    lines = out.getvalue().splitlines()
    assert [json.loads(x)["request_id"] for x in lines] == ["r0", "r1", "r2"]
    assert File.writes == 1


@pytest.mark.parametrize("raised, status, outcome", [
    (None, 200, "ok"),
    (UpstreamUnavailable("docker.io: ClientConnectorError"), 503, "unavailable"),
    (UpstreamTimeout("docker.io: no answer within 15s"), 504, "unavailable"),
    (ManifestUnknown("v9"), 404, "manifest_unknown"),
    (StorageError("disk"), 500, "failed"),
    (web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2), 413, "refused"),
])
async def test_the_access_line_outcome_matches_the_status(monkeypatch, raised, status, outcome):
    lines: list[dict] = []
    monkeypatch.setattr(logs, "access", lambda **line: lines.append(line))

    async def handler(request):
        if raised is not None:
            raise raised
        return web.Response(text="fine")
    app = web.Application(middlewares=[front(AccessControl(loads("", env={}).access),
                                             Metrics())])
    app.router.add_get("/x", handler)
    server = TestServer(app)
    await server.start_server(access_log_class=AccessLogger,
                              access_log=structlog.get_logger("test"))
    async with TestClient(server) as c:
        async with c.get("/x") as r:
            assert r.status == status
        await eventually(lambda: lines, what="the access line")
    assert (lines[0]["status"], lines[0]["outcome"]) == (status, outcome)
