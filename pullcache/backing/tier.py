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

import contextlib
from typing import Iterator

from .. import errors
from ..oci import (DEFAULT_ACCEPT, DOCKER_V1, DOCKER_V1_SIGNED, MAX_MANIFEST_SIZE, OCI_MANIFEST,
                   Digest)
from ..upstream.breaker import Breaker
from ..upstream.receiver import BlobStream
from ..upstream.client import Manifest, RegistryClient
from ..upstream.failures import gather
from .content import artifact_media_type, artifact_tag, stored_media_type
from .contract import StoredManifest, TierError, Verdict, verdict_of
from .ecr import EcrApi, repository_name
from .repositories import Repositories, RepositorySettings, SettingsRecord
from .uploads import Uploads

__all__ = ["EcrTier"]


class EcrTier:
    """The ECR tier (``contract.Tier``). Reads and writes go through two clients of the same
    registry, each with its own breaker: ``client`` for reads (the proxy's short timeouts),
    ``writer`` for the write-behind (a timeout that grows with the body), so a throttled
    upload never makes reads fail fast."""

    name = "ecr"
    passthrough = False   # held back until verified: a corrupt copy is dropped unseen

    def __init__(self, api: EcrApi, client: RegistryClient, prefix: str,
                 settings: RepositorySettings | None = None, *,
                 writer: RegistryClient | None = None, metrics=None,
                 record: SettingsRecord | None = None) -> None:
        self.api = api
        self.client = client
        self.writer = writer or client
        self.prefix = prefix
        self.repositories = Repositories(api, settings or RepositorySettings(), record=record)
        self.manifest_store = f"{prefix}/manifests"
        self.writes = Uploads(self.writer, self.repositories, self.manifest_store, metrics)

    @property
    def read_breaker(self) -> Breaker:
        return self.client.breaker

    @property
    def write_breaker(self) -> Breaker:
        return self.writer.breaker

    def repository(self, upstream: str, repo: str) -> str:
        try:
            return repository_name(self.prefix, upstream, repo)
        except errors.NameInvalid as exc:
            raise TierError(Verdict.SKIP, str(exc)) from exc

    async def open_blob(self, upstream: str, repo: str, digest: Digest,
                        offset: int = 0) -> BlobStream:
        name = self.repository(upstream, repo)
        with self._reading(name, "blob", str(digest)):
            return await self.client.open_blob(name, digest, offset)

    async def head_blob(self, upstream: str, repo: str, digest: Digest) -> int | None:
        name = self.repository(upstream, repo)
        with self._reading(name, "blob", str(digest)):
            return await self.client.head_blob(name, digest)

    async def tag_record(self, upstream: str, repo: str, tag: str,
                         media_types: tuple[str, ...] = ()) -> tuple[str, float] | None:
        return None   # ECR's tags are written for people and tools, never read back here

    async def get_manifest(self, upstream: str, repo: str, digest: Digest) -> Manifest:
        """The manifest from its mirror repository, else from the manifest store (bytes
        checked against the digest here, and again by the caller), with the media type
        the artifact recorded."""
        name = self.repository(upstream, repo)
        try:
            with self._reading(name, "manifest", str(digest)):
                return await self.client.get_manifest(
                    name, str(digest), DEFAULT_ACCEPT + (DOCKER_V1_SIGNED, DOCKER_V1))
        except TierError as exc:
            if exc.verdict != Verdict.MISSING:
                raise
        store, tag = self.manifest_store, artifact_tag(digest)
        with self._reading(store, "manifest", tag):
            held = await self.client.get_manifest(store, tag, (OCI_MANIFEST,))
            media_type = artifact_media_type(held.body, digest)
            stream = await self.client.open_blob(store, digest)
        body = await _read(stream, MAX_MANIFEST_SIZE)
        if not digest.matches(body):
            raise errors.DigestMismatch(str(digest))
        return StoredManifest(body, media_type or stored_media_type(body), str(digest))

    @contextlib.contextmanager
    def _reading(self, repo: str, kind: str, ref: str) -> Iterator[None]:
        """Domain errors → ``TierError``; a miss also drops what the node remembered."""
        try:
            yield
        except errors.PullcacheError as exc:
            error = verdict_of(exc)
            if error.verdict == Verdict.MISSING:
                self.writes.forget(repo, kind, ref)
                if isinstance(exc, errors.NameUnknown):
                    self.repositories.forget(repo)
            raise error from exc


async def _read(stream: BlobStream, limit: int) -> bytes:
    try:
        return await gather(stream.chunks(), limit, what="stored manifest")
    finally:
        await stream.close()
