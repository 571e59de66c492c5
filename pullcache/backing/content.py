"""What the tier stores, as bytes: the artifact that holds a manifest, what a manifest
references, and upload sources."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from ..oci import INDEX_TYPES, OCI_INDEX, OCI_MANIFEST, Digest

PUSH_CHUNK = 8 * 1024 * 1024   # ECR wants upload parts of 5 MiB or more (but the last)
ARTIFACT_TYPE = "application/vnd.pullcache.manifest.v1"
EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"   # image-spec 1.1 "empty descriptor"
MAX_TAG = 128

Source = Callable[[], Awaitable["AsyncIterator[bytes] | None"]]


def artifact(body: bytes, media_type: str, digest: Digest) -> bytes:
    """The OCI artifact (image-spec 1.1) that holds a manifest as its one layer."""
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_TYPE, "digest": str(Digest.of(EMPTY)), "size": 2},
        "layers": [{"mediaType": media_type, "digest": str(digest), "size": len(body)}],
    }, separators=(",", ":")).encode()


def artifact_tag(digest: Digest) -> str:
    """The tag an artifact carries (an untagged-expiry lifecycle rule must not drop it),
    within the 128 characters a tag may have (distribution-spec: a sha512 digest's would
    be 135; 120 hex digits still name one digest among any that will ever be stored)."""
    return f"{digest.algorithm}-{digest.hex}"[:MAX_TAG]


def artifact_media_type(held: bytes, digest: Digest) -> str | None:
    """The media type an artifact recorded for the manifest it holds (its one layer)."""
    try:
        layers = json.loads(held).get("layers") or []
    except (ValueError, AttributeError):
        return None
    for layer in layers:
        if isinstance(layer, dict) and layer.get("digest") == str(digest):
            media_type = layer.get("mediaType")
            return media_type if isinstance(media_type, str) and media_type else None
    return None


def stored_media_type(body: bytes) -> str:
    """A manifest's media type from its own bytes: ``mediaType``, else by its shape (an
    OCI index has ``manifests``; image-spec makes ``mediaType`` optional in both)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return OCI_MANIFEST
    declared = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(declared, str) and declared:
        return declared
    return OCI_INDEX if isinstance(doc, dict) and "manifests" in doc else OCI_MANIFEST


def references(body: bytes, media_type: str) -> list[tuple[str, Digest]]:
    """What a manifest points at: child manifests of an index, else config and layers."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if media_type in INDEX_TYPES:
        return [("manifests", Digest.parse(m["digest"])) for m in doc.get("manifests", [])]
    descs = ([doc["config"]] if isinstance(doc.get("config"), dict) else []) + \
        list(doc.get("layers", []))
    return [("blobs", Digest.parse(d["digest"])) for d in descs if "digest" in d]


def file_source(path: Path | None) -> AsyncIterator[bytes] | None:
    return _file_chunks(path) if path is not None else None


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with await asyncio.to_thread(open, path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, PUSH_CHUNK):
            yield chunk


def bytes_source(data: bytes) -> Source:
    async def open_() -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            yield data
        return chunks()
    return open_
