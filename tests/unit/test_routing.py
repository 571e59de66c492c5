"""pullcache.gate.routing: which upstream and repository a pull request is for."""

from __future__ import annotations

import pytest

from pullcache.errors import BlobUploadUnknown, NameInvalid, NameUnknown, NotFound
from pullcache.gate.routing import Route, Target, UpstreamTable, looks_like_host, resolve

DIGEST = "sha256:" + "ab" * 32

TABLE = UpstreamTable(
    [("docker.io", ("index.docker.io", "registry-1.docker.io")),
     ("ghcr.io", ()),
     ("localhost:5000", ("registry.local",))],
    default="docker.io")


def route(tail: str, **kw) -> Route:
    return resolve(TABLE, tail, **kw).route


# --- the four shapes, in their order ----------------------------------------------------------

def test_default_upstream_classic_dockerd():
    assert resolve(TABLE, "library/alpine/manifests/3.20") == Target(
        Route("docker.io", "library/alpine", None), "manifests", "3.20")


def test_ns_query_containerd():
    assert resolve(TABLE, "o/app/manifests/1", ns="ghcr.io") == Target(
        Route("ghcr.io", "o/app", "ghcr.io"), "manifests", "1")


def test_host_path_prefix_dockerd_25():
    assert route("o/app/manifests/1", prefix="ghcr.io") == Route("ghcr.io", "o/app", "ghcr.io")


def test_host_path_prefix_with_ns_containerd_without_override_path():
    assert route("o/app/manifests/1", prefix="ghcr.io", ns="ghcr.io") == Route(
        "ghcr.io", "o/app", "ghcr.io")


def test_host_in_name_podman_location_prefix():
    assert route("ghcr.io/o/app/manifests/1") == Route("ghcr.io", "o/app", "ghcr.io")


def test_host_in_name_with_ns_containerd_override_path():
    assert route("ghcr.io/o/app/manifests/1", ns="ghcr.io") == Route("ghcr.io", "o/app", "ghcr.io")


def test_ns_wins_over_the_path_prefix():
    assert route("o/app/manifests/1", prefix="docker.io", ns="ghcr.io") == Route(
        "ghcr.io", "o/app", "ghcr.io")


def test_host_with_port_in_name():
    assert resolve(TABLE, f"localhost:5000/team/tool/blobs/{DIGEST}") == Target(
        Route("localhost:5000", "team/tool", "localhost:5000"), "blobs", DIGEST)


def test_empty_ns_is_no_ns():
    assert route("o/app/manifests/1", ns="") == Route("docker.io", "o/app", None)


# --- aliases ----------------------------------------------------------------------------------

@pytest.mark.parametrize("ns", ["index.docker.io", "registry-1.docker.io", "DOCKER.IO"])
def test_aliases_and_case_map_to_the_configured_host_and_namespace_is_echoed(ns):
    assert route("alpine/manifests/latest", ns=ns) == Route("docker.io", "library/alpine", ns)


def test_alias_in_path_prefix_and_in_name():
    assert route("tool/manifests/1", prefix="registry.local") == Route(
        "localhost:5000", "tool", "registry.local")
    assert route("registry.local/tool/manifests/1") == Route(
        "localhost:5000", "tool", "registry.local")


# --- docker.io library/ normalisation ------------------------------------------------------------

@pytest.mark.parametrize("tail, kw", [
    ("alpine/manifests/latest", {}),
    ("alpine/manifests/latest", {"ns": "docker.io"}),
    ("alpine/manifests/latest", {"prefix": "docker.io"}),
    ("docker.io/alpine/manifests/latest", {}),
    ("index.docker.io/alpine/manifests/latest", {}),
])
def test_docker_hub_single_component_names_gain_library(tail, kw):
    assert route(tail, **kw).repo == "library/alpine"


def test_docker_hub_multi_component_names_are_kept():
    assert route("bitnami/redis/manifests/7").repo == "bitnami/redis"
    assert route("library/alpine/manifests/3").repo == "library/alpine"


@pytest.mark.parametrize("tail, kw", [
    ("app/manifests/1", {"ns": "ghcr.io"}),
    ("app/manifests/1", {"prefix": "ghcr.io"}),
    ("ghcr.io/app/manifests/1", {}),
    ("localhost:5000/app/manifests/1", {}),
])
def test_no_library_prefix_for_other_upstreams(tail, kw):
    assert route(tail, **kw).repo == "app"


def test_no_library_prefix_when_the_default_is_not_docker_hub():
    table = UpstreamTable([("ghcr.io", ())], default="ghcr.io")
    assert resolve(table, "app/manifests/1").route == Route("ghcr.io", "app", None)


# --- refusals ---------------------------------------------------------------------------------

def test_unknown_ns_is_name_unknown():
    with pytest.raises(NameUnknown) as info:
        resolve(TABLE, "o/app/manifests/1", ns="quay.io")
    assert info.value.status == 404 and info.value.code == "NAME_UNKNOWN"


def test_unknown_path_prefix_is_name_unknown():
    with pytest.raises(NameUnknown):
        resolve(TABLE, "o/app/manifests/1", prefix="quay.io")


@pytest.mark.parametrize("tail", [
    "quay.io/o/app/manifests/1",
    "localhost/o/app/manifests/1",
    "localhost:5001/o/app/manifests/1",
    "registry:5000/o/app/manifests/1",
])
def test_unknown_host_in_name_is_name_unknown(tail):
    with pytest.raises(NameUnknown):
        resolve(TABLE, tail)


@pytest.mark.parametrize("tail, kw", [
    ("Alpine/manifests/latest", {}),
    ("o/App/manifests/1", {"ns": "ghcr.io"}),
    ("ghcr.io/o/-app/manifests/1", {}),
    ("a//b/manifests/1", {}),
    ("a..b/manifests/1", {}),
    ("/".join(["abcdefghi"] * 26) + "/manifests/1", {}),
])
def test_invalid_names_are_name_invalid(tail, kw):
    with pytest.raises(NameInvalid):
        resolve(TABLE, tail, **kw)


def test_name_length_cap():
    # 255 characters is the cap for the name as the client sent it (MAX_NAME_LENGTH).
    assert route("a" * 255 + "/manifests/1", ns="ghcr.io").repo == "a" * 255
    with pytest.raises(NameInvalid):
        resolve(TABLE, "a" * 256 + "/manifests/1", ns="ghcr.io")


@pytest.mark.parametrize("tail", [
    "library/alpine",
    "_catalog",
    "alpine/manifests/",
    "alpine/manifests",
    "alpine/tags/list/extra",
    "alpine/tags",
    "alpine/manifests/a/b",
    "manifests/latest",
    "",
])
def test_non_endpoints_are_not_found(tail):
    with pytest.raises(NotFound):
        resolve(TABLE, tail)


@pytest.mark.parametrize("tail", ["alpine/blobs/uploads/", "alpine/blobs/uploads/abc-123"])
def test_upload_sessions_are_unknown(tail):
    # end-13 (GET /v2/<name>/blobs/uploads/<reference>) fails with 404; none exist here.
    with pytest.raises(BlobUploadUnknown):
        resolve(TABLE, tail)


# --- endpoint kinds ---------------------------------------------------------------------------

@pytest.mark.parametrize("tail, kind, reference", [
    ("o/app/manifests/1.0", "manifests", "1.0"),
    (f"o/app/manifests/{DIGEST}", "manifests", DIGEST),
    (f"o/app/blobs/{DIGEST}", "blobs", DIGEST),
    ("o/app/tags/list", "tags", ""),
    (f"o/app/referrers/{DIGEST}", "referrers", DIGEST),
])
def test_endpoint_kinds(tail, kind, reference):
    target = resolve(TABLE, tail, ns="ghcr.io")
    assert (target.route.repo, target.kind, target.reference) == ("o/app", kind, reference)


def test_repositories_named_like_endpoints():
    assert resolve(TABLE, "org/blobs/manifests/1", ns="ghcr.io") == Target(
        Route("ghcr.io", "org/blobs", "ghcr.io"), "manifests", "1")
    assert resolve(TABLE, "org/manifests/tags/list", ns="ghcr.io") == Target(
        Route("ghcr.io", "org/manifests", "ghcr.io"), "tags", "")


# --- looks_like_host ------------------------------------------------------------------------------

@pytest.mark.parametrize("component", [
    "docker.io", "ghcr.io", "localhost", "localhost:5000", "registry:5000", "127.0.0.1",
    "127.0.0.1:5000", "my-registry.example.com:443", "a.b",
])
def test_looks_like_host(component):
    assert looks_like_host(component)


@pytest.mark.parametrize("component", [
    "", "library", "alpine", "my-org", "my_registry.io", "localhost:", ":5000", "foo:bar",
    "a.", ".a", "local_host",
])
def test_does_not_look_like_host(component):
    assert not looks_like_host(component)


# --- known defect -------------------------------------------------------------------------------

GCR = UpstreamTable([("docker.io", ()), ("gcr.io", ())], default="docker.io")


@pytest.mark.parametrize("kw", [{"ns": "gcr.io"}, {"prefix": "gcr.io"}])
def test_domain_scoped_repository_under_an_explicit_upstream(kw):
    tail = "google.com/cloudsdktool/cloud-sdk/manifests/latest"
    assert resolve(GCR, tail, **kw).route == Route(
        "gcr.io", "google.com/cloudsdktool/cloud-sdk", "gcr.io")
