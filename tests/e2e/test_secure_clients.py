"""Real clients against a secured pullcache: HTTPS with the test CA in each client's own trust
configuration (no insecure flag anywhere), mTLS, htpasswd logins and a pull policy.

One pullcache serves them all: TLS with ``tls_client_ca`` (every client presents a client
certificate unless the case is about not having one), an htpasswd file (alice/wonderland),
and a Docker Hub upstream (a real Distribution registry) denying ``myorg/secret-*``. Cases
that need another ``[access]`` (``allow_networks`` without 127.0.0.1, dockerd's anonymous
network) reload it with SIGHUP. Each client is checked for: a good pull (digest), a wrong
password (401), no credentials (401), a denied repository (403), an address outside
``allow_networks`` (403) and a handshake without a client certificate (refused). What a
client cannot express is said at its test; tests/integration/test_access.py covers it with
Python's ssl.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.binaries import require
from tests.support.clients import DEAD, Dockerd, tail
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.http import basic_auth, request
from tests.support.images import build_image, push
from tests.support.ports import wait_until
from tests.support.tls import CA, write_htpasswd

USER, PASSWORD = "alice", "wonderland"


@pytest.fixture(scope="module")
def world(tmp_path_factory, registry):
    pki = tmp_path_factory.mktemp("pki")
    ca = CA(pki)
    server, client = ca.issue("server"), ca.issue("client", server=False)
    tiny = build_image("secure-tiny", layer_sizes=(60_000,))
    push(registry, "library/tiny", "v1", tiny)
    push(registry, "library/other", "v1", tiny)
    push(registry, "myorg/secret-db", "v1", tiny)
    workdir = tmp_path_factory.mktemp("secure-e2e")
    htpasswd = write_htpasswd(workdir / "htpasswd", {USER: PASSWORD})
    pc = Pullcache(workdir, [UpstreamSpec("docker.io", registry.url, default=True,
                                          extra={"deny": ["myorg/secret-*"]})],
                   server={"tls_cert": server.cert, "tls_key": server.key,
                           "tls_client_ca": ca.cert},
                   access={"htpasswd": htpasswd})
    pc.start()
    yield {"pc": pc, "ca": ca, "client": client, "tiny": tiny}
    pc.stop()


@contextlib.contextmanager
def access(pc: Pullcache, **keys):
    """``[access]`` changed for the block (SIGHUP), then put back."""
    saved = dict(pc.access)
    pc.access.update(keys)
    assert pc.reload()
    try:
        yield
    finally:
        pc.access.clear()
        pc.access.update(saved)
        assert pc.reload()


def statuses(pc: Pullcache, since: int, agent: str) -> list[int]:
    return [r["status"] for r in pc.events("request")[since:]
            if agent in (r.get("user_agent") or "")]


def saw(pc: Pullcache, since: int, agent: str, status: int) -> None:
    """The access line is written once the answer is sent: wait for it."""
    wait_until(lambda: status in statuses(pc, since, agent), 10,
               f"a {status} to {agent} in the access log")


def handshake_refused(text: str, host: str) -> bool:
    """How a Go client reports that pullcache (``host``) refused its certificate-less
    handshake: under TLS 1.3 the server's refusal arrives after the client's Finished, so
    the request to pullcache's own URL ends in an EOF, a reset, or the certificate_required
    alert. A trust failure (x509: …), a refused connection or the fallback's error do not
    match."""
    return re.search(rf'"https://{re.escape(host)}/[^"]*": (EOF|read tcp \S+->\S+: read: '
                     r'connection reset by peer|remote error: tls: certificate required)',
                     text) is not None


def no_request_since(world, pc: Pullcache, since: int, agent: str) -> list[int]:
    """The statuses of ``agent``'s requests logged since ``since``, read only once a later
    marker request's access line is written: an access line is written after its answer
    is sent, so one for anything the client sent before the marker is there by then."""
    marker = f"marker/{uuid.uuid4()}"
    r = request(pc.url, "/v2/", headers={"Authorization": basic_auth(USER, PASSWORD),
                                         "User-Agent": marker},
                context=world["ca"].client_context(world["client"]))
    assert r.status == 200, r.body
    saw(pc, since, marker, 200)
    return statuses(pc, since, agent)


def cert_dir(world, path: Path, *, client: bool = True, client_names=("client.cert",
                                                                      "client.key")) -> Path:
    """containers/image and dockerd layout: ``ca.crt``, ``client.cert``, ``client.key``."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(world["ca"].cert, path / "ca.crt")
    if client:
        shutil.copy(world["client"].cert, path / client_names[0])
        shutil.copy(world["client"].key, path / client_names[1])
    return path


def auth_json(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


# -- skopeo ------------------------------------------------------------------------------------

def skopeo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    require("skopeo")
    empty = tmp_path / "no-auth.json"
    empty.write_text('{"auths": {}}')
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "REGISTRY_AUTH_FILE": str(empty)})


def test_skopeo(world, tmp_path):
    pc, host = world["pc"], world["pc"].host
    certs = cert_dir(world, tmp_path / "certs")
    ref = f"docker://{host}/library/tiny:v1"
    # Good: --creds, and an auth.json for the mirror host.
    out = skopeo(tmp_path, "inspect", "--cert-dir", str(certs), "--creds",
                 f"{USER}:{PASSWORD}", ref)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Digest"] == world["tiny"].digest
    authfile = auth_json(tmp_path / "auth.json", host, USER, PASSWORD)
    dest = tmp_path / "oci"
    out = skopeo(tmp_path, "copy", "--src-cert-dir", str(certs), "--src-authfile",
                 str(authfile), "--preserve-digests", ref, f"oci:{dest}:v1")
    assert out.returncode == 0, out.stderr
    since = len(pc.events("request"))
    out = skopeo(tmp_path, "inspect", "--cert-dir", str(certs), "--creds", f"{USER}:wrong", ref)
    assert out.returncode != 0
    saw(pc, since, "skopeo", 401)
    since = len(pc.events("request"))
    out = skopeo(tmp_path, "inspect", "--cert-dir", str(certs), ref)   # no credentials
    assert out.returncode != 0
    saw(pc, since, "skopeo", 401)
    since = len(pc.events("request"))
    out = skopeo(tmp_path, "inspect", "--cert-dir", str(certs), "--creds",
                 f"{USER}:{PASSWORD}", f"docker://{host}/myorg/secret-db:v1")
    assert out.returncode != 0 and "denied" in out.stderr.lower(), out.stderr
    saw(pc, since, "skopeo", 403)
    with access(pc, allow_networks=["10.0.0.0/8"]):
        since = len(pc.events("request"))
        out = skopeo(tmp_path, "inspect", "--cert-dir", str(certs), "--creds",
                     f"{USER}:{PASSWORD}", ref)
        assert out.returncode != 0
        saw(pc, since, "skopeo", 403)
    since = len(pc.events("request"))
    no_client = cert_dir(world, tmp_path / "certs-ca-only", client=False)
    out = skopeo(tmp_path, "inspect", "--cert-dir", str(no_client), "--creds",
                 f"{USER}:{PASSWORD}", ref)
    assert out.returncode != 0 and handshake_refused(out.stderr, host), out.stderr
    assert no_request_since(world, pc, since, "skopeo") == []   # refused at the handshake


# -- podman ------------------------------------------------------------------------------------

def test_podman_registries_conf_mirror_with_auth_json(world, podman, tmp_path):
    pc, host = world["pc"], world["pc"].host
    conf = tmp_path / "registries.conf"
    conf.write_text(f'unqualified-search-registries = []\n\n[[registry]]\nprefix = "docker.io"\n'
                    f'location = "{DEAD}"\n[[registry.mirror]]\nlocation = "{host}"\n')
    certs = cert_dir(world, tmp_path / "certs")
    good = auth_json(tmp_path / "auth.json", host, USER, PASSWORD)
    bad = auth_json(tmp_path / "bad.json", host, USER, "wrong")
    none = tmp_path / "none.json"
    none.write_text('{"auths": {}}')

    def pull(ref: str, authfile: Path, cert: Path = certs) -> subprocess.CompletedProcess:
        return podman.attempt(conf, "pull", "--cert-dir", str(cert), "--authfile",
                              str(authfile), ref, env={"REGISTRY_AUTH_FILE": str(none)})
    agent = "containers/"
    since = len(pc.events("request"))
    assert pull("docker.io/library/tiny:v1", bad).returncode != 0
    saw(pc, since, agent, 401)
    since = len(pc.events("request"))
    assert pull("docker.io/library/tiny:v1", none).returncode != 0
    saw(pc, since, agent, 401)
    since = len(pc.events("request"))
    assert pull("docker.io/myorg/secret-db:v1", good).returncode != 0
    saw(pc, since, agent, 403)
    with access(pc, allow_networks=["10.0.0.0/8"]):
        since = len(pc.events("request"))
        assert pull("docker.io/library/tiny:v1", good).returncode != 0
        saw(pc, since, agent, 403)
    since = len(pc.events("request"))
    out = pull("docker.io/library/tiny:v1", good, cert_dir(world, tmp_path / "ca-only",
                                                           client=False))
    assert out.returncode != 0 and handshake_refused(out.stderr, host), out.stderr
    assert no_request_since(world, pc, since, agent) == []
    out = pull("docker.io/library/tiny:v1", good)
    assert out.returncode == 0, out.stderr
    digest = podman.run(conf, "image", "inspect", "--format", "{{.Digest}}",
                        "docker.io/library/tiny:v1")
    assert digest.strip() == world["tiny"].digest


# -- containerd (ctr) --------------------------------------------------------------------------

def hosts_toml(world, base: Path, *, password: str | None = PASSWORD,
               client: bool = True) -> Path:
    """``certs.d/docker.io/hosts.toml``: the mirror with ``ca``, ``client`` and a static
    ``Authorization`` header (containerd's way to send credentials to a mirror)."""
    host = world["pc"].host
    lines = [f'server = "http://{DEAD}"', "", f'[host."https://{host}"]',
             '  capabilities = ["pull", "resolve"]', f'  ca = "{world["ca"].cert}"']
    if client:
        lines.append(f'  client = [["{world["client"].cert}", "{world["client"].key}"]]')
    if password is not None:
        lines += [f'  [host."https://{host}".header]',
                  f'    Authorization = "{basic_auth(USER, password)}"']
    (base / "docker.io").mkdir(parents=True, exist_ok=True)
    (base / "docker.io" / "hosts.toml").write_text("\n".join(lines) + "\n")
    return base


def test_ctr_hosts_toml_with_ca_client_and_authorization(world, containerd, tmp_path):
    pc = world["pc"]

    def pull(hosts: Path, ref: str = "docker.io/library/tiny:v1"
             ) -> subprocess.CompletedProcess:
        return containerd.attempt("images", "pull", "--hosts-dir", str(hosts), "--snapshotter",
                                  "native", ref, timeout=120)

    def refused(hosts: Path, status: int, ref: str = "docker.io/library/tiny:v1") -> None:
        since = len(pc.events("request"))
        out = pull(hosts, ref)
        assert out.returncode != 0, out.stdout + out.stderr   # the pull failed ...
        saw(pc, since, agent, status)                         # ... on pullcache's answer
    agent = "containerd"
    refused(hosts_toml(world, tmp_path / "wrong", password="wrong"), 401)
    refused(hosts_toml(world, tmp_path / "none", password=None), 401)
    good = hosts_toml(world, tmp_path / "good")
    refused(good, 403, "docker.io/myorg/secret-db:v1")
    with access(pc, allow_networks=["10.0.0.0/8"]):
        refused(good, 403)
    since = len(pc.events("request"))
    out = pull(hosts_toml(world, tmp_path / "no-client", client=False))
    assert out.returncode != 0 and handshake_refused(out.stderr, pc.host), out.stderr
    assert no_request_since(world, pc, since, agent) == []
    with pytest.raises(AssertionError):
        containerd.image_digest("docker.io/library/tiny:v1")   # nothing pulled so far
    out = pull(good)
    assert out.returncode == 0 and "unpacking" in out.stdout + out.stderr, out.stderr
    assert containerd.image_digest("docker.io/library/tiny:v1") == world["tiny"].digest


# -- dockerd ---------------------------------------------------------------------------------

def test_dockerd_mirror_over_tls_from_an_anonymous_network(world, registry, containerd,
                                                           tmp_path):
    """dockerd cannot send credentials to a mirror: it is the anonymous-network client, and
    its Docker Hub login (which it forwards to mirrors, moby#42022) is ignored. Its wrong
    password case is ``docker login`` to pullcache as a registry, over the same TLS.

    dockerd treats 127.0.0.0/8 as an insecure registry, always (no TLS verification and no
    client certificate), so this pullcache listens on ``[::1]``, where dockerd verifies
    against ``certs.d/[::1]:<port>/ca.crt`` and presents ``client.cert``.
    """
    pc = Pullcache(tmp_path / "pc", [UpstreamSpec("docker.io", registry.url, default=True,
                                                  extra={"deny": ["myorg/secret-*"]})],
                   server=dict(world["pc"].server), access={**world["pc"].access,
                                                            "anonymous_networks": ["::1/128"]},
                   listen_host="::1")
    pc.workdir.mkdir()
    pc.start()
    host = pc.host
    etc = tmp_path / "etc-docker"
    certs = cert_dir(world, etc / "certs.d" / host)
    config = tmp_path / "docker-config"
    config.mkdir()
    hub = base64.b64encode(b"hubuser:dckr_pat_HUBSECRET").decode()
    (config / "config.json").write_text(json.dumps(
        {"auths": {"https://index.docker.io/v1/": {"auth": hub}}}))
    daemon = Dockerd(tmp_path / "dockerd", host, containerd, scheme="https", etc_docker=etc,
                     env={"DOCKER_CONFIG": str(config)})
    daemon.workdir.mkdir()
    agent = "docker/"
    daemon.start()
    try:
        since = len(pc.events("request"))
        daemon.docker("pull", "tiny:v1")
        _, out = daemon.docker("image", "inspect", "--format", "{{index .RepoDigests 0}}",
                               "tiny:v1")
        assert out.strip() == f"tiny@{world['tiny'].digest}"
        saw(pc, since, agent, 200)
        assert {r["user"] for r in pc.events("request")[since:]
                if agent in (r.get("user_agent") or "")} == {"anonymous"}
        assert "HUBSECRET" not in pc.log() and "hubuser" not in pc.log()
        since = len(pc.events("request"))
        assert daemon.docker("pull", "myorg/secret-db:v1", check=False)[0] != 0
        saw(pc, since, agent, 403)
        daemon.docker("rmi", "tiny:v1")
        with access(pc, anonymous_networks=[]):   # dockerd is no longer anonymous
            since = len(pc.events("request"))
            assert daemon.docker("pull", "tiny:v1", check=False)[0] != 0
            saw(pc, since, agent, 401)
            # docker login to pullcache itself: a wrong password is a 401, the right one
            # succeeds. (A pull by pullcache's own name cannot follow: docker 20.10's
            # reference grammar has no IPv6 literals.)
            code, out = _login(daemon, host, "wrong")
            assert code != 0 and ("401" in out or "unauthorized" in out.lower()), out
            code, out = _login(daemon, host, PASSWORD)
            assert code == 0, out
        with access(pc, allow_networks=["10.0.0.0/8"]):
            since = len(pc.events("request"))
            assert daemon.docker("pull", "tiny:v1", check=False)[0] != 0
            saw(pc, since, agent, 403)
        (certs / "client.cert").unlink()   # dockerd reads certs.d for every pull
        (certs / "client.key").unlink()
        since = len(pc.events("request"))
        code, out = daemon.docker("pull", "tiny:v1", check=False)
        assert code != 0
        assert handshake_refused(tail(daemon.workdir / "dockerd.log", 30), host), out
        assert no_request_since(world, pc, since, agent) == []
    finally:
        daemon.stop()
        pc.stop()


def _login(daemon: Dockerd, host: str, password: str) -> tuple[int, str]:
    proc = subprocess.run(["docker", "-H", f"unix://{daemon.socket}", "login", "-u", USER,
                           "--password-stdin", host], input=password, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/local/bin:/usr/bin:/bin",
                                                      **daemon.env})
    return proc.returncode, proc.stdout + proc.stderr
