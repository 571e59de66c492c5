"""The chaos soak, shared by ``tests/integration/test_chaos.py`` and ``bench/chaos_soak.py``.

Many clients (Python threads and skopeo processes) pull a set of images through pullcache
for a fixed time (the Python threads make the requests of every client class a mirror meets,
``CLIENT_CLASSES``, each with its own manifest Accept list), while the fault proxy in front
of the registry injects random faults and, optionally, the daemon is SIGKILLed and restarted
midway. A client counts a pull as good
only when every byte it received hashed to the digest it asked for; a response that looked
complete (status 200, full Content-Length) but hashed wrong is a *wrong* pull, the one
thing that must never happen. Transfers cut short are retried (with ``Range`` once, the way
containerd resumes), which is what real clients do.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .binaries import require
from .daemon import Pullcache
from .images import DOCKER_MANIFEST as DOCKER_V2, DOCKER_MANIFEST_LIST as DOCKER_LIST, \
    MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST, Blob, Image, build_image, build_raw_blob_image, \
    push, read_oci_layout_digests

MiB = 1 << 20
REPO = "soak/app"
DOCKER_V1S, DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+prettyjws", \
    "application/vnd.docker.distribution.manifest.v1+json"


@dataclass(frozen=True)
class ClientClass:
    """How one kind of client asks a mirror for an image: its manifest Accept list and the
    shape of its requests, as Debian 12's clients send them through a mirror
    (docs/protocol.md §1)."""
    name: str
    accept: tuple[str, ...]
    one_line: bool = False        # one comma-separated Accept line, else one line per type
    shuffled: bool = False        # the order changes from request to request (a Go map)
    ping: bool = False            # GET /v2/ before each image
    head_first: bool = False      # HEAD the tag, then GET the manifest by digest
    ns: bool = False              # ``?ns=<upstream host>`` on every request
    blob_accept: str | None = None   # "layer": the descriptor's media type and */*

    def accept_lines(self, rng: random.Random) -> list[tuple[str, str]]:
        types = list(self.accept)
        if self.shuffled:
            rng.shuffle(types)
        if self.one_line:
            return [("Accept", ", ".join(types))]
        return [("Accept", t) for t in types]


CLIENT_CLASSES = (
    # dockerd 20.10: ping, HEAD by tag, GET by digest; six Accept lines in Go map order.
    ClientClass("dockerd", (OCI_MANIFEST, DOCKER_V2, DOCKER_LIST, OCI_INDEX, DOCKER_V1S,
                            "application/json"), shuffled=True, ping=True, head_first=True),
    # containerd 1.6: no ping; HEAD by tag with one line ending in */*; GET by digest with
    # "<descriptor media type>, */*"; ?ns= on every request; blobs with their media type.
    ClientClass("containerd", (DOCKER_V2, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"),
                one_line=True, head_first=True, ns=True, blob_accept="layer"),
    # containers/image 5.23 (skopeo, podman, buildah): ping, GET by tag, six fixed lines.
    ClientClass("containers", (OCI_MANIFEST, DOCKER_V2, DOCKER_V1S, DOCKER_V1, DOCKER_LIST,
                               OCI_INDEX), ping=True),
    # A client that speaks OCI only (an oras-like tool): one line, no Docker types.
    ClientClass("oci", (OCI_MANIFEST, OCI_INDEX), one_line=True, blob_accept="*/*"),
)
# The shape a benchmark times: one GET of the tag with every manifest type on one line.
PLAIN = ClientClass("plain", MANIFEST_TYPES, one_line=True)
# Timeouts short enough that stalls and drips trip them inside the soak.
SOAK_UPSTREAM = {"read_timeout": "1s", "header_timeout": "2s", "revalidate_timeout": "1s",
                 "tag_ttl": "2s", "breaker_cooldown": "1s"}
# Room for one 64 MiB layer and the small ones, not both big ones: pulls of the big images
# evict each other, so fills keep running (and meeting faults) all soak long.
SOAK_MAX_SIZE = "100MiB"


def build_soak_images(count: int = 20, big: int = 2, big_size: int = 64 * MiB,
                      seed: str = "soak") -> list[Image]:
    """``count`` images sharing base layers (tiny + 1 MiB); ``big`` of them carry one
    ``big_size`` layer each (the others mix small layers). Pushed tags: ``t0`` … ``tN``."""
    images = []
    for i in range(count):
        if i < big:
            images.append(build_raw_blob_image(f"{seed}-big{i}", big_size))
        else:
            # Layers 0 and 1 are shared by every small image (same seed, index and size).
            images.append(build_image(seed, layer_sizes=(2048, MiB, 1000 + 97 * i),
                                      arch=f"arch{i}"))
    return images


def push_soak_images(registry, images: list[Image]) -> None:
    for i, image in enumerate(images):
        push(registry, REPO, f"t{i}", image)


@dataclass
class SoakResult:
    seconds: float = 0.0
    pulls: Counter = field(default_factory=Counter)      # ok / failed / wrong, per client kind
    wrong: list[str] = field(default_factory=list)        # what was wrong, for the message
    statuses: Counter = field(default_factory=Counter)    # HTTP statuses clients saw
    restarts: int = 0
    drain_seconds: float = 0.0    # from the stop signal until the last client finished
    errors: list[str] = field(default_factory=list)       # a sample of client failures
    # VmHWM of each daemon process the soak SIGKILLed, read just before the kill (the
    # process that serves afterwards is read by ``aftermath``).
    killed_rss_peaks_kib: list[int] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(n for key, n in self.pulls.items() if key.endswith("_ok"))


class _Cut(Exception):
    """The transfer ended early (connection cut or refused); ``got`` bytes arrived."""

    def __init__(self, got: int = 0) -> None:
        self.got = got


class _Stopped(Exception):
    """The soak's time is up: the pull in progress is dropped, not counted."""


class Soak:
    def __init__(self, pc: Pullcache, images: list[Image], *, clients: int = 50,
                 skopeo_clients: int = 4, seconds: float = 45.0, kill_at: float | None = None,
                 seed: int = 1, workdir: Path | None = None) -> None:
        self.pc = pc
        self.images = images
        self.clients = clients
        if skopeo_clients:
            require("skopeo")
        self.skopeo_clients = skopeo_clients
        self.seconds = seconds
        self.kill_at = kill_at
        self.seed = seed
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.result = SoakResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- running ------------------------------------------------------------------------------

    def run(self) -> SoakResult:
        began = time.monotonic()
        threads = [threading.Thread(target=self._python_client, args=(i,), daemon=True)
                   for i in range(self.clients - self.skopeo_clients)]
        threads += [threading.Thread(target=self._skopeo_client, args=(i,), daemon=True)
                    for i in range(self.skopeo_clients)]
        for t in threads:
            t.start()
        if self.kill_at is not None and self._stop.wait(self.kill_at) is False:
            self.result.killed_rss_peaks_kib.append(self.pc.rss_peak_kib())
            self.pc.kill()        # SIGKILL under load: no cleanup runs
            self.pc.start()       # same ports, same cache dir: reconcile, then serve
            self.result.restarts += 1
        self._stop.wait(max(0.0, self.seconds - (time.monotonic() - began)))
        self._stop.set()
        stopped = time.monotonic()
        for t in threads:
            t.join(timeout=180)
        self.result.seconds = time.monotonic() - began
        self.result.drain_seconds = time.monotonic() - stopped
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.result

    def _count(self, key: str, wrong: str | None = None) -> None:
        with self._lock:
            self.result.pulls[key] += 1
            if wrong:
                self.result.wrong.append(wrong)

    def _status(self, status: int) -> None:
        with self._lock:
            self.result.statuses[status] += 1

    # -- the Python clients, one class each -----------------------------------------------------

    def _python_client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        klass = CLIENT_CLASSES[n % len(CLIENT_CLASSES)]
        while not self._stop.is_set():
            # Mostly small images, now and then a big one (64 MiB each).
            image = rng.choice(self.images[2:] if rng.random() < 0.85 else self.images[:2])
            tag = f"t{self.images.index(image)}"
            try:
                verdict, detail = self._pull(image, klass, rng)
            except _Stopped:
                return
            except (_Cut, OSError, http.client.HTTPException):
                verdict, detail = "failed", ""
            self._count(f"{klass.name}_{verdict}",
                        f"{klass.name} {tag}: {detail}" if verdict == "wrong" else None)
            if verdict != "ok":
                self._stop.wait(0.2 * rng.random())

    def _pull(self, image: Image, klass: ClientClass = PLAIN,
              rng: random.Random | None = None) -> tuple[str, str]:
        """``(verdict, detail)``: ok, failed (an error or a cut), wrong (bad bytes), with
        the requests ``klass`` makes."""
        rng = rng or random.Random(0)
        tag = f"t{self.images.index(image)}"
        query = f"?ns={self.pc.upstreams[0].host}" if klass.ns else ""
        if klass.ping and self._get("GET", "/v2/" + query, [])[0] != 200:
            return "failed", "ping"
        accept = klass.accept_lines(rng)
        reference = tag
        if klass.head_first:
            status, headers, _ = self._get("HEAD", f"/v2/{REPO}/manifests/{tag}{query}", accept)
            if status != 200:
                return "failed", ""
            if headers.get("docker-content-digest") != image.digest:
                return "wrong", f"HEAD digest {headers.get('docker-content-digest')}"
            reference = image.digest
            if klass.ns:   # containerd asks for the media type the descriptor named
                accept = [("Accept", f"{headers.get('content-type')}, */*")]
        status, _, body = self._get("GET", f"/v2/{REPO}/manifests/{reference}{query}", accept)
        if status != 200:
            return "failed", ""
        if hashlib.sha256(body).hexdigest() != image.digest.split(":")[1]:
            return "wrong", "manifest bytes"
        for blob in image.blobs():
            verdict, detail = self._blob(blob, klass, query)
            if verdict != "ok":
                return verdict, f"blob {blob.digest} ({blob.size} bytes) {detail}"
        return "ok", ""

    def _blob(self, blob: Blob, klass: ClientClass, query: str) -> tuple[str, str]:
        digest, size = blob.digest, blob.size
        hasher = hashlib.sha256()
        got = 0
        accept = [] if klass.blob_accept is None else [
            ("Accept", f"{blob.media_type}, */*" if klass.blob_accept == "layer"
             else klass.blob_accept)]
        for attempt in range(2):   # a cut transfer is resumed once with Range
            headers = accept + ([("Range", f"bytes={got}-")] if got else [])
            try:
                got = self._stream(f"/v2/{REPO}/blobs/{digest}{query}", headers, hasher, got,
                                   size)
            except _Cut as cut:
                got = cut.got
                continue
            if got == -1:
                return "failed", ""
            if got != size or "sha256:" + hasher.hexdigest() != digest:
                detail = f"got {got} bytes, sha256:{hasher.hexdigest()}"
                # After a resume the prefix came from a transfer that was cut before its
                # verified end (unverified bytes, by design): the client's own check fails
                # the pull, as containerd's does. Only one complete response can be wrong.
                return ("resume_mismatch" if attempt else "wrong"), detail
            return "ok", ""
        return "failed", ""

    def _connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.pc.url)
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    @staticmethod
    def _send(conn: http.client.HTTPConnection, method: str, path: str,
              headers: list[tuple[str, str]]) -> http.client.HTTPResponse:
        """One request, each header its own line (clients repeat ``Accept``)."""
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse()

    def _get(self, method: str, path: str, headers: list[tuple[str, str]]
             ) -> tuple[int | None, dict[str, str], bytes]:
        """(status, lower-cased headers, body); status None when the request failed."""
        conn = self._connection()
        try:
            resp = self._send(conn, method, path, headers)
            self._status(resp.status)
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        except (OSError, http.client.HTTPException):
            return None, {}, b""
        finally:
            conn.close()

    def _stream(self, path: str, headers: list[tuple[str, str]], hasher, offset: int,
                size: int) -> int:
        """Bytes from ``offset`` into ``hasher``; the new offset, -1 on an error status.
        Raises _Cut (with the offset reached) when the body ends early."""
        conn = self._connection()
        got = offset
        try:
            resp = self._send(conn, "GET", path, headers)
            self._status(resp.status)
            if resp.status not in (200, 206) or (offset and resp.status != 206):
                resp.read()
                return -1
            length = resp.getheader("Content-Length")
            while chunk := resp.read(256 * 1024):
                hasher.update(chunk)
                got += len(chunk)
                if self._stop.is_set():
                    raise _Stopped
            if length is not None and got - offset != int(length):
                raise _Cut(got)
            return got
        except http.client.IncompleteRead as exc:
            hasher.update(exc.partial)
            raise _Cut(got + len(exc.partial)) from None
        except (OSError, http.client.HTTPException):
            raise _Cut(got) from None
        finally:
            conn.close()

    # -- the skopeo client --------------------------------------------------------------------

    def _skopeo_client(self, n: int) -> None:
        rng = random.Random(self.seed * 7919 + n)
        small = self.images[2:]
        while not self._stop.is_set():
            i = self.images.index(rng.choice(small))
            dest = self.workdir / f"skopeo-{n}"
            shutil.rmtree(dest, ignore_errors=True)
            proc = subprocess.Popen(
                ["skopeo", "--insecure-policy", "copy", "--retry-times", "0",
                 "--src-tls-verify=false", "--preserve-digests",
                 f"docker://{self.pc.host}/{REPO}:t{i}", f"oci:{dest}:x"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            stderr = _finish(proc, self._stop, timeout=60)
            if self._stop.is_set() and proc.returncode != 0:
                break
            if proc.returncode != 0:
                self._count("skopeo_failed")
                with self._lock:
                    if len(self.result.errors) < 20:
                        self.result.errors.append(stderr.strip()[-300:])
                self._stop.wait(0.2 * rng.random())
                continue
            try:
                got = read_oci_layout_digests(dest)   # re-hashes every blob
            except AssertionError as exc:
                self._count("skopeo_wrong", f"skopeo t{i}: {exc}")
                continue
            image = self.images[i]
            expected = {b.digest for b in image.blobs()} | {image.digest}
            if got["refs"].get("x") != image.digest or set(got["blobs"]) != expected:
                self._count("skopeo_wrong", f"skopeo t{i}: {json.dumps(got['refs'])}")
            else:
                self._count("skopeo_ok")
        shutil.rmtree(self.workdir / f"skopeo-{n}", ignore_errors=True)


def _finish(proc: subprocess.Popen, stop: threading.Event, timeout: float) -> str:
    """Wait for ``proc``; kill it (the one we started) at the soak's end or after ``timeout``:
    skopeo honours a long Retry-After by itself, and the soak's end does not wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return proc.communicate(timeout=0.5)[1]
        except subprocess.TimeoutExpired:
            if stop.is_set() or time.monotonic() > deadline:
                proc.kill()
                return proc.communicate()[1] + " (killed)"
