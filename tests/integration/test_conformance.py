"""The OCI distribution-spec v1.1.1 conformance suite's pull and content-discovery checks,
one for one, against pullcache.

The suite (``conformance/``, Go + ginkgo) cannot be installed offline, so each of its checks
is reproduced here under its own name, with the same request and the same expectations,
citing the suite's file:line (tag v1.1.1) and the spec section it covers. A read-only run
of the suite counts 14 pull checks (01_pull_test.go: the environment step, 4 blob, 8
manifest and 1 error-code check) and 8 content-discovery checks (03_discovery_test.go: the
environment step, 3 tag-list and 4 referrers checks): 22 in all.

Every check runs against pullcache in front of two upstreams (``upstream`` fixture):

- ``distribution``: the real CNCF Distribution 2.8, which lacks the referrers API. The
  suite's fixtures are pushed to it as its setup would push them, plus the "Referrers Tag
  Schema" indexes a fallback-aware client (oras, cosign, notation) pushes to such a
  registry (spec "Pushing Manifests with Subject").
- ``referrers-api``: ``ReferrersRegistry``, an in-memory upstream that has the API.

The fixtures mirror the suite's setup.go: a config blob per workflow, one layer, one manifest
per workflow (its config descriptor carrying ``data`` and an unknown field), referrers A/B
(artifact type in the config's media type, and in ``artifactType``), an index referrer, and
C referring to a subject that was never pushed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.http import request
from tests.support.images import (OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, Blob,
                                  Image, Index, build_referrers_index, push, referrers_tag)
from tests.support.referrersregistry import ReferrersRegistry

REPO = "conformance/repo"               # OCI_NAMESPACE
TEST_TAG = "tagtest0"                   # setup.go testTagName
NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"   # setup.go nonexistentManifest
DUMMY_DIGEST = "sha256:" + hashlib.sha256(b"hello world").hexdigest()   # setup.go dummyDigest
ANNOTATION = "org.opencontainers.conformance.test"
TYPE_A = "application/vnd.nhl.peanut.butter.bagel"
TYPE_B = "application/vnd.nba.strawberry.jam.croissant"
TYPE_INDEX = "application/vnd.food.stand"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
# setup.go errorCodes: the codes a 400 body's first error may carry.
ERROR_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
               "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN",
               "MANIFEST_UNVERIFIED", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID",
               "TAG_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED"}
NUM_WORKFLOWS = 5
NUM_TAGS = 4                            # 03_discovery_test.go numTags: test0 … test3


def _json(doc: dict) -> bytes:
    return json.dumps(doc, indent="\t").encode()   # the suite's json.MarshalIndent


def _image(doc: dict, config: Blob, layers: tuple[Blob, ...]) -> Image:
    body = _json(doc)
    return Image(body, OCI_MANIFEST, "sha256:" + hashlib.sha256(body).hexdigest(), config,
                 layers)


@dataclass
class Fixtures:
    """setup.go's init(), deterministic instead of random."""
    configs: list[Blob] = field(default_factory=list)
    manifests: list[Image] = field(default_factory=list)
    refs: dict[str, Image | Index] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls) -> "Fixtures":
        f = cls()
        layer = Blob.of(gzip.compress(b"conformance layer\n", mtime=0), OCI_LAYER_GZIP)
        for i in range(NUM_WORKFLOWS):
            config = Blob.of(_json({"author": f"pullcache-conformance-{i}",
                                    "architecture": "amd64", "os": "linux",
                                    "rootfs": {"type": "layers", "diff_ids": []}}), OCI_CONFIG)
            f.configs.append(config)
            f.manifests.append(_image({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {**config.descriptor(),
                           "data": base64.b64encode(config.data).decode(),
                           "newUnspecifiedField": base64.b64encode(b"hello world").decode()},
                "layers": [layer.descriptor()]}, config, (layer,)))
        empty = Blob.of(b"{}", OCI_EMPTY)
        blob_a = Blob.of(b"NHL Peanut Butter on my NHL bagel", TYPE_A)
        blob_b = Blob.of(b"NBA Strawberry Jam on my NBA croissant", TYPE_B)

        def artifact(name: str, subject: Image, kind: str, payload: Blob, in_config: bool,
                     note: str | None) -> None:
            doc: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
            if not in_config:
                doc["artifactType"] = kind
            config, layers = (payload, (empty,)) if in_config else (empty, (payload,))
            doc.update(config=config.descriptor(), subject=subject.descriptor(),
                       layers=[b.descriptor() for b in layers])
            if note:
                doc["annotations"] = {ANNOTATION: note}
            f.refs[name] = _image(doc, config, layers)
            if note:
                f.annotations[f.refs[name].digest] = note

        subject = f.manifests[4]
        artifact("a_config", subject, TYPE_A, Blob.of(blob_a.data, TYPE_A), True, "test config a")
        artifact("b_config", subject, TYPE_B, Blob.of(blob_b.data, TYPE_B), True, "test config b")
        artifact("a_layer", subject, TYPE_A, blob_a, False, "test layer a")
        artifact("b_layer", subject, TYPE_B, blob_b, False, "test layer b")
        artifact("c_layer", f.manifests[3], TYPE_B, blob_b, False, None)
        children = (f.refs["a_config"], f.refs["a_layer"])
        body = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": TYPE_INDEX,
                      "manifests": [{"mediaType": OCI_MANIFEST, "size": c.size,
                                     "digest": c.digest} for c in children],
                      "subject": subject.descriptor(),
                      "annotations": {ANNOTATION: "test index"}})
        index = Index(body, OCI_INDEX, "sha256:" + hashlib.sha256(body).hexdigest(), children)
        f.refs["index"] = index
        f.annotations[index.digest] = "test index"
        return f

    def referrers_of(self, subject: Image) -> list[Image | Index]:
        return [r for r in self.refs.values()
                if json.loads(r.manifest)["subject"]["digest"] == subject.digest]


FIX = Fixtures.build()


def _populate_distribution(registry) -> None:
    """The suite's setup (01_pull_test.go "Setup", 03_discovery_test.go "Setup" and
    "References setup"), pushed straight to the origin: pullcache accepts no pushes."""
    push(registry, REPO, TEST_TAG, FIX.manifests[0])
    push(registry, REPO, None, FIX.manifests[1])
    for i in range(NUM_TAGS):
        push(registry, REPO, f"test{i}", FIX.manifests[2])
    push(registry, REPO, None, FIX.manifests[4])
    # Distribution 2.8 has no referrers API: each referrer goes by digest, then the
    # subject's tag-schema index, as oras/cosign/notation do against such a registry.
    for subject in (FIX.manifests[4], FIX.manifests[3]):
        referrers = FIX.referrers_of(subject)
        for ref in referrers:
            push(registry, REPO, None, ref)
        push(registry, REPO, referrers_tag(subject.digest), build_referrers_index(referrers))


def _populate_api(up: ReferrersRegistry) -> None:
    up.put(REPO, FIX.manifests[0], tag=TEST_TAG)
    up.put(REPO, FIX.manifests[1])
    for i in range(NUM_TAGS):
        up.put(REPO, FIX.manifests[2], tag=f"test{i}")
    up.put(REPO, FIX.manifests[4])
    for ref in FIX.refs.values():
        up.put(REPO, ref)


@pytest.fixture(scope="module", params=["distribution", "referrers-api"])
def pc(request, registry, tmp_path_factory):
    """pullcache in front of one upstream holding the suite's fixtures."""
    workdir = tmp_path_factory.mktemp(f"conformance-{request.param}")
    if request.param == "distribution":
        _populate_distribution(registry)
        with Pullcache(workdir, [UpstreamSpec(registry.host, registry.url, default=True)]) as p:
            yield p
        return
    with ReferrersRegistry(page_size=2) as up:
        _populate_api(up)
        with Pullcache(workdir, [UpstreamSpec(up.host, up.url, default=True)]) as p:
            yield p


def get(pc, path: str, method: str = "GET", accept: str | None = None):
    headers = {"Accept": accept} if accept else {}
    return request(pc.url, f"/v2/{REPO}/{path}", method=method, headers=headers)


# == Pull (01_pull_test.go) ====================================================================

def test_pull_setup_get_tag_name_from_environment(pc):
    """01_pull_test.go:101 "Get tag name from environment" (RunOnlyIfNot(runPullSetup)):
    a read-only run takes the tag from OCI_TAG_NAME. Here the fixture's tag, which the
    read-only checks below rely on: it is listed through pullcache and names manifest 0."""
    assert TEST_TAG in _tags(get(pc, "tags/list"))
    r = get(pc, f"manifests/{TEST_TAG}", "HEAD", OCI_MANIFEST)
    assert (r.status, r.headers.get("docker-content-digest")) == (200, FIX.manifests[0].digest)


def test_pull_head_nonexistent_blob_404(pc):
    """01_pull_test.go:112 "HEAD request to nonexistent blob should result in 404 response".
    spec "Checking if content exists": not found → 404 (end-2)."""
    assert get(pc, f"blobs/{DUMMY_DIGEST}", "HEAD").status == 404


def test_pull_head_existing_blob_200(pc):
    """01_pull_test.go:121 "HEAD request to existing blob should yield 200".
    spec "Checking if content exists": 200, Docker-Content-Digest if present matches."""
    r = get(pc, f"blobs/{FIX.configs[0].digest}", "HEAD")
    assert r.status == 200
    # The spec allows leaving the header out; pullcache always sends it, and clients
    # (containerd, dockerd) resolve by it.
    assert r.headers.get("docker-content-digest") == FIX.configs[0].digest
    assert r.headers.get("content-length") == str(FIX.configs[0].size)


def test_pull_get_nonexistent_blob_404(pc):
    """01_pull_test.go:133 "GET nonexistent blob should result in 404 response".
    spec "Pulling blobs": "If the blob is not found … MUST be 404 Not Found"."""
    assert get(pc, f"blobs/{DUMMY_DIGEST}").status == 404


def test_pull_get_existing_blob_200(pc):
    """01_pull_test.go:142 "GET request to existing blob URL should yield 200".
    spec "Pulling blobs": "MUST provide the expected blob … 200 OK"."""
    r = get(pc, f"blobs/{FIX.configs[0].digest}")
    assert r.status == 200
    assert r.body == FIX.configs[0].data     # beyond the suite: the bytes are the blob's


def test_pull_head_nonexistent_manifest_404(pc):
    """01_pull_test.go:152 "HEAD request to nonexistent manifest should return 404", with
    the reference ``.INVALID_MANIFEST_NAME`` (an invalid tag). spec end-3: 200 / 404."""
    assert get(pc, f"manifests/{NONEXISTENT_MANIFEST}", "HEAD").status == 404


@pytest.mark.parametrize("i", [0, 1])
def test_pull_head_manifest_by_digest_200(pc, i):
    """01_pull_test.go:161 / :173 "HEAD request to manifest[0|1] path (digest) should yield
    200 response". spec "Checking if content exists"."""
    r = get(pc, f"manifests/{FIX.manifests[i].digest}", "HEAD", OCI_MANIFEST)
    assert r.status == 200
    assert r.headers.get("docker-content-digest") == FIX.manifests[i].digest
    assert r.headers.get("content-length") == str(FIX.manifests[i].size)


def test_pull_head_manifest_by_tag_200(pc):
    """01_pull_test.go:185 "HEAD request to manifest path (tag) should yield 200 response"."""
    r = get(pc, f"manifests/{TEST_TAG}", "HEAD", OCI_MANIFEST)
    assert r.status == 200
    assert r.headers.get("docker-content-digest") == FIX.manifests[0].digest
    assert r.headers.get("content-length") == str(FIX.manifests[0].size)


def test_pull_get_nonexistent_manifest_404(pc):
    """01_pull_test.go:198 "GET nonexistent manifest should return 404" (reference
    ``.INVALID_MANIFEST_NAME``). spec "Pulling manifests": not found → 404."""
    r = get(pc, f"manifests/{NONEXISTENT_MANIFEST}")
    assert r.status == 404
    assert r.error_codes == ["MANIFEST_UNKNOWN"]


@pytest.mark.parametrize("i", [0, 1])
def test_pull_get_manifest_by_digest_200(pc, i):
    """01_pull_test.go:207 / :216 "GET request to manifest[0|1] path (digest) should yield
    200 response". spec "Pulling manifests": 200 with the expected manifest."""
    r = get(pc, f"manifests/{FIX.manifests[i].digest}", accept=OCI_MANIFEST)
    assert r.status == 200
    assert r.body == FIX.manifests[i].manifest


def test_pull_get_manifest_by_tag_200(pc):
    """01_pull_test.go:225 "GET request to manifest path (tag) should yield 200 response"."""
    r = get(pc, f"manifests/{TEST_TAG}", accept=OCI_MANIFEST)
    assert r.status == 200
    assert r.body == FIX.manifests[0].manifest


def test_pull_error_400_body_is_oci_json(pc):
    """01_pull_test.go:237 "400 response body should contain OCI-conforming JSON message":
    GET manifests/sha256:totallywrong answers 400 or 404; a 400's first error code is one of
    setup.go's errorCodes. spec "Error Codes"."""
    r = request(pc.url, f"/v2/{REPO}/manifests/sha256:totallywrong", method="GET",
                headers={"Content-Type": OCI_MANIFEST})
    # The suite takes either status; pullcache's is fixed, and either way the body is the
    # OCI error envelope (the suite checks it only on a 400).
    assert r.status == 400, r.body
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["errors"] and r.error_codes[0] in ERROR_CODES


# == Content discovery (03_discovery_test.go) ==================================================

def _tags(r) -> list[str]:
    return r.json()["tags"]


def test_discovery_setup_tags_no_push(pc):
    """03_discovery_test.go:82 "Populate registry with test tags (no push)"
    (RunOnlyIfNot(runContentDiscoverySetup)): OCI_TAG_LIST gives the tags. Here the
    fixture's tags, which the discovery checks below rely on: each one resolves through
    pullcache to the manifest pushed under it."""
    for tag in [f"test{i}" for i in range(NUM_TAGS)]:
        r = get(pc, f"manifests/{tag}", accept=OCI_MANIFEST)
        assert (r.status, r.body) == (200, FIX.manifests[2].manifest), tag


def test_discovery_list_tags_200(pc):
    """03_discovery_test.go:256 "GET request to list tags should yield 200 response".
    spec "Listing Tags" (end-8a): 200, tags in lexical order."""
    r = get(pc, "tags/list")
    assert r.status == 200
    tags = _tags(r)
    assert {f"test{i}" for i in range(NUM_TAGS)} <= set(tags) and tags == sorted(tags)


def test_discovery_tags_limited_by_n(pc):
    """03_discovery_test.go:266 "GET number of tags should be limitable by `n` query
    parameter". spec end-8b: "the response MUST include <int> results"."""
    num_tags = len(_tags(get(pc, "tags/list")))
    n = num_tags // 2
    r = get(pc, f"tags/list?n={n}")
    assert r.status == 200
    assert len(_tags(r)) == n


def test_discovery_tags_start_after_last(pc):
    """03_discovery_test.go:279 "GET start of tag is set by `last` query parameter".
    spec end-8b: up to <int> tags after <tagname>, non-inclusive."""
    all_tags = _tags(get(pc, "tags/list"))
    n = len(all_tags) // 2
    first = _tags(get(pc, f"tags/list?n={n}"))
    r = get(pc, f"tags/list?n={n}&last={first[n - 1]}")
    assert r.status == 200
    # The suite asserts ``len(first) <= n`` and ``first[n-1] in first`` (true whatever the
    # answer); what they mean: the first page is the first n tags, the next page starts
    # right after its last one.
    assert n >= 2 and first == all_tags[:n]
    assert _tags(r) == all_tags[n:2 * n] and first[n - 1] not in _tags(r)


def _index(r) -> list[dict]:
    assert r.status == 200, r.body
    assert r.headers["content-type"] == OCI_INDEX
    return r.json()["manifests"]


def test_discovery_referrers_nonexistent_blob_empty_200(pc):
    """03_discovery_test.go:300 "GET request to nonexistent blob should result in empty 200
    response". spec "Listing Referrers": "MUST NOT return a 404"; no match → empty list."""
    assert _index(get(pc, f"referrers/{DUMMY_DIGEST}")) == []


def test_discovery_referrers_existing_200(pc):
    """03_discovery_test.go:315 "GET request to existing blob should yield 200": five
    referrers, each with its one annotation. spec "Listing Referrers": descriptors carry
    ``artifactType`` and the manifest's annotations."""
    found = _index(get(pc, f"referrers/{FIX.manifests[4].digest}"))
    assert len(found) == 5
    assert found[0]["digest"] != found[1]["digest"]
    for desc in found:
        assert len(desc["annotations"]) == 1
        assert desc["annotations"][ANNOTATION] == FIX.annotations[desc["digest"]]


def test_discovery_referrers_filtered_200(pc):
    """03_discovery_test.go:335 "GET request to existing blob with filter should yield 200".
    spec end-12b: "If filtering is requested and applied, the response MUST include a header
    OCI-Filters-Applied: artifactType"; pullcache always applies it (2 of type A)."""
    r = get(pc, f"referrers/{FIX.manifests[4].digest}?artifactType={quote(TYPE_A)}")
    found = _index(r)
    assert r.headers.get("oci-filters-applied") == "artifactType"
    assert len(found) == 2
    for desc in found:
        assert len(desc["annotations"]) == 1
        assert desc["annotations"][ANNOTATION] == FIX.annotations[desc["digest"]]


def test_discovery_referrers_missing_manifest_200(pc):
    """03_discovery_test.go:367 "GET request to missing manifest should yield 200": the
    subject was never pushed, its one referrer (C) is listed. spec "Listing Referrers"."""
    found = _index(get(pc, f"referrers/{FIX.manifests[3].digest}"))
    assert [d["digest"] for d in found] == [FIX.refs["c_layer"].digest]
