"""The daemon under a service manager: systemd notify, SIGTERM drain, SIGHUP reload under
load, and the hardened unit's security rating."""

from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from pullcache.cache.lock import CacheLock
from tests.support.binaries import require
from tests.support.daemon import ROOT, Pullcache, UpstreamSpec
from tests.support.http import basic_auth, request
from tests.support.images import build_image, build_raw_blob_image, push
from tests.support.ports import free_port, wait_until
from tests.support.tls import CA, write_htpasswd

MiB = 1024 * 1024
WATCHDOG_USEC = 1_000_000


def _messages(sock: socket.socket, until: str, timeout: float = 20.0) -> list[str]:
    """Datagrams (split into assignments) until one carries ``until``; fails naming what
    did arrive when none does within ``timeout``."""
    sock.settimeout(timeout)
    seen: list[str] = []
    while until not in seen:
        try:
            seen += sock.recv(4096).decode().split("\n")
        except socket.timeout:
            raise AssertionError(f"no {until} within {timeout}s; got {seen}") from None
    return seen


def _watchdog_gaps(sock: socket.socket, pings: int) -> list[float]:
    """Seconds between ``pings`` consecutive ``WATCHDOG=1`` datagrams."""
    times = []
    while len(times) < pings:
        _messages(sock, "WATCHDOG=1")
        times.append(time.monotonic())
    return [b - a for a, b in zip(times, times[1:])]


def test_notify_ready_watchdog_and_stopping(tmp_path, registry):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        pc = Pullcache(tmp_path / "pc", [UpstreamSpec(registry.host, registry.url, default=True)],
                       env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        pc.workdir.mkdir()
        pc.start()
        try:
            _messages(sock, "READY=1")
            # READY only once the public port listens (and the cache was reconciled first).
            assert request(pc.url, "/v2/").status == 200
            # The manager restarts a service silent for WATCHDOG_USEC: the pings keep
            # coming, each well inside it (at about half).
            gaps = _watchdog_gaps(sock, 4)
            assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
            pc.proc.send_signal(signal.SIGHUP)
            seen = _messages(sock, "READY=1")
            reloading = seen.index("RELOADING=1")   # (ValueError if absent) before READY
            assert seen[reloading + 1].startswith("MONOTONIC_USEC="), seen
            pc.proc.send_signal(signal.SIGTERM)
            _messages(sock, "STOPPING=1")
            assert pc.proc.wait(20) == 0
        finally:
            pc.stop()


def test_drain_finishes_a_slow_download_and_refuses_new_connections(tmp_path, registry):
    image = build_raw_blob_image("drain-64", 64 * MiB)
    push(registry, "drain/big", "v1", image)
    layer = image.layers[0]
    pc = Pullcache(tmp_path / "pc", [UpstreamSpec(registry.host, registry.url, default=True)])
    pc.workdir.mkdir()
    pc.server["drain_timeout"] = "2m"
    pc.start()
    try:
        path = f"/v2/drain/big/blobs/{layer.digest}"
        assert request(pc.url, path, method="HEAD").status == 200
        conn = http.client.HTTPConnection("127.0.0.1", pc.port, timeout=60)
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        digest = hashlib.sha256(resp.read(MiB))   # the client reads 1 MiB, then stalls
        pc.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: request(pc.admin_url, "/readyz").status == 503, 10,
                   "/readyz to answer 503")

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", pc.port), timeout=5).close()
            except ConnectionRefusedError:
                return True
            return False
        wait_until(refused, 10, "the public port to refuse connections")
        assert pc.proc.poll() is None           # still serving the download in flight
        while chunk := resp.read(256 * 1024):   # the slow client goes on reading
            digest.update(chunk)
        conn.close()
        assert "sha256:" + digest.hexdigest() == layer.digest
        assert pc.proc.wait(30) == 0
        assert pc.events("draining") and pc.events("stopping")
    finally:
        pc.stop()


def test_drain_timeout_cuts_a_stalled_client_and_exits_cleanly(tmp_path, registry):
    image = build_raw_blob_image("drain-stall", 32 * MiB)   # more than socket buffers hold
    push(registry, "drain/stall", "v1", image)
    pc = Pullcache(tmp_path / "pc", [UpstreamSpec(registry.host, registry.url, default=True)])
    pc.workdir.mkdir()
    pc.server["drain_timeout"] = "1s"
    pc.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", pc.port, timeout=60)
        conn.request("GET", f"/v2/drain/stall/blobs/{image.layers[0].digest}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read(64 * 1024)   # then it never reads again
        pc.proc.send_signal(signal.SIGTERM)
        assert pc.proc.wait(30) == 0
        # The drain waited drain_timeout for the stalled client, then gave up on it (the
        # daemon's own clock: from its "draining" line to its "stopping" line).
        waited = _at(pc.events("stopping")[-1]) - _at(pc.events("draining")[-1])
        assert 1.0 <= waited < 10.0, waited
        got = 64 * 1024
        try:   # what the socket buffers held, then the cut
            while chunk := resp.read(MiB):
                got += len(chunk)
        except (http.client.IncompleteRead, ConnectionError):
            pass
        conn.close()
        assert got < image.layers[0].size
    finally:
        pc.stop()


def _kept_alive(conn: http.client.HTTPConnection):
    """Read ``conn``'s answer, a 200 that keeps the connection open; its socket, to show
    later that the same connection served again (http.client reconnects silently)."""
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 200 and not answer.will_close
    return conn.sock


def _at(record: dict) -> float:
    """A log record's ISO-8601 timestamp, in seconds."""
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


def _served_fingerprint(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return hashlib.sha256(tls.getpeercert(binary_form=True)).digest()


def test_sighup_rotates_certificate_and_htpasswd_under_load(tmp_path, registry):
    image = build_image("reload-img", layer_sizes=(20_000,))
    push(registry, "reload/app", "v1", image)
    ca = CA(tmp_path / "pki")
    first = ca.issue("server-1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"ci": "pipeline", "alice": "old"})
    pc = Pullcache(tmp_path / "pc", [UpstreamSpec(registry.host, registry.url, default=True)],
                   server={"tls_cert": cert, "tls_key": key}, access={"htpasswd": htpasswd})
    pc.workdir.mkdir()
    pc.start()
    ctx = ca.client_context()
    ci = {"Authorization": basic_auth("ci", "pipeline"), "Accept": image.media_type}
    statuses: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:   # a new connection (and handshake) for every request
                statuses.append(request(pc.url, "/v2/reload/app/manifests/v1", headers=ci,
                                        context=ctx, timeout=30).status)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
    # One keep-alive connection opened before the rotation, used after it.
    kept = http.client.HTTPSConnection("127.0.0.1", pc.port, context=ctx, timeout=30)
    kept.request("GET", "/v2/", headers=ci)
    kept_socket = _kept_alive(kept)
    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(statuses) >= 20, 30, "load to run")
        assert _served_fingerprint(pc.port, ctx) == hashlib.sha256(
            ssl.PEM_cert_to_DER_cert(first.cert.read_text())).digest()
        for n in range(2, 5):   # renewals, as certbot or cert-manager do them
            issued = ca.issue(f"server-{n}")
            shutil.copy(issued.key, key.with_suffix(".new"))
            shutil.copy(issued.cert, cert.with_suffix(".new"))
            key.with_suffix(".new").replace(key)
            cert.with_suffix(".new").replace(cert)
            write_htpasswd(htpasswd, {"ci": "pipeline", "alice": f"new{n}"})
            count = len(statuses)
            assert pc.reload()
            wait_until(lambda: len(statuses) >= count + 10, 30, "load after the reload")
            assert _served_fingerprint(pc.port, ctx) == hashlib.sha256(
                ssl.PEM_cert_to_DER_cert(issued.cert.read_text())).digest()
            for password, status in ((f"new{n}", 200), ("old", 401)):
                login = {"Authorization": basic_auth("alice", password)}
                assert request(pc.url, "/v2/", headers=login, context=ctx).status == status
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    kept.request("GET", "/v2/", headers=ci)   # the connection from before still works
    assert kept.getresponse().status == 200
    assert kept.sock is kept_socket, "http.client had to reconnect: the connection was closed"
    kept.close()
    pc.stop()
    assert not errors, errors[:3]
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_sighup_replaces_upstream_credentials_and_policy(tmp_path, registry_basic):
    reg = registry_basic
    image = build_image("reload-creds", layer_sizes=(10_000,))
    push(reg, "private/app", "v1", image, username=reg.username, password=reg.password)
    up = UpstreamSpec(reg.host, reg.url, reg.username, "wrong", default=True)
    pc = Pullcache(tmp_path / "pc", [up])
    pc.workdir.mkdir()
    pc.start()
    try:
        accept = {"Accept": image.media_type}
        assert request(pc.url, "/v2/private/app/manifests/v1", headers=accept).status == 401
        up.password = reg.password
        up.extra["deny"] = ["private/secret"]
        assert pc.reload()
        r = request(pc.url, "/v2/private/app/manifests/v1", headers=accept)
        assert r.status == 200 and r.body == image.manifest
        assert request(pc.url, "/v2/private/secret/manifests/v1").status == 403
        # Upstreams cannot be added by a reload: refused, and the old config stays.
        pc.upstreams.append(UpstreamSpec("ghcr.io", "https://ghcr.io"))
        assert not pc.reload()
        assert "needs a restart" in pc.events("reload_failed")[-1]["error"]
        assert request(pc.url, "/v2/private/secret/manifests/v1").status == 403
    finally:
        pc.stop()


def _refused(pc: Pullcache, ctx: ssl.SSLContext) -> bool:
    """True if the daemon refuses this client's TLS handshake (TLS 1.3 reports a refused
    client certificate on the first read, as an alert or a reset)."""
    try:
        request(pc.url, "/v2/", context=ctx, timeout=10)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


def test_sighup_turns_mtls_on_rotates_its_ca_and_turns_it_off(tmp_path, registry):
    pki = CA(tmp_path / "pki")
    server = pki.issue("server")
    old_ca, new_ca = CA(tmp_path / "old-ca", "old-clients"), CA(tmp_path / "new-ca", "new-clients")
    old_client = old_ca.issue("old-client", server=False)
    new_client = new_ca.issue("new-client", server=False)
    bare, with_old, with_new = (pki.client_context(), pki.client_context(old_client),
                                pki.client_context(new_client))
    clients_ca = tmp_path / "clients-ca.pem"   # one path, its content replaced (a rotation)
    pc = Pullcache(tmp_path / "pc", [UpstreamSpec(registry.host, registry.url, default=True)],
                   server={"tls_cert": server.cert, "tls_key": server.key})
    pc.workdir.mkdir()
    pc.start()
    try:
        assert request(pc.url, "/v2/", context=bare).status == 200
        kept = http.client.HTTPSConnection("127.0.0.1", pc.port, context=bare, timeout=10)
        kept.request("GET", "/v2/")
        kept_socket = _kept_alive(kept)
        # mTLS turned on: a client without a certificate is refused from now on.
        shutil.copy(old_ca.cert, clients_ca)
        pc.server["tls_client_ca"] = clients_ca
        assert pc.reload()
        assert _refused(pc, bare), "mTLS turned on by SIGHUP, yet no certificate is asked"
        assert request(pc.url, "/v2/", context=with_old).status == 200
        assert pc.events("reloaded")[-1]["tls"] == ["client_ca added"]
        kept.request("GET", "/v2/")   # a connection from before keeps what it was accepted with
        assert kept.getresponse().status == 200
        assert kept.sock is kept_socket, "http.client had to reconnect: the connection was closed"
        kept.close()
        # The CA rotated: only the new one is trusted.
        shutil.copy(new_ca.cert, clients_ca)
        assert pc.reload()
        assert _refused(pc, with_old), "the rotated-out CA is still trusted"
        assert request(pc.url, "/v2/", context=with_new).status == 200
        assert pc.events("reloaded")[-1]["tls"] == ["client_ca replaced"]
        # mTLS turned off: no client certificate is asked.
        del pc.server["tls_client_ca"]
        assert pc.reload()
        assert request(pc.url, "/v2/", context=bare).status == 200
        assert pc.events("reloaded")[-1]["tls"] == ["client_ca removed"]
    finally:
        pc.stop()


# Loaded by the daemon's interpreter before anything else (``sitecustomize``): the public
# listener's accept path breaks on its first connection, as a bug there would.
BROKEN_ACCEPT = """
import os
from pullcache.server import listener

_port = int(os.environ["FAULT_ACCEPT_PORT"])
_serve = listener.Listener._serve


def _broken(self, loop, conn):
    if self.port == _port:
        conn.close()
        raise RuntimeError("injected: the accept path broke")
    return _serve(self, loop, conn)


listener.Listener._serve = _broken
"""


def test_a_lost_accept_loop_exits_non_zero_and_releases_the_cache_lock(tmp_path, registry):
    fault = tmp_path / "fault"
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(BROKEN_ACCEPT)
    pc = Pullcache(tmp_path / "pc", [UpstreamSpec(registry.host, registry.url, default=True)],
                   port=free_port())
    pc.env = {"PYTHONPATH": f"{fault}:{ROOT}", "FAULT_ACCEPT_PORT": str(pc.port)}
    pc.workdir.mkdir()
    pc.start()
    try:
        with socket.create_connection(("127.0.0.1", pc.port), timeout=10):
            try:
                code = pc.proc.wait(15)
            except subprocess.TimeoutExpired:
                pytest.fail("the accept loop died, yet the daemon lives on (holding the lock)")
        assert code != 0
        [failed] = pc.events("task_failed")
        assert failed["task"].startswith("accept ") and "injected" in failed["exception"]
        assert pc.events("serving_lost")
        # The lock went with the process: a new daemon (the service manager's restart) starts.
        CacheLock(pc.cache_dir, "test").acquire().release()
    finally:
        pc.stop()


def test_hardened_unit_rates_ok(tmp_path):
    analyze = require("systemd-analyze")
    unit = ROOT / "systemd" / "pullcache.service"
    proc = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for pullcache\.service: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m[1]) <= 2.0, proc.stdout
    text = Path(unit).read_text()
    for line in ("Type=notify", "DynamicUser=yes", "CapabilityBoundingSet=\n", "UMask=0077",
                 "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "SystemCallFilter=@system-service", "PrivateDevices=yes",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text, line
    # Every directive parses (verify wants ExecStart's binary to exist, so a copy runs true).
    copy = tmp_path / "pullcache.service"
    copy.write_text(re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true", text, flags=re.M))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
