"""Client authentication pieces: htpasswd parsing, Basic parsing, the verdict cache (the hot
path pays no bcrypt), the failure limiter, and the notify datagrams."""

from __future__ import annotations

import asyncio
import base64
import socket
import time

import bcrypt
import pytest

from pullcache.config import loads
from pullcache.errors import ConfigError, Denied, TooManyRequests, Unauthorized
from pullcache.gate.identity import (
    AccessControl, FailureLimiter, Verifier, parse_basic, read_htpasswd)
from pullcache.server.lifecycle import Notifier
from tests.support.http import basic_auth
from tests.support.ports import eventually, settle


def _hash(password: str, prefix: bytes = b"$2y$") -> str:
    return (prefix + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))[4:]).decode()


def test_htpasswd_reads_apache_2y_entries(tmp_path):
    f = tmp_path / "htpasswd"
    f.write_text(f"# comment\nalice:{_hash('a')}\n\nbob:{_hash('b', b'$2b$')}\n")
    users = read_htpasswd(f)
    assert set(users) == {"alice", "bob"}
    assert all(h.startswith(b"$2b$") for h in users.values())
    assert bcrypt.checkpw(b"a", users["alice"])


@pytest.mark.parametrize("line", ["alice:{SHA}abc=", "alice:$apr1$x$y", "nocolon", ":$2y$05$x"])
def test_htpasswd_refuses_anything_but_bcrypt_and_hides_the_hash(tmp_path, line):
    f = tmp_path / "htpasswd"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError, match="line 1: not a bcrypt entry") as e:
        read_htpasswd(f)
    assert "abc=" not in str(e.value)


@pytest.mark.parametrize("header,pair", [
    (basic_auth("u", "p:w"), ("u", "p:w")),
    ("basic " + base64.b64encode(b"u:").decode(), ("u", "")),
    ("Bearer xyz", None), ("Basic !!!", None), (None, None),
    ("Basic " + base64.b64encode(b"nocolon").decode(), None)])
def test_parse_basic(header, pair):
    assert parse_basic(header) == pair


async def test_verdicts_are_remembered_so_the_hot_path_pays_no_bcrypt(monkeypatch):
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: calls.append(1) or real(p, h))
    v = Verifier({"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))}, ttl=60)
    assert v.remembered("alice", "pw") is None
    # Concurrent checks of one pair share one bcrypt.
    assert await asyncio.gather(*(v.verify("alice", "pw") for _ in range(5))) == [True] * 5
    assert len(calls) == 1
    assert v.remembered("alice", "pw") is True and len(calls) == 1
    assert await v.verify("alice", "nope") is False
    assert await v.verify("ghost", "pw") is False   # unknown users cost a bcrypt too
    assert len(calls) == 3
    assert all(b"pw" not in k for k in v._verdicts)   # keyed by HMAC, never the password


def test_failure_limiter_window():
    lim = FailureLimiter(2, 10)
    lim.failed("a", now=0)
    assert lim.retry_after("a", now=1) is None
    lim.failed("a", now=1)
    assert lim.retry_after("a", now=2) == 8
    assert lim.retry_after("b", now=2) is None
    assert lim.retry_after("a", now=10.5) is None   # the first failure has left the window


async def test_identify_order(tmp_path):
    f = tmp_path / "htpasswd"
    f.write_text(f"alice:{_hash('pw')}\n")
    cfg = loads(f'[access]\nhtpasswd = "{f}"\nanonymous_networks = ["10.0.0.0/8"]\n'
                'allow_networks = ["10.0.0.0/8", "192.168.0.0/16", "::/0"]\nmax_failures = 1\n',
                env={})
    ac = AccessControl(cfg.access)
    with pytest.raises(Denied):
        await ac.identify("172.16.0.1", basic_auth("alice", "pw"))
    assert (await ac.identify("10.1.1.1", None)).user == "anonymous"
    assert (await ac.identify("10.1.1.1", basic_auth("hub", "x"))).user == "anonymous"
    assert (await ac.identify("::ffff:10.1.1.1", None)).user == "anonymous"   # dual stack
    with pytest.raises(Unauthorized) as e:
        await ac.identify("192.168.1.1", None)
    assert e.value.headers["WWW-Authenticate"] == 'Basic realm="pullcache"'
    assert ac.known("192.168.1.1", basic_auth("alice", "pw")) is None   # a bcrypt check is due
    assert (await ac.identify("192.168.1.1", basic_auth("alice", "pw"))).user == "alice"
    # Now remembered: the hot path answers without a thread or an await.
    assert ac.known("192.168.1.1", basic_auth("alice", "pw")).user == "alice"
    assert ac.known("10.1.1.1", None).user == "anonymous"
    with pytest.raises(Unauthorized):
        await ac.identify("192.168.1.1", basic_auth("alice", "bad"))
    with pytest.raises(TooManyRequests):
        await ac.identify("192.168.1.1", basic_auth("alice", "bad2"))
    assert (await ac.identify("192.168.1.1", basic_auth("alice", "pw"))).user == "alice"


async def test_without_htpasswd_everyone_allowed_is_anonymous():
    ac = AccessControl(loads("", env={}).access)
    assert (await ac.identify("203.0.113.9", basic_auth("x", "y"))).user == "anonymous"


def test_notifier_speaks_to_abstract_and_path_sockets(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(f"\0pullcache-test-{id(tmp_path)}")
        n = Notifier({"NOTIFY_SOCKET": f"@pullcache-test-{id(tmp_path)}",
                      "WATCHDOG_USEC": "30000000"})
        n.send("READY=1", "STATUS=serving")
        assert sock.recv(100) == b"READY=1\nSTATUS=serving"
        assert n.watchdog_interval == 15
        n.close()
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    Notifier({}).send("READY=1")   # no manager: nothing happens


def test_networks_from_the_environment():
    cfg = loads("", env={"PULLCACHE_ACCESS_ANONYMOUS_NETWORKS": "127.0.0.0/8, ::1"})
    assert [str(n) for n in cfg.access.anonymous_networks] == ["127.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError, match="access.allow_networks"):
        loads('[access]\nallow_networks = ["10.0.0.300/8"]\n', env={})


@pytest.mark.parametrize("allowed,status", [("127.0.0.0/8", 200), ("10.0.0.0/8", 403)])
async def test_ops_routes_on_the_public_port_follow_access(tmp_path, allowed, status):
    """With admin_listen = "", /metrics and the probes are public routes: [access] applies."""
    from aiohttp.test_utils import TestClient, TestServer

    from pullcache.server.app import build_app
    cfg = loads(f'[server]\nadmin_listen = ""\n[cache]\ndir = "{tmp_path}"\n'
                f'[access]\nallow_networks = ["{allowed}"]\n', env={})
    async with TestClient(TestServer(build_app(cfg), host="127.0.0.1")) as client:
        for path in ("/metrics", "/healthz", "/readyz"):
            resp = await client.get(path)
            assert resp.status == status, path
            assert resp.headers["Server"] == "pullcache"


def test_serve_refuses_tls_files_that_do_not_load(tmp_path, monkeypatch):
    from pullcache import cli
    from pullcache.server.lifecycle import tls_context
    monkeypatch.setattr(cli.logs, "setup", lambda *a: None)   # keep the test's stderr
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\ntls_cert = "{tmp_path}/cert.pem"\n'
                      f'tls_key = "{tmp_path}/missing.pem"\n[cache]\ndir = "{tmp_path}/c"\n')
    assert cli.main(["serve", "--config", str(config)]) == 2
    with pytest.raises(ConfigError, match="server.tls_cert/tls_key: cannot load"):
        tls_context(loads(config.read_text(), env={}).server)


# -- bcrypt beside the hot path, and the failure limit under concurrency ----------------------

def _access(tmp_path, rounds: int = 4, **keys) -> AccessControl:
    f = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=rounds)).decode()
    f.write_text(f"alice:{hashed}\n")
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return AccessControl(loads(f'[access]\nhtpasswd = "{f}"\n{extra}', env={}).access)


def _count_bcrypt(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: calls.append(1) or real(p, h))
    return calls


async def _outcome(ac: AccessControl, address: str, password: str) -> int:
    try:
        await ac.identify(address, basic_auth("alice", password))
    except (Unauthorized, TooManyRequests) as exc:
        return exc.status
    return 200


async def test_concurrent_guesses_past_max_failures_never_reach_bcrypt(tmp_path, monkeypatch):
    calls = _count_bcrypt(monkeypatch)
    ac = _access(tmp_path, max_failures=3)
    statuses = await asyncio.gather(*(_outcome(ac, "198.51.100.7", f"guess-{n}")
                                      for n in range(40)))
    assert len(calls) <= 3, f"{len(calls)} of 40 concurrent guesses reached bcrypt"
    assert statuses.count(401) == len(calls) and statuses.count(429) == 40 - len(calls)
    # Concurrent requests with the right credentials share one check and count once.
    ok = _access(tmp_path, max_failures=1)
    assert await asyncio.gather(*(_outcome(ok, "198.51.100.8", "pw") for _ in range(10))) \
        == [200] * 10
    ac.close()
    ok.close()


async def test_bcrypt_leaves_the_default_executor_to_the_hot_path(tmp_path, monkeypatch):
    calls = _count_bcrypt(monkeypatch)
    ac = _access(tmp_path, rounds=10, max_failures=100)
    guesses = [asyncio.create_task(_outcome(ac, f"198.51.100.{n}", f"wrong-{n}"))
               for n in range(60)]
    try:
        await eventually(lambda: calls, what="a bcrypt check to start")
        await settle()   # every guess is queued for its check
        began = time.monotonic()
        await asyncio.to_thread(lambda: None)   # what a file open or an index read waits for
        waited = time.monotonic() - began
        assert waited < 0.05, f"an empty to_thread took {waited * 1000:.0f} ms behind bcrypt"
    finally:
        for guess in guesses:
            guess.cancel()
        await asyncio.gather(*guesses, return_exceptions=True)
        ac.close()


async def test_ipv6_clients_are_counted_per_64(tmp_path):
    ac = _access(tmp_path, max_failures=2)
    assert await _outcome(ac, "2001:db8:1:2::1", "a") == 401
    assert await _outcome(ac, "2001:db8:1:2::dead", "b") == 401
    # Another address of the same /64 is the same client: limited.
    assert await _outcome(ac, "2001:db8:1:2:ffff::9", "c") == 429
    # Another /64 is another client.
    assert await _outcome(ac, "2001:db8:1:3::1", "d") == 401
    ac.close()


def test_a_flood_of_new_addresses_resets_no_ones_count():
    lim = FailureLimiter(3, 60)
    for t in range(3):
        lim.failed("203.0.113.7", now=t)
    assert lim.retry_after("203.0.113.7", now=3) is not None
    for n in range(20_000):   # each a fresh address, each one failure: more than the table holds
        lim.failed(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", now=4)
    assert lim.retry_after("203.0.113.7", now=5) is not None, "the flood reset the count"
