"""Names, tags, digests and media types of the OCI distribution-spec. No I/O."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterable

from .errors import DigestInvalid, NameInvalid, TagInvalid

# distribution-spec "Pulling manifests": <name> and <reference> grammar.
NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# image-spec descriptor.md "Digests": algorithm ":" encoded. We only verify sha256 (and
# sha512), the registered algorithms; any other algorithm is refused rather than trusted.
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
MAX_NAME_LENGTH = 255  # many clients cap host + "/" + name at 255 characters

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST)
DEFAULT_ACCEPT = MANIFEST_TYPES
MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # containerd's MaxManifestSize; larger is refused
_TAG_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> "Digest":
        return _parse_digest(cls, text)

    @classmethod
    def _parse(cls, text: str) -> "Digest":
        if not DIGEST_RE.fullmatch(text or ""):
            raise DigestInvalid(text, message="invalid digest")
        algorithm, _, encoded = text.partition(":")
        pattern = _HEX.get(algorithm)
        if pattern is None:
            raise DigestInvalid(text, message=f"unsupported digest algorithm {algorithm!r}")
        if not pattern.fullmatch(encoded):
            raise DigestInvalid(text, message="invalid digest")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> "hashlib._Hash":
        return hashlib.new(self.algorithm)

    def matches(self, data: bytes) -> bool:
        return hashlib.new(self.algorithm, data).hexdigest() == self.hex

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise NameInvalid(name)
    return name


def is_digest_reference(reference: str) -> bool:
    return ":" in reference


@functools.lru_cache(maxsize=4096)   # the hot digests are parsed on every request
def _parse_digest(cls: type[Digest], text: str) -> Digest:
    return cls._parse(text)


@functools.lru_cache(maxsize=4096)   # hot tags and digests are asked for on every request
def parse_reference(reference: str) -> str | Digest:
    """A manifest reference is a tag or a digest."""
    if is_digest_reference(reference):
        return Digest.parse(reference)
    if not TAG_RE.fullmatch(reference):
        raise TagInvalid(reference)
    return reference


def parse_accept(values: Iterable[str]) -> tuple[str, ...]:
    """Media types from any number of ``Accept`` lines, each possibly a comma list.

    dockerd and containers/image send one line per type (in any order); containerd sends one
    comma-separated line. Parameters (``;q=…``) are dropped: registries ignore them, and so do
    we. Order of first appearance is kept, duplicates dropped.
    """
    return _parse_accept(tuple(values))


@functools.lru_cache(maxsize=256)   # clients send a handful of distinct Accept lists
def _parse_accept(values: tuple[str, ...]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for value in values:
        for part in value.split(","):
            media_type = part.split(";", 1)[0].strip().lower()
            if media_type:
                seen.setdefault(media_type, None)
    return tuple(seen)


def accepts(accept: tuple[str, ...], media_type: str) -> bool:
    """Whether a client with this Accept list can take ``media_type``.

    No Accept at all, ``*/*``, or ``application/*`` accepts anything; registries answer
    those with what they have (distribution-spec content-negotiation.md).
    """
    if not accept:
        return True
    media_type = media_type.lower()
    top = media_type.split("/", 1)[0]
    return any(a in (media_type, "*/*", f"{top}/*") for a in accept)


def manifest_media_type(body: bytes, content_type: str | None) -> str:
    """The media type to serve a manifest under: upstream's Content-Type, exactly.

    Falls back to the manifest's own ``mediaType`` field only when upstream sent none that
    names a manifest (spec: clients reject a mismatch between the two).
    """
    declared = (content_type or "").split(";", 1)[0].strip()
    if declared and declared not in ("application/octet-stream", "text/plain"):
        return declared
    try:
        field = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        field = None
    return field if isinstance(field, str) and field else (declared or OCI_MANIFEST)


# -- referrers (distribution-spec v1.1.1 "Listing Referrers", "Referrers Tag Schema") ------

def referrers_tag(subject: Digest) -> str:
    """The fallback tag ``<alg>-<ref>`` holding a subject's referrers index.

    ``<ref>`` is the encoded digest limited to 64 characters (spec "Referrers Tag Schema");
    any character the tag grammar refuses becomes ``-``, and the tag is at most 128 long.
    """
    tag = f"{_TAG_UNSAFE.sub('-', subject.algorithm)}-{_TAG_UNSAFE.sub('-', subject.hex[:64])}"
    return tag[:128]


def referrer_descriptors(index_body: bytes) -> list[dict]:
    """The ``manifests`` of an image index, keeping only well-formed descriptors
    (a ``mediaType`` string, a parseable ``digest``, an integer ``size``)."""
    try:
        doc = json.loads(index_body)
    except ValueError:
        return []
    found = doc.get("manifests") if isinstance(doc, dict) else None
    kept = []
    for desc in found if isinstance(found, list) else ():
        if (isinstance(desc, dict) and isinstance(desc.get("mediaType"), str)
                and isinstance(desc.get("size"), int) and _is_digest(desc.get("digest"))):
            kept.append(desc)
    return kept


def referrers_index(descriptors: Iterable[dict], artifact_type: str | None = None) -> bytes:
    """An image index listing ``descriptors`` (only those of ``artifact_type`` when given):
    the body of a referrers answer (end-12a/b), empty when none match."""
    manifests = [d for d in descriptors
                 if not artifact_type or d.get("artifactType") == artifact_type]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": manifests}).encode()


def _is_digest(text: object) -> bool:
    return isinstance(text, str) and DIGEST_RE.fullmatch(text) is not None
