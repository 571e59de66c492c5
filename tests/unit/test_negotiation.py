"""pullcache.cache.negotiation: which clients one upstream answer of a tag is good for, with
the Accept lists real clients send (docs/protocol.md §1.1-§1.3) and the edge cases."""

from __future__ import annotations

import time

import pytest

from pullcache.cache.hot import HotLayer
from pullcache.cache.negotiation import accept_class, stands_in
from pullcache.cache.tags import TagRecord, TagStore
from pullcache.oci import (DOCKER_LIST, DOCKER_MANIFEST, DOCKER_V1, DOCKER_V1_SIGNED, OCI_INDEX,
                          OCI_MANIFEST, parse_accept)

# As each client sends them (one line per type, or one comma-separated line).
DOCKERD = parse_accept([OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX, DOCKER_V1_SIGNED,
                        "application/json"])
DOCKERD_AGAIN = parse_accept([DOCKER_V1_SIGNED, OCI_INDEX, "application/json", DOCKER_MANIFEST,
                              OCI_MANIFEST, DOCKER_LIST])          # Go map order: it varies
CONTAINERD = parse_accept([f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}, */*"])
CONTAINERS_IMAGE = parse_accept([OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_V1_SIGNED, DOCKER_V1,
                                 DOCKER_LIST, OCI_INDEX])           # skopeo, podman, buildah
DXF = parse_accept([f"{DOCKER_V1}, {DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}"])
ORAS = parse_accept([f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}"])
NO_ACCEPT = ()
ANY = ("*/*",)                                       # names no manifest type
PLATFORM_ONLY = parse_accept([DOCKER_MANIFEST, OCI_MANIFEST])     # takes no index
OCI_ONLY = parse_accept([OCI_MANIFEST, OCI_INDEX])               # no Docker types
DOCKER_V2_ONLY = (DOCKER_MANIFEST,)
V1_ONLY = (DOCKER_V1_SIGNED,)


def test_accept_classes_of_real_clients():
    assert accept_class(DOCKERD) == accept_class(DOCKERD_AGAIN)
    # containerd's */* names nothing: it is the modern set, like a client that sent none.
    assert accept_class(CONTAINERD) == accept_class(NO_ACCEPT) == accept_class(ORAS)
    assert accept_class(ANY) == "none"
    assert len({accept_class(a) for a in (DOCKERD, CONTAINERD, CONTAINERS_IMAGE, DXF)}) == 4


# (media type of the record, Accept of the client that cached it, Accept of the client
#  asking, whether the upstream would answer the asking client with the same record)
TABLE = [
    # An index: good for every client that names its type.
    (OCI_INDEX, CONTAINERS_IMAGE, DOCKERD, True),
    (OCI_INDEX, CONTAINERS_IMAGE, CONTAINERD, True),
    (OCI_INDEX, CONTAINERS_IMAGE, NO_ACCEPT, True),
    (OCI_INDEX, CONTAINERS_IMAGE, OCI_ONLY, True),
    (OCI_INDEX, DOCKERD, CONTAINERS_IMAGE, True),
    (OCI_INDEX, CONTAINERS_IMAGE, PLATFORM_ONLY, False),   # would get a platform manifest
    (OCI_INDEX, CONTAINERS_IMAGE, ANY, False),             # */* names no index
    (DOCKER_LIST, DOCKERD, CONTAINERD, True),
    (DOCKER_LIST, DOCKERD, DXF, True),
    (DOCKER_LIST, DOCKERD, OCI_ONLY, False),               # does not name Docker lists
    # An image manifest cached by a client that takes both index types: the tag names it.
    (OCI_MANIFEST, CONTAINERS_IMAGE, DOCKERD, True),
    (OCI_MANIFEST, CONTAINERS_IMAGE, CONTAINERD, True),
    (OCI_MANIFEST, CONTAINERS_IMAGE, PLATFORM_ONLY, True),
    (OCI_MANIFEST, CONTAINERS_IMAGE, OCI_ONLY, True),
    (OCI_MANIFEST, CONTAINERS_IMAGE, DOCKER_V2_ONLY, False),  # does not name its type
    (OCI_MANIFEST, CONTAINERS_IMAGE, ANY, False),
    (DOCKER_MANIFEST, DOCKERD, CONTAINERD, True),
    (DOCKER_MANIFEST, CONTAINERD, DOCKER_V2_ONLY, True),
    # A platform manifest picked for a client that takes no index: the tag may be an index.
    (DOCKER_MANIFEST, PLATFORM_ONLY, CONTAINERS_IMAGE, False),
    (DOCKER_MANIFEST, PLATFORM_ONLY, DOCKERD, False),
    (DOCKER_MANIFEST, PLATFORM_ONLY, CONTAINERD, False),
    (DOCKER_MANIFEST, PLATFORM_ONLY, DOCKER_V2_ONLY, True),   # takes no index either
    (DOCKER_MANIFEST, DOCKER_V2_ONLY, PLATFORM_ONLY, True),
    # ... or for a client that takes only one index type: the other may be the tag's.
    (OCI_MANIFEST, OCI_ONLY, CONTAINERS_IMAGE, False),
    (OCI_MANIFEST, OCI_ONLY, PLATFORM_ONLY, True),
    (OCI_MANIFEST, OCI_ONLY, OCI_ONLY[::-1], True),
    # Schema 1, which an old registry makes of a Docker v2 manifest for a v1-only client.
    (DOCKER_V1_SIGNED, V1_ONLY, DOCKERD, False),
    (DOCKER_V1_SIGNED, V1_ONLY, V1_ONLY, True),
    (DOCKER_V1_SIGNED, CONTAINERS_IMAGE, DOCKERD, True),
    # A type the rule does not know stands in for nobody.
    ("application/vnd.oci.artifact.manifest.v1+json", CONTAINERS_IMAGE, DOCKERD, False),
]


@pytest.mark.parametrize("media_type, cached_by, client, expected", TABLE)
def test_stands_in(media_type, cached_by, client, expected):
    assert stands_in(media_type, accept_class(cached_by), accept_class(client)) is expected


async def test_a_tag_record_answers_the_clients_it_stands_in_for(tmp_path):
    tags = TagStore(tmp_path, HotLayer(1 << 20))
    await tags.open()
    try:
        now = time.time()
        index = TagRecord("sha256:" + "1" * 64, OCI_INDEX, now - 10)
        await tags.put("up", "repo", "v1", accept_class(CONTAINERS_IMAGE), index)
        child = TagRecord("sha256:" + "2" * 64, DOCKER_MANIFEST, now)
        await tags.put("up", "repo", "v1", accept_class(PLATFORM_ONLY), child)
        for client, expected in ((DOCKERD, index), (CONTAINERD, index), (ANY, None),
                                 (CONTAINERS_IMAGE, index), (DOCKER_V2_ONLY, child),
                                 (PLATFORM_ONLY, child)):
            aclass = accept_class(client)
            assert tags.cached("up", "repo", "v1", aclass) == expected     # from memory
            cold = TagStore(tmp_path, HotLayer(1 << 20))                   # from disk
            cold._cache = tags._cache
            assert await cold.get("up", "repo", "v1", aclass) == expected
        # The newest record that answers a class wins, its own or another's.
        newer = TagRecord("sha256:" + "3" * 64, OCI_INDEX, now + 5)
        await tags.put("up", "repo", "v1", accept_class(DOCKERD), newer)
        assert tags.cached("up", "repo", "v1", accept_class(CONTAINERS_IMAGE)) == newer
    finally:
        await tags.close()
