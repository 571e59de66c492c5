"""skopeo (containers/image) pulling through pullcache: content must be byte-identical."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.binaries import require
from tests.support.images import build_image, build_index, push, read_oci_layout_digests



def skopeo(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([require("skopeo"), "--insecure-policy", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker-schema2"])
def test_skopeo_copy_by_tag_and_digest(pullcache, registry, tmp_path, docker):
    image = build_image(f"skopeo-{docker}", layer_sizes=(400_000, 20_000), docker=docker)
    push(registry, "e2e/skopeo", f"t{int(docker)}", image)
    for ref in (f"e2e/skopeo:t{int(docker)}", f"e2e/skopeo@{image.digest}"):
        dest = tmp_path / ref.replace("/", "_").replace(":", "_").replace("@", "_")
        skopeo("copy", "--src-tls-verify=false", "--preserve-digests",
               f"docker://{pullcache.host}/{ref}", f"oci:{dest}:x")
        got = read_oci_layout_digests(dest)
        assert got["refs"]["x"] == image.digest
        assert {d: s for d, s in got["blobs"].items() if d != image.digest} == {
            b.digest: b.size for b in image.blobs()}
        assert (dest / "blobs" / "sha256" / image.digest.split(":")[1]).read_bytes() == \
            image.manifest


def test_skopeo_copy_all_platforms_of_an_index(pullcache, registry, tmp_path):
    index = build_index([build_image("sk-amd64", arch="amd64"),
                         build_image("sk-arm64", arch="arm64")])
    push(registry, "e2e/multi", "v1", index)
    dest = tmp_path / "multi"
    skopeo("copy", "--all", "--src-tls-verify=false", "--preserve-digests",
           f"docker://{pullcache.host}/e2e/multi:v1", f"oci:{dest}:v1")
    got = read_oci_layout_digests(dest)
    assert got["refs"]["v1"] == index.digest
    for child in index.children:
        assert child.digest in got["manifests"]
        for blob in child.blobs():
            assert got["blobs"][blob.digest] == blob.size


def test_skopeo_inspect_and_list_tags(pullcache, registry):
    image = build_image("sk-inspect")
    push(registry, "e2e/inspect", "one", image)
    push(registry, "e2e/inspect", "two", image)
    out = skopeo("inspect", "--tls-verify=false", f"docker://{pullcache.host}/e2e/inspect:one")
    assert json.loads(out.stdout)["Digest"] == image.digest
    tags = skopeo("list-tags", "--tls-verify=false", f"docker://{pullcache.host}/e2e/inspect")
    assert json.loads(tags.stdout)["Tags"] == ["one", "two"]
