"""Real clients pulling through one pullcache from two real upstream registries.

``docker.io`` is served by an anonymous Distribution registry and ``ghcr.io`` by a
token-auth one; the clients believe they talk to Docker Hub and GHCR, and their real
upstream is a dead loopback port, so every byte must come through pullcache.
"""

from __future__ import annotations

import pytest

from tests.support.clients import Dockerd
from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.faultproxy import FaultProxy
from tests.support.images import build_image, build_index, push

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory, registry, registry_token):
    """Images on both upstreams, and one pullcache routing docker.io and ghcr.io."""
    tiny = build_image("e2e-tiny", layer_sizes=(200_000, 50_000))
    multi = build_index([build_image("e2e-multi-amd64", arch="amd64"),
                         build_image("e2e-multi-arm64", arch="arm64")])
    app = build_image("e2e-ghcr-app", layer_sizes=(120_000,), docker=True)
    resume = build_image("e2e-resume", layer_sizes=(6 * MiB,))   # a real gzip tar layer
    push(registry, "library/tiny", "v1", tiny)
    push(registry, "library/multi", "v1", multi)
    push(registry, "library/resume", "v1", resume)
    push(registry_token, "o/app", "1", app, username="alice", password="s3cret")
    workdir = tmp_path_factory.mktemp("e2e-pullcache")
    pc = Pullcache(workdir, [
        UpstreamSpec("docker.io", registry.url, default=True,
                     extra={"aliases": ["index.docker.io", "registry-1.docker.io"]}),
        UpstreamSpec("ghcr.io", registry_token.url, "alice", "s3cret")]).start()
    yield {"pc": pc, "tiny": tiny, "multi": multi, "app": app, "resume": resume}
    pc.stop()


def requests_from(pc: Pullcache, agent: str) -> list[dict]:
    return [r for r in pc.events("request") if agent in (r.get("user_agent") or "")]


def test_ctr_pulls_docker_io_and_ghcr_io_through_ns(world, containerd):
    pc = world["pc"]
    hosts = containerd.hosts_dir("hosts-default", pc.host)   # certs.d/_default/hosts.toml
    for ref, image in (("docker.io/library/tiny:v1", world["tiny"]),
                       ("ghcr.io/o/app:1", world["app"]),
                       ("docker.io/library/multi:v1", world["multi"])):
        out = containerd.ctr("images", "pull", "--hosts-dir", str(hosts), "--snapshotter",
                             "native", ref)
        assert "unpacking" in out, out          # unpacked with the native snapshotter
        assert containerd.image_digest(ref) == image.digest
    seen = requests_from(pc, "containerd")
    assert {r["upstream"] for r in seen} == {"docker.io", "ghcr.io"}
    assert any(r["method"] == "HEAD" and r["path"] == "/v2/o/app/manifests/1" for r in seen)
    # Content addressing: the same digests pulled again cost no new fill.
    assert all(r["status"] in (200, 206) for r in seen)


def test_ctr_with_per_registry_hosts_toml(world, containerd):
    pc = world["pc"]
    hosts = containerd.hosts_dir("hosts-ghcr", pc.host, registry="ghcr.io")
    containerd.ctr("images", "rm", "ghcr.io/o/app:1", check=False)
    containerd.ctr("images", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native",
                   "ghcr.io/o/app:1")
    assert containerd.image_digest("ghcr.io/o/app:1") == world["app"].digest


def test_ctr_resumes_a_cut_blob_with_range(world, containerd):
    """A connection cut mid-blob between containerd and pullcache: containerd retries with
    ``Range: bytes=N-`` and pullcache answers 206 from its cache."""
    pc = world["pc"]
    image = world["resume"]
    layer = image.layers[0]
    with FaultProxy(pc.url) as cut:
        cut.set_fault("truncate", match=layer.digest, at_byte=layer.size // 2, times=1)
        hosts = containerd.hosts_dir("hosts-cut", cut.host, registry="docker.io")
        containerd.ctr("images", "pull", "--hosts-dir", str(hosts), "--snapshotter",
                       "native", "docker.io/library/resume:v1")
        assert cut.count("GET", layer.digest) == 2
    assert containerd.image_digest("docker.io/library/resume:v1") == image.digest
    ranged = [r for r in pc.events("request")
              if r["path"].endswith(layer.digest) and r["status"] == 206]
    assert ranged, "containerd did not resume with a Range request"


def test_podman_pulls_through_registries_conf_mirror(world, podman):
    pc = world["pc"]
    conf = podman.registries_conf({"docker.io": pc.host, "ghcr.io": f"{pc.host}/ghcr.io"})
    for ref, image in (("docker.io/library/tiny:v1", world["tiny"]),
                       ("ghcr.io/o/app:1", world["app"])):
        podman.run(conf, "pull", ref)
        out = podman.run(conf, "image", "inspect", "--format", "{{.Digest}}", ref)
        assert out.strip() == image.digest
    seen = requests_from(pc, "containers/")
    assert any(r["path"].startswith("/v2/ghcr.io/o/app/") for r in seen)


@pytest.fixture(scope="module")
def dockerd(world, containerd, tmp_path_factory):
    daemon = Dockerd(tmp_path_factory.mktemp("dockerd"), world["pc"].host, containerd).start()
    yield daemon
    daemon.stop()


def test_dockerd_registry_mirror(world, dockerd):
    dockerd.docker("pull", "tiny:v1")
    _, out = dockerd.docker("image", "inspect", "--format", "{{index .RepoDigests 0}}",
                            "tiny:v1")
    assert out.strip() == f"tiny@{world['tiny'].digest}"
    seen = requests_from(world["pc"], "docker/")
    assert any(r["method"] == "HEAD" and r["path"] == "/v2/library/tiny/manifests/v1"
               for r in seen)
    _, listing = dockerd.docker("pull", "multi:v1")
    _, out = dockerd.docker("image", "inspect", "--format", "{{index .RepoDigests 0}}",
                            "multi:v1")
    assert out.strip() == f"multi@{world['multi'].digest}"


def test_dockerd_resumes_a_cut_blob_with_range(world, containerd, tmp_path):
    """dockerd's mirror is a fault proxy in front of pullcache that cuts one blob transfer
    halfway: dockerd retries with ``Range`` and gets a correct 206."""
    pc = world["pc"]
    layer = world["resume"].layers[0]
    with FaultProxy(pc.url) as cut:
        cut.set_fault("truncate", match=layer.digest, at_byte=layer.size // 2, times=1)
        daemon = Dockerd(tmp_path, cut.host, containerd).start()
        try:
            daemon.docker("pull", "resume:v1")
            _, out = daemon.docker("image", "inspect", "--format",
                                   "{{index .RepoDigests 0}}", "resume:v1")
        finally:
            daemon.stop()
        assert cut.count("GET", layer.digest) >= 2
    assert out.strip() == f"resume@{world['resume'].digest}"
    assert any(r["path"].endswith(layer.digest) and r["status"] == 206
               and "docker/" in (r.get("user_agent") or "") for r in pc.events("request"))
