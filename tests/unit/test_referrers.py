"""Referrers pieces free of I/O: the tag schema name, descriptor lists, the index body, and
how an upstream's "no referrers API here" reads."""

from __future__ import annotations

import json

import pytest

from pullcache import errors
from pullcache.oci import OCI_INDEX, Digest, TAG_RE, referrer_descriptors, referrers_index, \
    referrers_tag
from pullcache.upstream.failures import error_for

HEX256 = "ab" * 32
HEX512 = "cd" * 64


def test_referrers_tag_is_alg_dash_encoded():
    # distribution-spec v1.1.1 "Referrers Tag Schema": <alg>-<ref>, e.g. sha256-aaaa…
    assert referrers_tag(Digest("sha256", HEX256)) == f"sha256-{HEX256}"


def test_referrers_tag_truncates_the_encoded_part_to_64():
    tag = referrers_tag(Digest("sha512", HEX512))
    assert tag == f"sha512-{HEX512[:64]}"
    assert TAG_RE.fullmatch(tag)


def test_referrers_tag_sanitises_what_the_tag_grammar_refuses():
    tag = referrers_tag(Digest("sha256+b64u", "a=b"))
    assert tag == "sha256-b64u-a-b" and TAG_RE.fullmatch(tag)


def _desc(digest: str, artifact_type: str | None = None, **extra) -> dict:
    d = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
         "size": 10, **extra}
    if artifact_type:
        d["artifactType"] = artifact_type
    return d


def test_referrer_descriptors_keeps_well_formed_entries_only():
    good = _desc(f"sha256:{HEX256}", "application/x.sig", annotations={"k": "v"})
    other_alg = _desc("sha384:" + "0" * 96)
    body = json.dumps({"schemaVersion": 2, "manifests": [
        good, other_alg, {"digest": "nope"}, "junk", _desc(f"sha256:{HEX256}") | {"size": "1"},
    ]}).encode()
    assert referrer_descriptors(body) == [good, other_alg]


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"manifests": {}}', b"{}"])
def test_referrer_descriptors_of_anything_else_is_empty(body):
    assert referrer_descriptors(body) == []


def test_referrers_index_is_a_valid_index_filtered_by_artifact_type():
    sig, sbom = _desc("sha256:" + "1" * 64, "application/x.sig"), _desc("sha256:" + "2" * 64)
    whole = json.loads(referrers_index([sig, sbom]))
    assert whole == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [sig, sbom]}
    assert json.loads(referrers_index([sig, sbom], "application/x.sig"))["manifests"] == [sig]
    assert json.loads(referrers_index([], "application/x.sig"))["manifests"] == []


@pytest.mark.parametrize("status,body", [
    (405, b""),
    (400, b'{"errors":[{"code":"UNSUPPORTED","message":"no"}]}'),
])
def test_an_unsupported_upstream_answer_is_unsupported(status, body):
    assert isinstance(error_for(status, {}, body, errors.ManifestUnknown, "up"),
                      errors.Unsupported)


def test_a_server_error_stays_an_upstream_failure():
    err = error_for(500, {}, b'{"errors":[{"code":"UNSUPPORTED"}]}', errors.ManifestUnknown, "up")
    assert isinstance(err, errors.UPSTREAM_FAILURES)
