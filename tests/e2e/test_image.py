"""The container image (`make image`, deploy/image/build) run as users run it: under podman,
read-only root, its volume, PULLCACHE_* overrides; skopeo pulls an image through it and the
digests match; the image itself, pushed to the test registry, is pulled through the
pullcache it contains.

`make test` and `make image-test` build the image first (about 45 s) into
build/image/pullcache.oci.tar; without it these tests fail, naming `make image`. (No
PULLCACHE_* variable names it: the daemons the suite starts would take it for a config key.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.binaries import require
from tests.support.clients import Dockerd
from tests.support.http import request
from tests.support.images import build_image, push, read_oci_layout_digests
from tests.support.ports import free_port, wait_http

ARCHIVE = Path(__file__).resolve().parents[2] / "build" / "image" / "pullcache.oci.tar"


@pytest.fixture(autouse=True)
def _image_built() -> None:
    if not ARCHIVE.is_file():
        pytest.fail(f"no image at {ARCHIVE}: `make image` builds it (`make test` does first)")
MiB = 1024 * 1024
# This machine's container may not raise rlimits; podman's defaults would.
LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1024:1024")


def oci_index(archive: Path) -> tuple[dict, dict, dict]:
    """(manifest, config, layer sizes) of the archive's one image."""
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> bytes:
            return tar.extractfile(f"./blobs/sha256/{digest.split(':')[1]}").read()
        index = json.loads(tar.extractfile("./index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
    return index, manifest, config


class Podman:
    def __init__(self, workdir: Path) -> None:
        self.binary = require("podman")
        self.workdir = workdir
        self.runroot = Path(os.path.realpath(
            subprocess.check_output(["mktemp", "-d", "/tmp/pc-img-XXXXXX"], text=True).strip()))

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        done = subprocess.run([self.binary, "--root", str(self.workdir / "root"), "--runroot",
                               str(self.runroot), "--storage-driver", "vfs",
                               "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                               *args], capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, f"podman {' '.join(args)}:\n{done.stderr}"
        return done.stdout + done.stderr

    def cleanup(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)


@pytest.fixture(scope="module")
def image():
    archive = Path(ARCHIVE)
    assert archive.is_file(), f"{archive}: not built (make image)"
    return archive


@pytest.fixture
def podman(tmp_path):
    p = Podman(tmp_path)
    yield p
    p.cleanup()


def skopeo(*args: str) -> str:
    done = subprocess.run([require("skopeo"), "--insecure-policy", *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"skopeo {' '.join(args)}:\n{done.stderr}"
    return done.stdout


def test_the_image_config_labels_and_size(image):
    index, manifest, config = oci_index(image)
    version = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    c = config["config"]
    assert c["User"] == "10001:10001"
    assert c["Entrypoint"] == ["/opt/pullcache/bin/pullcache"] and c["Cmd"] == ["serve"]
    assert set(c["ExposedPorts"]) == {"5000/tcp", "5001/tcp"}
    assert set(c["Volumes"]) == {"/var/cache/pullcache"}
    assert "PULLCACHE_CONFIG=/etc/pullcache/config.toml" in c["Env"]
    labels = c["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert len(labels["org.opencontainers.image.revision"].split("-")[0]) == 40
    compressed = sum(layer["size"] for layer in manifest["layers"])
    print(f"image {version}: {compressed / MiB:.1f} MiB compressed")
    assert compressed < 80 * MiB


def test_the_image_serves_read_only_and_pulls_through(image, podman, registry, tmp_path):
    index, _, _ = oci_index(image)
    version = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    podman("pull", "-q", f"oci-archive:{image}")
    image_id = podman("images", "-q").split()[0]
    said = podman("run", "--rm", "--read-only", *LIMITS, image_id, "--version")
    assert said.startswith(f"pullcache {version} (python 3.")

    # The pullcache image itself on the test registry: what a cluster would pull.
    skopeo("copy", "--dest-tls-verify=false", f"oci-archive:{image}:{version}",
           f"docker://{registry.host}/pullcache/pullcache:{version}")
    small = build_image("image-test", layer_sizes=(300_000,))
    push(registry, "library/small", "v1", small)

    cache = tmp_path / "cache"
    cache.mkdir()
    os.chown(cache, 10001, 10001)
    port, admin = free_port(), free_port()
    podman("run", "-d", "--name", "pullcache-image-test", "--read-only", "--network", "host",
           *LIMITS, "-v", f"{cache}:/var/cache/pullcache",
           "-e", f"PULLCACHE_SERVER_LISTEN=127.0.0.1:{port}",
           "-e", f"PULLCACHE_SERVER_ADMIN_LISTEN=127.0.0.1:{admin}",
           "-e", f"PULLCACHE_UPSTREAM_0_URL={registry.url}",
           "-e", "PULLCACHE_CACHE_MAX_SIZE=1GiB", image_id)
    try:
        wait_http(f"http://127.0.0.1:{admin}/readyz", timeout=60, ok_statuses=(200,))
        mirror = f"127.0.0.1:{port}"
        # docker.io (upstream 0) is the test registry: a Docker Hub name through the mirror.
        out = tmp_path / "small"
        skopeo("copy", "--src-tls-verify=false", f"docker://{mirror}/library/small:v1",
               f"oci:{out}:v1")
        assert read_oci_layout_digests(out)["refs"]["v1"] == small.digest
        # The image, pulled through the pullcache running in it.
        pulled = tmp_path / "self"
        skopeo("copy", "--src-tls-verify=false",
               f"docker://{mirror}/pullcache/pullcache:{version}", f"oci:{pulled}:{version}")
        assert read_oci_layout_digests(pulled)["refs"][version] == index["manifests"][0]["digest"]
        stats = request(f"http://127.0.0.1:{admin}", "/admin/stats").json()
        assert stats["bytes"] > 60 * MiB   # the image's layer, cached on the volume
        written = [p for p in cache.rglob("*") if p.is_file()]
        assert written and {p.stat().st_uid for p in written} == {10001}   # not root
        status = request(f"http://127.0.0.1:{admin}", "/admin/status").json()
        assert status["version"] == version
    finally:
        logs = podman("logs", "pullcache-image-test", check=False)
        podman("rm", "-f", "-t", "5", "pullcache-image-test", check=False)
    assert '"event": "request"' in logs or '"event":"request"' in logs, logs[-2000:]


def test_the_image_runs_under_dockerd(image, containerd, tmp_path):
    """What the README's `docker run` starts: loaded into a real (private) dockerd, run
    read-only as its user. (This machine's dockerd has no bridge network, so the serving
    itself is shown under podman above.)"""
    index, _, _ = oci_index(image)
    version = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    dockerd = Dockerd(tmp_path / "dockerd", "127.0.0.1:9", containerd)
    dockerd.workdir.mkdir()
    dockerd.start()
    try:
        skopeo("copy", f"oci-archive:{image}:{version}", f"docker-daemon:pullcache:{version}",
               "--dest-daemon-host", f"unix://{dockerd.socket}")
        _, said = dockerd.docker("run", "--rm", "--read-only", "-v",
                                 "pullcache-test:/var/cache/pullcache",
                                 f"pullcache:{version}", "--version")
        assert said.strip().startswith(f"pullcache {version} (python 3.")
        _, whoami = dockerd.docker("run", "--rm", "--entrypoint", "/usr/bin/id",
                                   f"pullcache:{version}")
        assert whoami.startswith("uid=10001(pullcache) gid=10001(pullcache)")
        _, owner = dockerd.docker("run", "--rm", "--entrypoint", "/usr/bin/stat", "-v",
                                  "pullcache-test:/var/cache/pullcache", f"pullcache:{version}",
                                  "-c", "%u", "/var/cache/pullcache")
        assert owner.strip() == "10001"   # a new named volume takes the image's owner
    finally:
        dockerd.stop()
