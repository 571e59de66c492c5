"""HTTPS, client authentication, network gates and pull policy, over real sockets.

One pullcache (TLS, htpasswd, a per-upstream policy) in front of the real anonymous
registry, spoken to with Python's ``ssl``/``http.client`` trusting the test CA: the cases no
real client can express (a chosen TLS version, counting 429s, a byte-identical 403 whether
or not the content is cached). ``[access]`` changes between tests go through SIGHUP.
"""

from __future__ import annotations

import http.client
import socket
import ssl

import pytest

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.http import basic_auth, request
from tests.support.images import build_image, push
from tests.support.ports import wait_until
from tests.support.tls import CA, write_htpasswd

OCI_M = "application/vnd.oci.image.manifest.v1+json"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": basic_auth(user, password), "Accept": OCI_M}


ALICE = basic("alice", "wonderland")
CI = basic("ci", "pipeline")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = CA(tmp_path_factory.mktemp("pki"))
    return {"ca": ca, "server": ca.issue("server"), "client": ca.issue("client", server=False)}


@pytest.fixture(scope="module")
def secure(tmp_path_factory, registry, pki):
    image = build_image("access-img", layer_sizes=(50_000,))
    push(registry, "library/open", "v1", image)
    push(registry, "myorg/secret-db", "v1", image)
    push(registry, "team/app", "v1", image)
    workdir = tmp_path_factory.mktemp("secure")
    htpasswd = write_htpasswd(workdir / "htpasswd", {"alice": "wonderland", "ci": "pipeline"})
    pc = Pullcache(
        workdir, [UpstreamSpec("docker.io", registry.url, default=True,
                               extra={"allow": ["library/*", "myorg/**", "team/*"],
                                      "deny": ["myorg/secret-*"]})],
        server={"tls_cert": pki["server"].cert, "tls_key": pki["server"].key},
        access={"htpasswd": htpasswd, "max_failures": 3, "failure_window": "10m"})
    pc.start()
    yield {"pc": pc, "image": image, "ctx": pki["ca"].client_context(), "htpasswd": htpasswd}
    pc.stop()


def get(world, path: str, headers=None, **kw):
    return request(world["pc"].url, path, headers=headers, context=world["ctx"], **kw)


@pytest.fixture
def access(secure):
    """Change [access] for one test (SIGHUP), and put it back afterwards."""
    pc = secure["pc"]
    saved = dict(pc.access)

    def change(**keys):
        pc.access.update(keys)
        assert pc.reload()
    yield change
    if pc.access != saved:
        pc.access.clear()
        pc.access.update(saved)
        assert pc.reload()


def test_https_only_tls12_and_later(secure, pki):
    pc = secure["pc"]
    assert pc.url.startswith("https://")
    r = get(secure, "/v2/", ALICE)
    assert r.status == 200
    assert "aiohttp" not in r.headers.get("server", "") and "Python" not in r.headers["server"]
    old = pki["ca"].client_context()
    with pytest.warns(DeprecationWarning):   # as it should be
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(pc.url, "/v2/", context=old)
    # Plain HTTP on the TLS port is not answered as HTTP: the connection closes at once
    # (not a timeout, not a response).
    with pytest.raises(http.client.RemoteDisconnected):
        request(pc.url.replace("https", "http"), "/v2/", timeout=5)


@pytest.mark.parametrize("path", ["/v2/", "/v2/library/open/manifests/v1",
                                  "/v2/library/open/tags/list",
                                  "/v2/nothing/blobs/sha256:" + "0" * 64])
def test_no_credentials_is_401_with_the_basic_challenge(secure, path):
    r = get(secure, path)
    assert r.status == 401
    assert r.headers["www-authenticate"] == 'Basic realm="pullcache"'
    assert r.error_codes == ["UNAUTHORIZED"]


def test_wrong_password_is_401_and_right_one_pulls(secure):
    assert get(secure, "/v2/library/open/manifests/v1", basic("alice", "nope")).status == 401
    assert get(secure, "/v2/library/open/manifests/v1", basic("mallory", "x")).status == 401
    r = get(secure, "/v2/library/open/manifests/v1", ALICE)
    assert r.status == 200 and r.sha256 == secure["image"].digest
    wait_until(lambda: [e for e in secure["pc"].events("request")
                        if e["status"] == 200][-1]["user"] == "alice", 10, "the access line")
    assert "wonderland" not in secure["pc"].log()


def test_denied_repository_is_403_and_reveals_nothing_cached(secure, registry):
    pc = secure["pc"]
    # myorg/secret-db is in the upstream, and its manifest's digest is cached (via open).
    assert get(secure, f"/v2/library/open/manifests/{secure['image'].digest}", ALICE).status == 200
    cached = get(secure, f"/v2/myorg/secret-db/manifests/{secure['image'].digest}", ALICE)
    missing = get(secure, "/v2/myorg/secret-db/manifests/sha256:" + "1" * 64, ALICE)
    other = get(secure, "/v2/other/app/manifests/v1", ALICE)   # not in allow
    for r in (cached, missing, other):
        assert r.status == 403 and r.error_codes == ["DENIED"]
    assert cached.json()["errors"][0]["message"] == missing.json()["errors"][0]["message"]
    assert "denied by policy" in cached.json()["errors"][0]["message"]
    assert "not in the allowed" in other.json()["errors"][0]["message"]
    assert pc.metric("pullcache_requests_total", outcome="denied") >= 3
    assert get(secure, "/v2/myorg/team/app/manifests/v1", ALICE).status == 404   # ** allowed


def test_users_limit_an_upstream(secure, access):
    pc = secure["pc"]
    pc.upstreams[0].extra["users"] = ["ci"]
    try:
        assert pc.reload()
        assert get(secure, "/v2/team/app/manifests/v1", ALICE).status == 403
        assert get(secure, "/v2/team/app/manifests/v1", CI).status == 200
    finally:
        del pc.upstreams[0].extra["users"]
        assert pc.reload()


def test_address_outside_allow_networks_is_403_before_anything(secure, access):
    access(allow_networks=["10.0.0.0/8", "::1/128"])
    for headers in (None, ALICE):
        r = get(secure, "/v2/library/open/manifests/v1", headers)
        assert r.status == 403 and r.error_codes == ["DENIED"]


def test_anonymous_networks_pull_and_ignore_unknown_credentials(secure, access):
    access(anonymous_networks=["127.0.0.0/8"])
    pc = secure["pc"]
    hub_login = basic("dockerhub-user", "dckr_pat_SECRET")   # moby#42022
    before = len(pc.events("request"))
    for headers in ({"Accept": OCI_M}, hub_login, basic("alice", "wrong"), ALICE):
        r = get(secure, "/v2/library/open/manifests/v1", headers)
        assert r.status == 200, r.body
    # The access line is written once the response is sent: wait for it.
    wait_until(lambda: len(pc.events("request")) >= before + 4, 10, "the access lines")
    assert [e["user"] for e in pc.events("request")][-4:] == ["anonymous"] * 3 + ["alice"]
    assert "dckr_pat_SECRET" not in pc.log() and "dockerhub-user" not in pc.log()


def test_failed_logins_are_rate_limited_per_address(secure, access):
    access(max_failures=2)   # a reload also starts the count afresh
    assert get(secure, "/v2/", ALICE).status == 200
    statuses = [get(secure, "/v2/", basic("alice", f"guess{i}")).status for i in range(4)]
    assert statuses == [401, 401, 429, 429]
    r = get(secure, "/v2/", basic("alice", "guess9"))
    assert r.error_codes == ["TOOMANYREQUESTS"] and int(r.headers["retry-after"]) > 0
    # Credentials already verified are remembered: they still work while the address waits.
    assert get(secure, "/v2/", ALICE).status == 200


def test_a_bad_reload_is_logged_and_changes_nothing(secure, access, tmp_path):
    pc = secure["pc"]
    bad = tmp_path / "htpasswd"
    bad.write_text("alice:{SHA}notbcrypt\n")
    pc.access["htpasswd"] = bad
    try:
        assert not pc.reload()
        assert "not a bcrypt entry" in pc.events("reload_failed")[-1]["error"]
        assert get(secure, "/v2/", ALICE).status == 200
        assert get(secure, "/v2/").status == 401
    finally:
        pc.access["htpasswd"] = secure["htpasswd"]
        assert pc.reload()


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, registry, pki):
    pc = Pullcache(tmp_path_factory.mktemp("mtls"), [UpstreamSpec("docker.io", registry.url,
                                                                  default=True)],
                   server={"tls_cert": pki["server"].cert, "tls_key": pki["server"].key,
                           "tls_client_ca": pki["ca"].cert})
    yield pc.start()
    pc.stop()


def test_mtls_refuses_a_handshake_without_a_client_certificate(mtls, pki):
    ca = pki["ca"]
    assert request(mtls.url, "/v2/", context=ca.client_context(pki["client"])).status == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(mtls.url, "/v2/", context=ca.client_context())
    stranger = CA(pki["ca"].dir / "other", "another-ca").issue("stranger", server=False)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(mtls.url, "/v2/", context=ca.client_context(stranger))


def test_no_server_version_even_on_malformed_requests(secure):
    r = request(secure["pc"].admin_url, "/readyz")
    assert r.status == 200 and r.headers["server"] == "pullcache"
    # aiohttp answers these itself, before any app runs.
    with socket.create_connection(("127.0.0.1", secure["pc"].admin_port)) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.") and " 400 " in head.splitlines()[0]
    assert "server: pullcache" in head.lower() and "aiohttp" not in head.lower()


def test_blobs_over_tls_are_intact_from_a_fill_and_from_the_cache(secure, registry):
    """sendfile(2) would write plaintext under the TLS stream: under TLS the bytes go
    through the TLS transport (a regression test: skopeo saw 'oversized record')."""
    image = build_image("tls-blob", layer_sizes=(3 * 1024 * 1024,))
    push(registry, "team/blob", "v1", image)
    layer = image.layers[0]
    for _ in range(2):   # the fill's tail, then the committed file
        r = get(secure, f"/v2/team/blob/blobs/{layer.digest}", ALICE)
        assert r.status == 200 and r.sha256 == layer.digest
    r = get(secure, f"/v2/team/blob/blobs/{layer.digest}", {**ALICE, "Range": "bytes=100-"})
    assert r.status == 206 and len(r.body) == layer.size - 100


def test_a_refused_pull_never_reaches_the_upstream(make_pullcache, fault_proxy, registry):
    """Policy is decided before the cache or the upstream is asked: the upstream (behind a
    counting proxy) sees nothing of a denied repository, whatever the endpoint."""
    image = build_image("never-upstream", layer_sizes=(10_000,))
    push(registry, "team/secret-x", "v1", image)
    pc = make_pullcache(UpstreamSpec("docker.io", fault_proxy.url,
                                     extra={"deny": ["team/secret-*"]}))
    before = fault_proxy.count()
    for path in ("manifests/v1", f"manifests/{image.digest}", "tags/list",
                 f"blobs/{image.layers[0].digest}", f"referrers/{image.digest}"):
        for method in ("GET", "HEAD"):
            r = request(pc.url, f"/v2/team/secret-x/{path}", method=method)
            assert r.status == 403, (method, path, r.status)
    assert fault_proxy.count() == before
    assert pc.metric("pullcache_requests_total", outcome="denied") == 10
