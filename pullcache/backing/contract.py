"""What the write side needs of a tier: one Protocol, so that the write-behind and its
uploads depend on this contract and not on a tier's class (``tier.EcrTier`` implements it).
"""

from __future__ import annotations

from typing import Protocol

from ..upstream.client import RegistryClient
from .repositories import Repositories


class WritableTier(Protocol):
    """A registry-shaped tier that content is pushed to."""

    client: RegistryClient          # speaks the distribution API to the tier's registry
    repositories: Repositories      # creates and settles the tier's repositories
    manifest_store: str             # where manifests that cannot be pushed as themselves go

    def repository(self, upstream: str, repo: str) -> str:
        """The tier's repository that mirrors ``<upstream>/<repo>``."""
