"""Build OCI / Docker schema2 images in memory, push them, and read/write OCI layouts.

Everything is deterministic in ``seed``: the same call yields byte-identical
manifests (so identical digests) in every run.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from tests.support.http import basic_auth

if TYPE_CHECKING:
    from tests.support.registry import Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
REF_NAME = "org.opencontainers.image.ref.name"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Blob:
    """Content plus its descriptor fields."""

    data: bytes = field(repr=False)
    media_type: str
    digest: str
    size: int

    @classmethod
    def of(cls, data: bytes, media_type: str) -> "Blob":
        return cls(data, media_type, sha256_digest(data), len(data))

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """A single-platform image: manifest bytes, its config and layers."""

    manifest: bytes = field(repr=False)
    media_type: str
    digest: str
    config: Blob
    layers: tuple[Blob, ...]

    def blobs(self) -> tuple[Blob, ...]:
        """Config first, then layers (the order a push uploads them)."""
        return (self.config, *self.layers)

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def platform(self) -> dict:
        """``{"os", "architecture"[, "variant"]}`` read from the config."""
        cfg = json.loads(self.config.data)
        plat = {"architecture": cfg["architecture"], "os": cfg["os"]}
        if cfg.get("variant"):
            plat["variant"] = cfg["variant"]
        return plat

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Index:
    """A multi-platform OCI index or Docker manifest list over ``children``."""

    manifest: bytes = field(repr=False)
    media_type: str
    digest: str
    children: tuple[Image, ...]

    @property
    def size(self) -> int:
        return len(self.manifest)

    def blobs(self) -> tuple[Blob, ...]:
        """Every distinct blob of every child (first occurrence order)."""
        seen: dict[str, Blob] = {}
        for child in self.children:
            for blob in child.blobs():
                seen.setdefault(blob.digest, blob)
        return tuple(seen.values())

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


# -- building ---------------------------------------------------------------

def random_bytes(size: int, seed: str) -> bytes:
    """``size`` deterministic, incompressible bytes derived from ``seed`` (SHAKE-128, ~0.5 GB/s).

    Note: for one seed, a shorter result is a prefix of a longer one.
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    return hashlib.shake_128(seed.encode()).digest(size) if size else b""


def _tar_one_file(name: str, content: bytes) -> bytes:
    """A reproducible tar archive holding ``name`` with ``content``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = 0o644
        info.mtime = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    # mtime=0 keeps it reproducible; the content is random so level 1 loses nothing.
    return gzip.compress(data, compresslevel=1, mtime=0)


def _config_blob(seed: str, diff_ids: list[str], *, docker: bool, os_: str, arch: str,
                 variant: str | None) -> Blob:
    config: dict = {
        "architecture": arch,
        "os": os_,
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"pullcache.test.seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"pullcache test layer {i}"}
                    for i in range(len(diff_ids))],
    }
    if variant:
        config["variant"] = variant
    return Blob.of(_canonical_json(config), DOCKER_CONFIG if docker else OCI_CONFIG)


def _image(config: Blob, layers: Iterable[Blob], *, docker: bool) -> Image:
    layers = tuple(layers)
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    data = json.dumps(manifest, indent=2).encode()
    return Image(data, media_type, sha256_digest(data), config, layers)


def build_image(
    seed: str,
    *,
    layer_sizes: Iterable[int] = (2048, 4096),
    docker: bool = False,
    os: str = "linux",
    arch: str = "amd64",
    variant: str | None = None,
) -> Image:
    """An image whose layers are gzip tars, each holding one file of random bytes.

    Layer ``i``'s content depends only on ``seed``, ``i`` and its size, so images
    built from one seed for different platforms share layers but differ in config
    (and hence manifest digest). ``docker=True`` gives Docker schema 2 media types.
    """
    layer_type = DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        tar = _tar_one_file(f"pullcache-test/{i}.bin", random_bytes(size, f"{seed}/layer{i}"))
        diff_ids.append(sha256_digest(tar))
        layers.append(Blob.of(_gzip(tar), layer_type))
    config = _config_blob(seed, diff_ids, docker=docker, os_=os, arch=arch, variant=variant)
    return _image(config, layers, docker=docker)


def build_raw_blob_image(seed: str, size: int, *, os: str = "linux", arch: str = "amd64") -> Image:
    """An OCI image with one *uncompressed, non-tar* layer of ``size`` random bytes.

    Cheap to build at 64-512 MiB (no tar/gzip pass); registries do not inspect layer
    content, so it pushes and pulls like any image. Media type ``...layer.v1.tar``.
    """
    layer = Blob.of(random_bytes(size, f"{seed}/raw"), OCI_LAYER_TAR)
    config = _config_blob(seed, [layer.digest], docker=False, os_=os, arch=arch, variant=None)
    return _image(config, [layer], docker=False)


def build_index(children: Iterable[Image], *, docker: bool = False) -> Index:
    """An OCI image index (or, with ``docker=True``, a Docker manifest list) over ``children``.

    Each entry carries the child's platform (from its config). Children are not
    converted: pass Docker children for a manifest list, OCI children for an index.
    """
    children = tuple(children)
    if not children:
        raise ValueError("an index needs at least one child")
    media_type = DOCKER_MANIFEST_LIST if docker else OCI_INDEX
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [{**child.descriptor(), "platform": child.platform} for child in children],
    }
    data = json.dumps(manifest, indent=2).encode()
    return Index(data, media_type, sha256_digest(data), children)


# -- artifacts and referrers (image-spec v1.1 "artifactType"/"subject") ----------

OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = Blob.of(b"{}", OCI_EMPTY)


def build_artifact(subject: Image | Index, artifact_type: str, payload: bytes, *,
                   annotations: Mapping[str, str] | None = None,
                   in_config: bool = False) -> Image:
    """An artifact manifest (a signature, an SBOM…) that refers to ``subject``.

    Default: ``artifactType`` set, empty-JSON config, one layer holding ``payload``.
    ``in_config=True``: the older form, no ``artifactType`` and the type as the config's
    media type (payload in the config, one empty-JSON layer).
    """
    data = Blob.of(payload, artifact_type)
    manifest: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if in_config:
        config, layers = data, (EMPTY_JSON,)
    else:
        manifest["artifactType"] = artifact_type
        config, layers = EMPTY_JSON, (data,)
    manifest["config"] = config.descriptor()
    manifest["layers"] = [layer.descriptor() for layer in layers]
    manifest["subject"] = subject.descriptor()
    if annotations:
        manifest["annotations"] = dict(annotations)
    body = json.dumps(manifest, indent=2).encode()
    return Image(body, OCI_MANIFEST, sha256_digest(body), config, layers)


def referrer_descriptor(artifact: Image | Index) -> dict:
    """A referrers-list entry (distribution-spec "Listing Referrers"): the descriptor plus
    ``artifactType`` (else the config media type) and the manifest's annotations."""
    doc = json.loads(artifact.manifest)
    desc = artifact.descriptor()
    kind = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
    if kind:
        desc["artifactType"] = kind
    if doc.get("annotations"):
        desc["annotations"] = doc["annotations"]
    return desc


def referrers_tag(subject_digest: str) -> str:
    """The "Referrers Tag Schema" tag of a subject: ``sha256:abc…`` → ``sha256-abc…``."""
    alg, _, encoded = subject_digest.partition(":")
    return f"{alg}-{encoded[:64]}"


def build_referrers_index(artifacts: Iterable[Image]) -> Index:
    """The image index a fallback-aware client (oras, cosign, notation) pushes to the
    subject's referrers tag when the registry lacks the referrers API."""
    artifacts = tuple(artifacts)
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX,
           "manifests": [referrer_descriptor(a) for a in artifacts]}
    body = json.dumps(doc, indent=2).encode()
    return Index(body, OCI_INDEX, sha256_digest(body), artifacts)


# -- pushing ------------------------------------------------------------------

class PushError(RuntimeError):
    """A registry (or its token realm) refused a push step."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(f"{message} (HTTP {status}): {body[:500]!r}" if status else message)
        self.status = status
        self.body = body


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """``'Bearer realm="x",service="y"'`` -> ``("bearer", {"realm": "x", "service": "y"})``."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1
            params[key] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return scheme.lower(), params


@dataclass
class Response:
    """A fully read HTTP response."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes


class RegistryClient:
    """Minimal synchronous distribution-spec client for one repository (stdlib http.client).

    Handles Basic and Bearer 401 challenges (asking Bearer realms for
    ``repository:<repo>:pull,push``) and reuses the credential it earned.
    ``username=None`` is anonymous. Used by :func:`push`; handy for reading back.
    """

    def __init__(self, registry: "Registry | str", repo: str, username: str | None = None,
                 password: str | None = None) -> None:
        parts = urllib.parse.urlsplit(_registry_base_url(registry))
        self.scheme, self.netloc = parts.scheme, parts.netloc
        self.repo = repo
        self.username, self.password = username, password
        self.authorization: str | None = None

    def _basic(self) -> str | None:
        if self.username is None:
            return None
        return basic_auth(self.username, self.password or "")

    def _send(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> Response:
        parts = urllib.parse.urlsplit(url)
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(parts.netloc, timeout=120)
        try:
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            hdrs = dict(headers)
            if body is not None:
                hdrs["Content-Length"] = str(len(body))
            conn.request(method, target, body=body, headers=hdrs)
            resp = conn.getresponse()
            return Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def _fetch_token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise PushError("Bearer challenge without realm")
        scopes = [f"repository:{self.repo}:pull,push"]
        if params.get("scope") and params["scope"] not in scopes:
            scopes.insert(0, params["scope"])
        query = [("scope", s) for s in scopes]
        if params.get("service"):
            query.insert(0, ("service", params["service"]))
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        basic = self._basic()
        resp = self._send("GET", url, None, {"Authorization": basic} if basic else {})
        if resp.status != 200:
            raise PushError(f"token request to {realm} failed", resp.status, resp.body)
        doc = json.loads(resp.body)
        token = doc.get("token") or doc.get("access_token")
        if not token:
            raise PushError(f"token response from {realm} has no token", resp.status, resp.body)
        return token

    def request(self, method: str, path_or_url: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """Send; on 401 answer the challenge once and resend."""
        url = path_or_url if "://" in path_or_url else f"{self.scheme}://{self.netloc}{path_or_url}"
        hdrs = dict(headers or {})
        if self.authorization:
            hdrs["Authorization"] = self.authorization
        resp = self._send(method, url, body, hdrs)
        if resp.status != 401:
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        scheme, params = parse_www_authenticate(challenge)
        if scheme == "basic":
            auth = self._basic()
            if auth is None:
                raise PushError(f"{method} {url}: registry wants credentials", resp.status, resp.body)
        elif scheme == "bearer":
            auth = "Bearer " + self._fetch_token(params)
        else:
            raise PushError(f"{method} {url}: unsupported challenge {challenge!r}", resp.status, resp.body)
        if auth == self.authorization:  # already tried this credential
            return resp
        self.authorization = auth
        hdrs["Authorization"] = auth
        return self._send(method, url, body, hdrs)

    def _check(self, resp: Response, ok: Iterable[int], what: str) -> Response:
        if resp.status not in tuple(ok):
            raise PushError(what, resp.status, resp.body)
        return resp

    def push_blob(self, blob: Blob) -> None:
        """HEAD to skip blobs already present, else POST an upload and PUT it monolithically."""
        base = f"/v2/{self.repo}/blobs"
        head = self.request("HEAD", f"{base}/{blob.digest}")
        if head.status == 200:
            return
        start = self._check(self.request("POST", f"{base}/uploads/", b""), (202,),
                            f"starting upload of {blob.digest}")
        location = start.headers.get("Location")
        if not location:
            raise PushError("upload start without Location", start.status, start.body)
        location = urllib.parse.urljoin(f"{self.scheme}://{self.netloc}{base}/uploads/", location)
        sep = "&" if "?" in location else "?"
        put_url = f"{location}{sep}digest={urllib.parse.quote(blob.digest)}"
        self._check(self.request("PUT", put_url, blob.data, {"Content-Type": "application/octet-stream"}),
                    (201,), f"uploading {blob.digest} ({blob.size} bytes)")

    def get_manifest(self, reference: str, accept: Iterable[str] = MANIFEST_TYPES) -> Response:
        """GET /v2/<repo>/manifests/<reference> accepting every manifest type by default."""
        return self.request("GET", f"/v2/{self.repo}/manifests/{reference}",
                            headers={"Accept": ", ".join(accept)})

    def get_blob(self, digest: str) -> Response:
        """GET /v2/<repo>/blobs/<digest> (the registry is configured not to redirect)."""
        return self.request("GET", f"/v2/{self.repo}/blobs/{digest}")

    def push_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        resp = self._check(
            self.request("PUT", f"/v2/{self.repo}/manifests/{reference}", data, {"Content-Type": media_type}),
            (201,), f"putting manifest {self.repo}:{reference}")
        expected = sha256_digest(data)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != expected:
            raise PushError(f"registry stored {reference} as {got}, expected {expected}")
        return expected


def _registry_base_url(registry: "Registry | str") -> str:
    url = registry if isinstance(registry, str) else registry.url
    return url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"


def push(registry: "Registry | str", repo: str, tag: str | None, obj: Image | Index, *,
         username: str | None = None, password: str | None = None) -> None:
    """Push ``obj`` (blobs, index children, then the manifest) to ``repo``.

    The top manifest goes by ``tag``, or by its digest when ``tag`` is None; index
    children always go by digest. ``username=None`` means anonymous -- credentials
    are *not* taken from a Registry object implicitly. Raises PushError.
    """
    client = RegistryClient(registry, repo, username, password)
    images = obj.children if isinstance(obj, Index) else (obj,)
    for image in images:
        for blob in image.blobs():
            client.push_blob(blob)
        if isinstance(obj, Index):
            client.push_manifest(image.digest, image.manifest, image.media_type)
    client.push_manifest(tag or obj.digest, obj.manifest, obj.media_type)


# -- OCI image layout -----------------------------------------------------------

def _write_blob(blobs_dir: Path, digest: str, data: bytes) -> None:
    algo, hexdigest = digest.split(":", 1)
    path = blobs_dir / algo / hexdigest
    if path.exists() and path.stat().st_size == len(data):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(hexdigest + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_oci_layout(directory: Path, obj: Image | Index, tag: str) -> None:
    """Write ``obj`` into an OCI image layout at ``directory`` under ref name ``tag``.

    Creates ``oci-layout``, ``blobs/sha256/*`` and ``index.json``; an existing
    layout is extended (an entry with the same ref name is replaced).
    """
    directory = Path(directory)
    blobs_dir = directory / "blobs"
    (blobs_dir / "sha256").mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for image in obj.children if isinstance(obj, Index) else (obj,):
        for blob in image.blobs():
            _write_blob(blobs_dir, blob.digest, blob.data)
        _write_blob(blobs_dir, image.digest, image.manifest)
    _write_blob(blobs_dir, obj.digest, obj.manifest)

    index_path = directory / "index.json"
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    entries = [m for m in index.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) != tag]
    entries.append({**obj.descriptor(), "annotations": {REF_NAME: tag}})
    index["manifests"] = entries
    index_path.write_text(json.dumps(index, indent=2))


def _blob_path(directory: Path, digest: str) -> Path:
    algo, hexdigest = digest.split(":", 1)
    return directory / "blobs" / algo / hexdigest


def read_oci_layout_digests(directory: Path) -> dict:
    """Inspect an OCI layout (e.g. one ``skopeo copy`` wrote) and verify every blob.

    Returns ``{"index": <index.json as dict>, "refs": {ref name: digest},
    "manifests": [digests of every manifest reachable from index.json, nested
    indexes included, depth first], "blobs": {digest: size for every file under blobs/}}``.
    Raises AssertionError if a blob's content does not hash to its file name or a
    referenced manifest is missing.
    """
    directory = Path(directory)
    blobs: dict[str, int] = {}
    for algo_dir in sorted((directory / "blobs").iterdir()):
        for path in sorted(algo_dir.iterdir()):
            with open(path, "rb") as fh:
                actual = hashlib.file_digest(fh, algo_dir.name).hexdigest()
            if actual != path.name:
                raise AssertionError(f"blob {algo_dir.name}:{path.name} hashes to {actual}")
            blobs[f"{algo_dir.name}:{path.name}"] = path.stat().st_size
    index = json.loads((directory / "index.json").read_text())
    refs = {m["annotations"][REF_NAME]: m["digest"]
            for m in index.get("manifests", []) if REF_NAME in m.get("annotations", {})}

    manifests: list[str] = []

    def walk(descriptors: list[dict]) -> None:
        for desc in descriptors:
            digest = desc["digest"]
            if desc.get("mediaType") not in MANIFEST_TYPES or digest in manifests:
                continue
            if digest not in blobs:
                raise AssertionError(f"manifest {digest} referenced but not in blobs/")
            manifests.append(digest)
            doc = json.loads(_blob_path(directory, digest).read_bytes())
            walk(doc.get("manifests", []))

    walk(index.get("manifests", []))
    return {"index": index, "refs": refs, "manifests": manifests, "blobs": blobs}
