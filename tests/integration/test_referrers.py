"""Referrers through pullcache (distribution-spec v1.1.1 "Listing Referrers", end-12a/b).

Distribution 2.8 lacks the referrers API: pullcache answers from the "Referrers Tag Schema"
index a fallback-aware client pushed. ``ReferrersRegistry`` has the API: pullcache serves
its list, keeps it ``referrers_ttl``, and serves it stale when that upstream is down.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.support.daemon import UpstreamSpec
from tests.support.http import request
from tests.support.images import (build_artifact, build_image, build_referrers_index, push,
                                  referrer_descriptor, referrers_tag)
from tests.support.referrersregistry import ReferrersRegistry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SIGNATURE = "application/vnd.dev.cosign.simplesigning.v1+json"
SBOM = "application/spdx+json"
UNKNOWN_SUBJECT = "sha256:" + "0" * 64


def signed(seed: str):
    """A subject image, a signature-like and an SBOM-like artifact referring to it, and the
    tag-schema index listing both."""
    subject = build_image(seed, layer_sizes=(1024,))
    signature = build_artifact(subject, SIGNATURE, b'{"critical":{}}' + seed.encode(),
                               annotations={"dev.sigstore.cosign/signature": "MEUCIQ" + seed})
    sbom = build_artifact(subject, SBOM, b'{"spdxVersion":"SPDX-2.3"}' + seed.encode(),
                          annotations={"org.example.sbom.format": "spdx"})
    return subject, signature, sbom, build_referrers_index([signature, sbom])


def push_signed(registry, repo: str, seed: str):
    subject, signature, sbom, index = signed(seed)
    push(registry, repo, "v1", subject)
    push(registry, repo, referrers_tag(subject.digest), index)   # children by digest first
    return subject, signature, sbom


def referrers(pc, repo: str, subject: str, query: str = ""):
    r = request(pc.url, f"/v2/{repo}/referrers/{subject}{query}")
    assert r.status == 200, r.body
    assert r.headers["content-type"] == OCI_INDEX
    doc = r.json()
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == OCI_INDEX
    return r, doc["manifests"]


# -- an upstream without the API: the tag-schema fallback ------------------------------------

@pytest.fixture(scope="module")
def fallback_images(registry):
    return push_signed(registry, "refs/app", "refs-fallback")


def test_fallback_lists_the_tag_schema_index(pullcache, fallback_images):
    subject, signature, sbom = fallback_images
    r, found = referrers(pullcache, "refs/app", subject.digest)
    assert found == [referrer_descriptor(signature), referrer_descriptor(sbom)]
    assert "oci-filters-applied" not in r.headers


def test_fallback_filters_by_artifact_type(pullcache, fallback_images):
    subject, _, sbom = fallback_images
    r, found = referrers(pullcache, "refs/app", subject.digest, f"?artifactType={quote(SBOM)}")
    assert found == [referrer_descriptor(sbom)]
    assert r.headers["oci-filters-applied"] == "artifactType"
    r, found = referrers(pullcache, "refs/app", subject.digest, "?artifactType=application/none")
    assert found == [] and r.headers["oci-filters-applied"] == "artifactType"


def test_unknown_subject_is_an_empty_index(pullcache, fallback_images):
    _, found = referrers(pullcache, "refs/app", UNKNOWN_SUBJECT)
    assert found == []
    _, found = referrers(pullcache, "refs/no-such-repo", UNKNOWN_SUBJECT)
    assert found == []


def test_a_tag_that_is_no_index_means_no_referrers(pullcache, registry):
    subject = build_image("refs-not-index", layer_sizes=(512,))
    push(registry, "refs/odd", "v1", subject)
    push(registry, "refs/odd", referrers_tag(subject.digest), build_image("refs-odd-tag"))
    _, found = referrers(pullcache, "refs/odd", subject.digest)
    assert found == []


def test_malformed_subject_is_400_digest_invalid(pullcache):
    for bad in ("notadigest", "sha256:short", "md5:" + "0" * 32):
        r = request(pullcache.url, f"/v2/refs/app/referrers/{bad}")
        assert r.status == 400 and r.error_codes == ["DIGEST_INVALID"], (bad, r.body)


def test_fallback_is_a_tag_served_stale_and_referrers_are_cache_hits(make_pullcache, registry,
                                                                     fault_proxy):
    subject, signature, sbom = push_signed(registry, "refs/stale", "refs-stale")
    pc = make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                     extra={"tag_ttl": 0, "stale_while_revalidate": "0s",
                                            "referrers_ttl": "1h",
                                            "breaker_failures": 100}))
    _, found = referrers(pc, "refs/stale", subject.digest)
    assert [d["digest"] for d in found] == [signature.digest, sbom.digest]
    # The API was asked once; the tag schema then went through the normal tag path.
    assert fault_proxy.count(substring=f"/referrers/{subject.digest}") == 1
    assert fault_proxy.count("HEAD", f"/manifests/{referrers_tag(subject.digest)}") == 1
    for desc in found:   # a verifier pulls each referrer by digest: cached like any manifest
        r = request(pc.url, f"/v2/refs/stale/manifests/{desc['digest']}")
        assert r.status == 200 and r.sha256 == desc["digest"]

    # tag_ttl = 0: the next answer revalidates the tag (HEAD); the API, known missing for
    # referrers_ttl, is not asked again.
    referrers(pc, "refs/stale", subject.digest)
    assert fault_proxy.count(substring=f"/referrers/{subject.digest}") == 1
    assert fault_proxy.count("HEAD", f"/manifests/{referrers_tag(subject.digest)}") == 2

    fault_proxy.set_fault("status", match="/v2/", status=503)
    before = fault_proxy.count()
    hits = pc.metric("pullcache_requests_total", kind="manifest", outcome="hit")
    r, found = referrers(pc, "refs/stale", subject.digest)
    assert r.headers["warning"].startswith("299 - ")
    assert [d["digest"] for d in found] == [signature.digest, sbom.digest]
    for desc in found:
        r = request(pc.url, f"/v2/refs/stale/manifests/{desc['digest']}")
        assert r.status == 200 and r.sha256 == desc["digest"]
    assert pc.metric("pullcache_requests_total", kind="manifest", outcome="hit") == hits + 2
    assert pc.metric("pullcache_requests_total", kind="referrers", outcome="tag:stale") == 1
    assert fault_proxy.count() == before + 1   # the one revalidation that found it down


# -- an upstream with the API ----------------------------------------------------------------

@pytest.fixture
def api_upstream():
    with ReferrersRegistry(page_size=1) as up:
        yield up


def api_images(up: ReferrersRegistry, seed: str):
    subject, signature, sbom, _ = signed(seed)
    up.put("app", subject, tag="v1")
    up.put("app", signature)
    up.put("app", sbom)
    return subject, signature, sbom


def test_api_upstream_list_is_served_whole_and_kept(make_pullcache, api_upstream):
    subject, signature, sbom = api_images(api_upstream, "refs-api")
    pc = make_pullcache(UpstreamSpec(api_upstream.host, api_upstream.url,
                                     extra={"referrers_ttl": "1h"}))
    r, found = referrers(pc, "app", subject.digest)
    # The upstream pages one entry at a time; pullcache followed its Link and answers whole.
    assert found == [referrer_descriptor(signature), referrer_descriptor(sbom)]
    assert "link" not in r.headers
    assert api_upstream.count(f"/referrers/{subject.digest}") == 2
    assert api_upstream.count("/manifests/sha256-") == 0     # no fallback with the API

    r, found = referrers(pc, "app", subject.digest, f"?artifactType={quote(SIGNATURE)}")
    assert found == [referrer_descriptor(signature)]
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert api_upstream.count(f"/referrers/{subject.digest}") == 2   # kept for referrers_ttl
    assert pc.metric("pullcache_requests_total", kind="referrers", outcome="api:miss") == 1
    assert pc.metric("pullcache_requests_total", kind="referrers", outcome="api:hit") == 1

    _, found = referrers(pc, "app", UNKNOWN_SUBJECT)
    assert found == []


def test_api_upstream_down_serves_the_kept_list_stale(make_pullcache, api_upstream):
    subject, signature, sbom = api_images(api_upstream, "refs-api-stale")
    pc = make_pullcache(UpstreamSpec(api_upstream.host, api_upstream.url,
                                     extra={"referrers_ttl": 0, "tag_ttl": "1h"}))
    _, found = referrers(pc, "app", subject.digest)
    assert len(found) == 2
    for desc in found:
        assert request(pc.url, f"/v2/app/manifests/{desc['digest']}").status == 200

    api_upstream.down = True
    r, stale = referrers(pc, "app", subject.digest, f"?artifactType={quote(SBOM)}")
    assert r.headers["warning"].startswith("299 - ")
    assert stale == [referrer_descriptor(sbom)]
    r = request(pc.url, f"/v2/app/manifests/{sbom.digest}")
    assert r.status == 200 and r.sha256 == sbom.digest
    # Nothing kept for this subject: the failure is told, not hidden behind an empty list.
    assert request(pc.url, f"/v2/app/referrers/{UNKNOWN_SUBJECT}").status == 503


def test_serve_stale_off_tells_the_failure(make_pullcache, api_upstream):
    subject, _, _ = api_images(api_upstream, "refs-api-nostale")
    pc = make_pullcache(UpstreamSpec(api_upstream.host, api_upstream.url,
                                     extra={"referrers_ttl": 0, "serve_stale": False}))
    referrers(pc, "app", subject.digest)
    api_upstream.down = True
    assert request(pc.url, f"/v2/app/referrers/{subject.digest}").status == 503
