"""The ECR backing tier: read before the origin, write back after it.

The mirror of ``<upstream>/<repo>`` lives at ``<prefix>/<upstream>/<repo>`` in one ECR
registry shared by a fleet (``ecr.repository_name``). Reads go over the registry API with
ECR's Basic credentials; blobs come back through a fill that verifies them before any client
sees a byte. Writes run behind the client's response (``writebehind.WriteBehind``): a failed
write only costs a later origin fetch. The proxy decides when to use either.

**Every manifest is shared.** ECR, like Distribution, refuses an image manifest whose layers
it does not hold (MANIFEST_BLOB_UNKNOWN), and an index whose children it does not hold. A
manifest that cannot be pushed as itself (a platform no node pulled) is kept as an OCI
artifact in ``<prefix>/manifests``: its one layer IS the manifest's bytes, so that blob's
digest is the manifest's digest, and any node reads it back by digest and verifies it.
(``_manifests`` would read better, but an ECR name component must start with [a-z0-9].)
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import errors
from ..oci import DEFAULT_ACCEPT, DOCKER_V1, DOCKER_V1_SIGNED, MAX_MANIFEST_SIZE, Digest
from ..upstream.receiver import BlobStream
from ..upstream.client import Manifest, RegistryClient
from ..upstream.failures import gather
from .content import stored_media_type
from .ecr import EcrApi, repository_name
from .repositories import Repositories, RepositorySettings

__all__ = ["EcrTier", "StoredManifest"]


@dataclass(frozen=True, slots=True)
class StoredManifest(Manifest):
    """A manifest the tier holds only as an artifact: the node that read it may complete it
    (push it as itself once its layers or children are in the tier)."""


class EcrTier:
    def __init__(self, api: EcrApi, client: RegistryClient, prefix: str,
                 settings: RepositorySettings | None = None) -> None:
        self.api = api
        self.client = client
        self.prefix = prefix
        self.repositories = Repositories(api, settings or RepositorySettings())
        self.manifest_store = f"{prefix}/manifests"

    def repository(self, upstream: str, repo: str) -> str:
        return repository_name(self.prefix, upstream, repo)

    async def open_blob(self, upstream: str, repo: str, digest: Digest) -> BlobStream:
        return await self.client.open_blob(self.repository(upstream, repo), digest)

    async def head_blob(self, upstream: str, repo: str, digest: Digest) -> int | None:
        return await self.client.head_blob(self.repository(upstream, repo), digest)

    async def get_manifest(self, upstream: str, repo: str, digest: Digest) -> Manifest:
        """The manifest from its mirror repository, else from the manifest store (bytes
        checked against the digest here, and again by the caller)."""
        try:
            return await self.client.get_manifest(self.repository(upstream, repo), str(digest),
                                                  DEFAULT_ACCEPT + (DOCKER_V1_SIGNED, DOCKER_V1))
        except (errors.ManifestUnknown, errors.NameUnknown):
            pass
        try:
            stream = await self.client.open_blob(self.manifest_store, digest)
        except (errors.BlobUnknown, errors.NameUnknown) as exc:   # no store yet: a miss too
            raise errors.ManifestUnknown(str(digest)) from exc
        body = await _read(stream, MAX_MANIFEST_SIZE)
        if not digest.matches(body):
            raise errors.DigestMismatch(str(digest))
        return StoredManifest(body, stored_media_type(body), str(digest))


async def _read(stream: BlobStream, limit: int) -> bytes:
    try:
        return await gather(stream.chunks(), limit, what="stored manifest")
    finally:
        await stream.close()
