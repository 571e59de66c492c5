"""Upstream faults through a fault proxy in front of the real registry: bad bytes are never
served or cached, failures become OCI errors, cached content outlives its upstream."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
from aiohttp import web

from tests.support._aiothread import ThreadedApp
from tests.support.daemon import UpstreamSpec
from tests.support.http import request
from tests.support.images import build_image, build_raw_blob_image, push


@pytest.fixture
def proxied(make_pullcache, fault_proxy):
    """pullcache whose only upstream is the fault proxy in front of the registry."""
    return make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                       extra={"breaker_failures": 100}))

MiB = 1 << 20


def cache_files(pc) -> list[str]:
    out = []
    for sub in ("blobs", "tmp"):
        base = pc.cache_dir / sub
        out += [p.name for p in base.rglob("*") if p.is_file()]
    return out


def raw_get(url_host: str, path: str) -> tuple[int, int, int | None, bool]:
    """(status, bytes received, Content-Length, completed) — tolerating a cut connection."""
    host, port = url_host.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    length = resp.getheader("Content-Length")
    got = 0
    completed = True
    try:
        while chunk := resp.read(65536):
            got += len(chunk)
    except (http.client.IncompleteRead, ConnectionError) as exc:
        got += len(getattr(exc, "partial", b""))
        completed = False
    finally:
        conn.close()
    total = int(length) if length else None
    return resp.status, got, total, completed and (total is None or got == total)


# A body under upstream.body.TAKEOVER_MIN is read through aiohttp; a larger one is received
# into pullcache's own buffers: faults must end the same way on both paths.
BODY_PATHS = pytest.mark.parametrize("size", [3 * MiB, 6 * MiB], ids=["aiohttp", "taken-over"])


@BODY_PATHS
@pytest.mark.parametrize("kind", ["corrupt", "truncate"])
def test_bad_blob_bytes_break_the_transfer_and_are_not_cached(proxied, registry, fault_proxy,
                                                               kind, size):
    image = build_raw_blob_image(f"fault-{kind}-{size}", size)
    push(registry, "faults/blob", f"{kind}-{size}", image)
    layer = image.layers[0]
    path = f"/v2/faults/blob/blobs/{layer.digest}"
    fault_proxy.set_fault(kind, match=layer.digest, at_byte=size - MiB, times=1)
    status, got, length, completed = raw_get(proxied.host, path)
    assert status == 200 and length == layer.size
    assert not completed, "a client must see a broken transfer, not a complete wrong blob"
    assert layer.digest.split(":")[1] not in cache_files(proxied)
    assert not list((proxied.cache_dir / "tmp").iterdir()), "temp file left behind"
    # The next request fetches again, verifies, and succeeds.
    gets = fault_proxy.count("GET", layer.digest)
    r = request(proxied.url, path)
    assert r.status == 200 and r.sha256 == layer.digest
    assert fault_proxy.count("GET", layer.digest) == gets + 1
    if kind == "corrupt":
        assert proxied.events("digest_mismatch")
        assert proxied.metric("pullcache_digest_mismatches_total") >= 1


@pytest.mark.parametrize("status, code", [(500, "UPSTREAM_ERROR"), (503, "UNAVAILABLE"),
                                          (429, "TOOMANYREQUESTS")])
def test_upstream_errors_become_oci_errors(proxied, registry, fault_proxy, status, code):
    image = build_image(f"status-{status}")
    push(registry, "faults/status", "v1", image)
    fault_proxy.set_fault("status", match="/manifests/", status=status, retry_after=7)
    r = request(proxied.url, "/v2/faults/status/manifests/v1")
    assert r.error_codes == [code]
    assert r.status == {500: 502, 503: 503, 429: 429}[status]
    if status == 429:
        assert r.headers["retry-after"] == "7"
    fault_proxy.set_fault("status", match="/blobs/", status=status)
    r = request(proxied.url, f"/v2/faults/status/blobs/{image.config.digest}")
    assert r.status >= 429 and r.error_codes
    fault_proxy.clear_fault()
    assert request(proxied.url, "/v2/faults/status/manifests/v1").status == 200


@BODY_PATHS
def test_stalled_upstream_times_out_cleanly(make_pullcache, registry, fault_proxy, size):
    image = build_raw_blob_image(f"stall-{size}", size)
    push(registry, "faults/stall", f"v{size}", image)
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                     extra={"read_timeout": 1}))
    layer = image.layers[0]
    fault_proxy.set_fault("stall", match=layer.digest, at_byte=size - MiB)
    status, got, length, completed = raw_get(pc.host, f"/v2/faults/stall/blobs/{layer.digest}")
    assert status == 200 and not completed
    fault_proxy.release()
    fault_proxy.clear_fault()
    r = request(pc.url, f"/v2/faults/stall/blobs/{layer.digest}")
    assert r.status == 200 and r.sha256 == layer.digest


def test_cache_serves_after_restart_with_upstream_gone(make_pullcache, tmp_path):
    """Blobs and by-digest manifests survive a restart and need no upstream at all."""
    from tests.support.registry import start_registry
    reg = start_registry(tmp_path / "doomed")
    try:
        image = build_image("restart", layer_sizes=(200_000, 1000))
        push(reg, "restart/app", "v1", image)
        pc = make_pullcache(UpstreamSpec(reg.host, reg.url))
        assert request(pc.url, "/v2/restart/app/manifests/v1").status == 200
        for blob in image.blobs():
            assert request(pc.url, f"/v2/restart/app/blobs/{blob.digest}").status == 200
    finally:
        reg.stop()
    pc.restart()
    r = request(pc.url, f"/v2/restart/app/manifests/{image.digest}")
    assert r.status == 200 and r.body == image.manifest
    assert r.headers["content-type"] == image.media_type
    for blob in image.blobs():
        b = request(pc.url, f"/v2/restart/app/blobs/{blob.digest}")
        assert b.status == 200 and b.sha256 == blob.digest
    # The tag is served stale, with a Warning, once upstream cannot be asked.
    r = request(pc.url, "/v2/restart/app/manifests/v1")
    assert r.status == 200 and r.body == image.manifest


BAD_PATHS = [
    ("/v2/UPPER/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/a..b/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/ok/manifests/bad!tag", 404, "MANIFEST_UNKNOWN"),
    ("/v2/ok/manifests/" + "t" * 129, 404, "MANIFEST_UNKNOWN"),
    ("/v2/ok/blobs/sha256:totallywrong", 400, "DIGEST_INVALID"),
    ("/v2/ok/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"),
    ("/v2/ok/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
    ("/v2/ok/manifests/sha256:../../../../etc/passwd", 404, "NOT_FOUND"),
    ("/v2/../../etc/passwd/manifests/x", 400, "NAME_INVALID"),
    ("/v2/%2e%2e/%2e%2e/etc/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/ok/blobs/sha256:%2e%2e%2f%2e%2e%2fetc%2fpasswd", 404, "NOT_FOUND"),
    ("/v2//etc/passwd/manifests/x", 400, "NAME_INVALID"),
    ("/v2/ok/blobs/..%2f..%2f..%2fetc%2fpasswd", 404, "NOT_FOUND"),
    ("/v2/ok/blobs/%2e%2e", 400, "DIGEST_INVALID"),
    ("/v2/ok/manifests/%2e%2e", 404, "MANIFEST_UNKNOWN"),
    ("/v2/ok/referrers/notadigest", 400, "DIGEST_INVALID"),
    ("/v2/ok/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"),
    ("/v2/ok/nothing/here", 404, "NOT_FOUND"),
    ("/etc/passwd", 404, "NOT_FOUND"),
]


def test_bad_input_gets_oci_errors_and_touches_nothing(pullcache, tmp_path):
    before = sorted(str(p) for p in pullcache.cache_dir.rglob("*"))
    passwd = Path("/etc/passwd")
    passwd_before = (passwd.stat().st_mtime_ns, passwd.read_bytes())
    outside_before = sorted(str(p) for p in pullcache.workdir.parent.rglob("*")
                            if pullcache.cache_dir not in p.parents)
    for path, status, code in BAD_PATHS:
        r = request(pullcache.url, path)
        assert r.status == status, (path, r.status, r.body)
        assert r.headers["content-type"].startswith("application/json"), path
        assert r.error_codes == [code], (path, r.body)
        assert b"root:" not in r.body, path                 # no file outside was read
    for method in ("PUT", "POST", "PATCH", "DELETE"):
        r = request(pullcache.url, "/v2/ok/blobs/uploads/", method=method)
        assert r.status == 405 and r.error_codes == ["UNSUPPORTED"]
    after = sorted(str(p) for p in pullcache.cache_dir.rglob("*")
                   if "index" not in p.parts and "tags" not in p.parts)
    assert set(after) <= set(before) | {str(pullcache.cache_dir / "tmp")}
    assert "Traceback" not in pullcache.log()
    # Nothing outside the cache root was written: not the traversal targets, not the
    # directories around the cache (only the daemon's own log grows there).
    assert (passwd.stat().st_mtime_ns, passwd.read_bytes()) == passwd_before
    outside_after = sorted(str(p) for p in pullcache.workdir.parent.rglob("*")
                           if pullcache.cache_dir not in p.parents)
    assert outside_after == outside_before


class RedirectLoop(ThreadedApp):
    """A registry that answers every request with a redirect to itself."""

    async def make_app(self) -> web.Application:
        async def loop(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"/v2/loop/again?n={request.query.get('n', '')}x")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", loop)
        return app


def test_redirects_are_capped(make_pullcache):
    with RedirectLoop() as upstream:
        pc = make_pullcache(UpstreamSpec(upstream.host, upstream.url,
                                         extra={"max_redirects": 3}))
        r = request(pc.url, "/v2/loop/blobs/sha256:" + "2" * 64)
        assert r.status == 502 and "more than 3 redirects" in r.json()["errors"][0]["detail"]
