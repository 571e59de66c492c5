"""The admin API refuses what a web page of another site could send it (a form POST, a
foreign ``Origin``), and asks for ``server.admin_token`` when one is set; the CLI, which
sends JSON and the token from the same config, still works. Against the real daemon."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.test_operator import cli_json
from tests.support.daemon import ROOT, UpstreamSpec
from tests.support.http import request

TOKEN = "0123456789abcdef-admin-token"


@pytest.fixture
def daemon(make_pullcache, registry):
    return lambda **server: make_pullcache(UpstreamSpec(registry.host, registry.url),
                                           server=server)


def post(pc, path: str, headers: dict[str, str], body: bytes = b"{}"):
    return request(pc.admin_url, path, method="POST", headers={
        "Content-Length": str(len(body)), **headers}, body=body)


def code(reply) -> str:
    return json.loads(reply.body)["errors"][0]["code"]


BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


def test_a_cross_site_form_or_origin_is_refused(daemon):
    pc = daemon()
    # What a page of another site can make a browser send without asking: a text/plain form.
    form = post(pc, "/admin/gc", {"Content-Type": "text/plain"}, b'{"x=":"y"}')
    assert form.status == 415, f"a text/plain form ran /admin/gc: {form.status} {form.body!r}"
    assert code(form) == "UNSUPPORTED"
    urlencoded = post(pc, "/admin/rm", {"Content-Type": "application/x-www-form-urlencoded"},
                      b"refs=library/app:v1")
    assert urlencoded.status == 415
    foreign = post(pc, "/admin/gc", {**JSON, "Origin": "https://evil.example"})
    assert (foreign.status, code(foreign)) == (403, "DENIED")
    assert post(pc, "/admin/gc", {**JSON, "Sec-Fetch-Site": "cross-site"}).status == 403
    # The admin page's own origin, and a script that sends none, pass.
    same = post(pc, "/admin/gc", {**JSON, "Origin": pc.admin_url})
    assert same.status == 200 and "freed_bytes" in json.loads(same.body)
    assert post(pc, "/admin/gc", JSON).status == 200
    assert "freed_bytes" in cli_json(pc, "cache", "gc")


def test_the_admin_token_is_asked_when_set_and_the_cli_sends_it(daemon):
    pc = daemon(admin_token=TOKEN)
    anonymous = post(pc, "/admin/gc", JSON)
    assert (anonymous.status, code(anonymous)) == (401, "UNAUTHORIZED")
    assert post(pc, "/admin/gc", {**JSON, "Authorization": "Bearer wrong"}).status == 401
    assert post(pc, "/admin/gc", {**JSON, **BEARER}).status == 200
    # Reads and probes stay open (the status page, load balancers).
    assert request(pc.admin_url, "/admin/stats").status == 200
    assert request(pc.admin_url, "/readyz").status == 200
    # The CLI sends JSON and the token from the config file.
    assert "freed_bytes" in cli_json(pc, "cache", "gc")
    assert cli_json(pc, "cache", "stats")["daemon"] is True
    assert TOKEN not in pc.log()
    shown = subprocess.run([sys.executable, "-m", "pullcache", "check-config",
                            str(pc.workdir / "pullcache.toml")], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert shown.returncode == 0 and 'admin_token = "***"' in shown.stdout
    assert TOKEN not in shown.stdout + shown.stderr
