"""What a manifest references: child manifests (an index) or a config and layers.

image-spec manifest.md / image-index.md; Docker schema 2 has the same shape. Schema 1
manifests (``fsLayers``) name their layers without sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refs:
    children: tuple[tuple[str, dict], ...]   # (digest, platform) of an index's manifests
    blobs: tuple[tuple[str, int], ...]       # (digest, size) of config + layers


def references(body: bytes) -> Refs:
    try:
        doc = json.loads(body)
    except ValueError:
        return Refs((), ())
    if not isinstance(doc, dict):
        return Refs((), ())
    children = tuple((m["digest"], m.get("platform") or {})
                     for m in doc.get("manifests") or () if _has_digest(m))
    blobs = []
    config = doc.get("config")
    if _has_digest(config):
        blobs.append((config["digest"], int(config.get("size") or 0)))
    for layer in doc.get("layers") or ():
        if _has_digest(layer):
            blobs.append((layer["digest"], int(layer.get("size") or 0)))
    for layer in doc.get("fsLayers") or ():   # schema 1
        if isinstance(layer, dict) and isinstance(layer.get("blobSum"), str):
            blobs.append((layer["blobSum"], 0))
    return Refs(children, tuple(dict.fromkeys(blobs)))


def _has_digest(d: object) -> bool:
    return isinstance(d, dict) and isinstance(d.get("digest"), str)
