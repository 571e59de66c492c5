"""Content negotiation of a tag: which clients one upstream answer is good for.

An upstream answers a tag by what the client's ``Accept`` *names* (distribution-spec
content negotiation; Distribution's ``registry/handlers/manifests.go`` compares media types
exactly, so ``*/*`` names nothing; docs/protocol.md §3):

- the tag names an index (an OCI image index or a Docker manifest list): a client that names
  that index type gets the index. A client that does not gets a platform manifest picked
  from it (``linux/amd64``), or ``MANIFEST_UNKNOWN``;
- the tag names an image manifest: a client that names its type gets it. An old registry may
  rewrite a Docker v2 manifest as schema 1 for a client that names only schema 1.

So a tag's answer depends on the client's *accept class*: the set of known manifest types
its Accept list names (``accept_class``; no Accept at all counts as the modern set, which is
what the upstream is asked with then). A record is kept per class. A record cached by class
``C0``, of media type ``M``, is what the upstream would also answer class ``C1`` with when
(``stands_in``):

1. ``C1`` names ``M``; and
2. every type the upstream could have answered *instead of* ``M`` (``_INSTEAD``), if ``C1``
   names it, ``C0`` named it too. Had the tag named such a type, ``C0`` would have got it,
   not ``M``; so the tag does not, and ``C1`` gets ``M`` as well.

Hence an index stands in for any client that names its type (nothing is answered instead of
an index: a registry never makes one up), and an image manifest cached by a client that
names both index types (skopeo, podman, containerd, dockerd) stands in for any client that
names its type: the tag names that manifest itself. A platform manifest the upstream picked
for a client that does not take indexes never stands in for a client that does: the tag
may name an index, which that client would get.

dockerd, containerd and containers/image send different lists (docs/protocol.md §1.1-§1.3),
so without stand-ins a mixed fleet would revalidate (and, during an outage, wait) once per
class for the same tag.
"""

from __future__ import annotations

import functools

from ..oci import (DEFAULT_ACCEPT, DOCKER_LIST, DOCKER_MANIFEST, DOCKER_V1, DOCKER_V1_SIGNED,
                   INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST)

KNOWN = MANIFEST_TYPES + (DOCKER_V1_SIGNED, DOCKER_V1)

# What an upstream may answer a tag with instead of the key, for a client that names it.
_INSTEAD: dict[str, frozenset[str]] = {
    OCI_INDEX: frozenset(),
    DOCKER_LIST: frozenset(),
    OCI_MANIFEST: INDEX_TYPES,
    DOCKER_MANIFEST: INDEX_TYPES,
    DOCKER_V1_SIGNED: INDEX_TYPES | {DOCKER_MANIFEST},
    DOCKER_V1: INDEX_TYPES | {DOCKER_MANIFEST},
}


@functools.lru_cache(maxsize=256)   # a handful of distinct Accept lists in practice
def accept_class(accept: tuple[str, ...]) -> str:
    """The known manifest media types an Accept list names, as a stable key ("none": it
    names none, e.g. ``*/*`` alone). No Accept at all: the modern set, which the upstream is
    asked with for such a client."""
    named = set(accept or DEFAULT_ACCEPT)
    return ",".join(sorted(t for t in KNOWN if t in named)) or "none"


@functools.lru_cache(maxsize=1024)
def _types(aclass: str) -> frozenset[str]:
    return frozenset(aclass.split(",")) if aclass != "none" else frozenset()


@functools.lru_cache(maxsize=4096)
def stands_in(media_type: str, cached_by: str, client: str) -> bool:
    """Whether a tag record of ``media_type``, cached for accept class ``cached_by``, is what
    the upstream would also answer accept class ``client`` with (the rule above)."""
    wanted = _types(client)
    if media_type not in wanted:
        return False
    instead = _INSTEAD.get(media_type)
    if instead is None:
        return False      # a type this rule does not know: only its own class's record
    return (wanted & instead) <= _types(cached_by)
