"""The README's quickstart, walked through: ``make run``, pull twice, see the second pull served
from the cache in ``pullcache cache ls``, in the access log and on the status page.

The daemon is started exactly as ``make run`` starts it (the command is read from the
Makefile with ``make -n``): ``pullcache serve`` with the built-in defaults and no config file.
Only what a test machine needs differs, through the environment as an operator would do it:
free ports instead of 5000/5001, a temp ``$XDG_CACHE_HOME`` (so the default cache dir is a
temp dir), and the default upstream (docker.io) pointed at a local Distribution registry.
The image is ``library/quickstart:1``, a Docker Hub official-image name, as ``docker pull
quickstart:1`` would ask for it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemon import ROOT, Pullcache, UpstreamSpec
from tests.support.images import build_image, push, read_oci_layout_digests
from tests.support.ports import free_port, wait_until

REPO = "library/quickstart"
TAG = "1"


def make_run_argv() -> list[str]:
    """What ``make run`` executes, without installing anything (``-n``; the venv stamp is
    taken as up to date), with the venv's ``pullcache`` script as this interpreter's module."""
    venv = "/nonexistent-venv"
    out = subprocess.run(["make", "-s", "-n", "-C", str(ROOT), "run", f"VENV={venv}",
                          "-o", f"{venv}/.installed"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    argv = shlex.split(out.strip().splitlines()[-1])
    assert argv[0] == f"{venv}/bin/pullcache", f"make run runs {out!r}"
    return [sys.executable, "-m", "pullcache", *argv[1:]]


class MakeRun(Pullcache):
    """pullcache started as ``make run`` starts it: no config file, defaults plus the
    environment. (The log, events and stop of ``Pullcache`` apply unchanged.)"""

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "xdg-cache" / "pullcache"   # the default: $XDG_CACHE_HOME/pullcache

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULLCACHE_")}
        return {**env, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(self.workdir / "xdg-cache"),
                "PULLCACHE_SERVER_LISTEN": self.host,
                "PULLCACHE_SERVER_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
                # upstream[0] is the built-in docker.io upstream; only its URL moves.
                "PULLCACHE_UPSTREAM_0_URL": self.upstreams[0].url}

    def start(self, timeout: float = 20.0) -> "MakeRun":
        self.port = self.port or free_port()
        self.admin_port = self.admin_port or free_port()
        return self.launch(make_run_argv(), self.environ(), timeout)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """A ``pullcache`` command on this machine: it finds the daemon the same way."""
        return subprocess.run([sys.executable, "-m", "pullcache", *args], capture_output=True,
                              text=True, timeout=60, env=self.environ(), cwd=ROOT)

    def admin(self, path: str) -> bytes:
        with urllib.request.urlopen(self.admin_url + path, timeout=10) as resp:
            return resp.read()


@pytest.fixture
def daemon(registry, tmp_path):
    pc = MakeRun(tmp_path, [UpstreamSpec("docker.io", registry.url, default=True)])
    yield pc.start()
    pc.stop(signal.SIGTERM)


def skopeo_pull(daemon: MakeRun, dest: Path) -> dict:
    """``skopeo copy`` from the mirror into an OCI layout; what landed there."""
    proc = subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                           f"docker://{daemon.host}/{REPO}:{TAG}", f"oci:{dest}:{TAG}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"skopeo: {proc.stderr}\npullcache log:\n{daemon.log()[-4000:]}"
    return read_oci_layout_digests(dest)


def requests_logged(daemon: MakeRun) -> list[dict]:
    return [r for r in daemon.events("request") if r.get("path", "").startswith(f"/v2/{REPO}/")]


def test_quickstart_second_pull_is_served_from_the_cache(daemon, registry, tmp_path):
    assert shutil.which("skopeo"), "skopeo is required (make test installs it)"
    image = build_image("quickstart", layer_sizes=(600_000, 50_000))
    push(registry, REPO, TAG, image)
    blobs = {b.digest: b.size for b in image.blobs()}   # the config and both layers

    # The first pull: every blob is a miss, fetched from the upstream through a fill.
    first = skopeo_pull(daemon, tmp_path / "first")
    assert first["refs"][TAG] == image.digest
    daemon.wait_committed(*blobs)
    wait_until(lambda: {r["path"].rpartition("/")[2] for r in requests_logged(daemon)}
               >= set(blobs), 10, "the first pull's access lines")
    before = json.loads(daemon.admin("/admin/status"))["summary"]
    assert before["misses"] >= len(blobs)
    seen = len(requests_logged(daemon))

    # The second pull: the same bytes, from the cache.
    second = skopeo_pull(daemon, tmp_path / "second")
    assert second["refs"][TAG] == image.digest
    assert {d: s for d, s in second["blobs"].items() if d != image.digest} == blobs

    # The access log: the second pull's blob GETs are cache hits, and nothing was a miss.
    def second_pull() -> list[dict]:
        return requests_logged(daemon)[seen:]
    wait_until(lambda: {r["path"].rpartition("/")[2] for r in second_pull()
                        if "/blobs/" in r["path"]} >= set(blobs), 10,
               "the second pull's access lines")
    blob_lines = [r for r in second_pull() if "/blobs/" in r["path"]]
    assert {r["path"].rpartition("/")[2] for r in blob_lines} == set(blobs)
    assert all(r["method"] == "GET" and r["status"] == 200 and r["cache"] == "hit"
               and r["upstream"] == "docker.io" for r in blob_lines), blob_lines
    assert not [r for r in second_pull() if r["cache"] in ("miss", "joined")], second_pull()

    # pullcache cache ls (through the daemon's admin API): the image, with its manifest and
    # every blob counted.
    listed = daemon.cli("cache", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    ls = json.loads(listed.stdout)
    assert ls["totals"]["daemon"] is True
    rows = [r for r in ls["images"] if (r["upstream"], r["repository"], r["tag"])
            == ("docker.io", REPO, TAG)]
    assert len(rows) == 1, ls["images"]
    assert rows[0]["digest"] == image.digest
    assert rows[0]["files"] == 1 + len(blobs)
    assert rows[0]["size"] == len(image.manifest) + sum(blobs.values())
    table = daemon.cli("cache", "ls")
    assert table.returncode == 0, table.stderr
    assert REPO in table.stdout and TAG in table.stdout

    # The status page's JSON counts the second pull's requests as hits, and no new miss.
    after = json.loads(daemon.admin("/admin/status"))["summary"]
    assert after["hits"] - before["hits"] >= len(blobs) + 1   # + the manifest by tag
    assert after["misses"] == before["misses"]
    assert after["served_from_cache_bytes"] - before["served_from_cache_bytes"] \
        >= sum(blobs.values())
    assert b"/admin/status" in daemon.admin("/")   # the page itself polls that JSON
