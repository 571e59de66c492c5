"""``pullcache node-setup`` against the real runtimes: after it has written their config (in a
private --root the test's daemons read), ctr, dockerd and podman pull through the mirror,
and a second pull of the removed image costs the origin nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.clients import Dockerd
from tests.support.daemon import ROOT, UpstreamSpec
from tests.support.images import build_image, push

ALIAS = "origin.node-setup.test"


def node_setup(root, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pullcache", "node-setup", *args,
                           "--root", str(root)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def origin(registry, fault_proxy, make_pullcache):
    """An image on the registry behind the counting fault proxy, and pullcache in front."""
    image = build_image("node-setup", layer_sizes=(150_000,))
    push(registry, "ops/nodesetup", "v1", image)
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                     extra={"aliases": [ALIAS]}))
    return pc, fault_proxy, image


def served_to(pc, agent: str) -> int:
    return sum(1 for r in pc.events("request") if agent in (r.get("user_agent") or ""))


def test_containerd_after_node_setup(origin, containerd, tmp_path):
    pc, proxy, image = origin
    out = node_setup(tmp_path, "containerd", "--mirror", f"http://{pc.host}",
                     "--registries", proxy.host)
    certs = tmp_path / "etc/containerd/certs.d"
    assert f"{certs / proxy.host / 'hosts.toml'}: created" in out
    ref = f"{proxy.host}/ops/nodesetup:v1"
    for attempt in ("first", "second"):
        if attempt == "second":
            containerd.ctr("images", "rm", ref)
            proxy.reset_counts()
        before = served_to(pc, "containerd")
        containerd.ctr("images", "pull", "--hosts-dir", str(certs), "--snapshotter",
                       "native", ref)
        assert containerd.image_digest(ref) == image.digest
        assert served_to(pc, "containerd") > before, f"the {attempt} pull missed the mirror"
    assert proxy.count() == 0, proxy.requests


def test_podman_after_node_setup(origin, podman, tmp_path):
    pc, proxy, image = origin
    root = tmp_path / "node"
    # A registry path in a mirror location cannot carry a port: the upstream's alias.
    node_setup(root, "podman", "--mirror", f"http://{pc.host}", "--registries", ALIAS)
    # podman reads $HOME/.config/containers/registries.conf.d after the system's drop-ins:
    # the node's /etc/containers, seen from there.
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    (home / ".config/containers").symlink_to(root / "etc/containers")
    base = tmp_path / "registries.conf"
    base.write_text("unqualified-search-registries = []\n")
    ref = f"{ALIAS}/ops/nodesetup:v1"
    for attempt in ("first", "second"):
        if attempt == "second":
            podman.run(base, "rmi", ref)
            proxy.reset_counts()
        before = served_to(pc, "containers/")
        pulled = podman.attempt(base, "pull", ref, env={"HOME": str(home)})
        assert pulled.returncode == 0, pulled.stderr
        out = podman.run(base, "image", "inspect", "--format", "{{.Digest}}", ref)
        assert out.strip() == image.digest
        assert served_to(pc, "containers/") > before, f"the {attempt} pull missed the mirror"
    assert proxy.count() == 0, proxy.requests


def test_dockerd_after_node_setup(origin, containerd, tmp_path):
    pc, proxy, image = origin
    root = tmp_path / "node"
    daemon_json = root / "etc/docker/daemon.json"
    daemon_json.parent.mkdir(parents=True)
    daemon_json.write_text('{"max-concurrent-downloads": 2}\n')
    node_setup(root, "docker", "--mirror", f"http://{pc.host}")
    dockerd = Dockerd(tmp_path / "dockerd", "", containerd, config_file=daemon_json)
    dockerd.workdir.mkdir()
    dockerd.start()
    try:
        for attempt in ("first", "second"):
            if attempt == "second":
                dockerd.docker("rmi", "ops/nodesetup:v1")
                proxy.reset_counts()
            before = served_to(pc, "docker/")
            dockerd.docker("pull", "ops/nodesetup:v1")
            _, out = dockerd.docker("image", "inspect", "--format",
                                    "{{index .RepoDigests 0}}", "ops/nodesetup:v1")
            assert out.strip() == f"ops/nodesetup@{image.digest}"
            assert served_to(pc, "docker/") > before, f"the {attempt} pull missed the mirror"
        assert proxy.count() == 0, proxy.requests
    finally:
        dockerd.stop()
