"""The S3 tier's keys (docs/operations.md, "The S3 tier's layout").

Under the configured prefix:

- ``blobs/<alg>/<hex>``: a blob, content-addressed and immutable;
- ``manifests/<alg>/<hex>``: a manifest, immutable, its media type as the object's
  Content-Type;
- ``links/<upstream>/<repo>/_blobs/<alg>/<hex>`` and ``…/_manifests/<alg>/<hex>``: empty
  objects saying that the upstream has the content in that repository (a node serves tier
  content to a repository only through its link);
- ``tags/<upstream>/<repo>/_tags/<tag>/<class>``: the tag's record (JSON: digest, media
  type, when checked) per client class (``index``, ``manifest``, ``v1``: the kind of
  manifest the tag resolved to).

A repository name component never starts with ``_`` (distribution-spec's name grammar), so
``_blobs``, ``_manifests`` and ``_tags`` never meet a repository's own path.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...oci import DOCKER_V1, DOCKER_V1_SIGNED, INDEX_TYPES, Digest


def repository(upstream: str, repo: str) -> str:
    """The tier's name for ``<upstream>/<repo>``: keys take any name as it is, so the
    mapping is one-to-one."""
    return f"{upstream}/{repo}"


def tag_class(media_type: str) -> str:
    """The client class a tag record is kept under: what kind of manifest it names."""
    if media_type in INDEX_TYPES:
        return "index"
    if media_type in (DOCKER_V1, DOCKER_V1_SIGNED):
        return "v1"
    return "manifest"


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str = ""

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts) if self.prefix else parts)

    def blob(self, digest: Digest) -> str:
        return self._key("blobs", digest.algorithm, digest.hex)

    def manifest(self, digest: Digest) -> str:
        return self._key("manifests", digest.algorithm, digest.hex)

    def link(self, repository: str, kind: str, digest: Digest) -> str:
        """``repository`` is the tier's ``<upstream>/<repo>``; ``kind`` blob | manifest."""
        return self._key("links", repository, f"_{kind}s", digest.algorithm, digest.hex)

    def tag(self, repository: str, tag: str, klass: str) -> str:
        return self._key("tags", repository, "_tags", tag, klass)

    def root(self) -> str:
        """Every key of the tier starts with this (a lifecycle rule's filter)."""
        return f"{self.prefix}/" if self.prefix else ""
