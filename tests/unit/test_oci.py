"""pullcache.oci: digests, names, references, Accept negotiation, manifest media types."""

from __future__ import annotations

import hashlib

import pytest

from pullcache.errors import DigestInvalid, NameInvalid, TagInvalid
from pullcache.oci import (
    DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Digest, accepts, is_digest_reference,
    manifest_media_type, parse_accept, parse_reference, validate_name)

HEX256 = hashlib.sha256(b"layer").hexdigest()
HEX512 = hashlib.sha512(b"layer").hexdigest()
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# --- Digest.parse ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, algorithm, hex_", [
    (f"sha256:{HEX256}", "sha256", HEX256),
    (f"sha512:{HEX512}", "sha512", HEX512),
])
def test_digest_parse_accepts_registered_algorithms(text, algorithm, hex_):
    digest = Digest.parse(text)
    assert (digest.algorithm, digest.hex) == (algorithm, hex_)
    assert str(digest) == text


@pytest.mark.parametrize("text", [
    "",
    "sha256",
    "sha256:",
    ":" + HEX256,
    f"md5:{hashlib.md5(b'layer').hexdigest()}",       # well-formed, but not an algorithm we verify
    f"sha1:{hashlib.sha1(b'layer').hexdigest()}",
    f"sha256:{HEX256.upper()}",                       # encoded part must be lower-case hex
    f"SHA256:{HEX256}",
    f"sha256:{HEX256[:-1]}",                          # 63 hex
    f"sha256:{HEX256}0",                              # 65 hex
    f"sha512:{HEX256}",                               # sha512 needs 128 hex
    f"sha256:{HEX512}",
    "sha256:totallywrong",
    "sha256:../../../../etc/passwd",
    f"../sha256:{HEX256}",
    f"sha256:{HEX256[:32]}/../{HEX256[:29]}",
    f"sha256:{HEX256}/..",
    f" sha256:{HEX256}",
    f"sha256:{HEX256}\n",
    f"sha256:{HEX256[:-1]}g",
])
def test_digest_parse_rejects(text):
    with pytest.raises(DigestInvalid) as info:
        Digest.parse(text)
    assert info.value.status == 400
    assert info.value.code == "DIGEST_INVALID"


def test_digest_parse_rejects_none():
    with pytest.raises(DigestInvalid):
        Digest.parse(None)  # type: ignore[arg-type]


def test_digest_of_known_vectors():
    assert str(Digest.of(b"")) == f"sha256:{EMPTY_SHA256}"
    assert Digest.of(b"layer", "sha512") == Digest("sha512", HEX512)


def test_digest_matches_only_its_content():
    digest = Digest.parse(f"sha256:{HEX256}")
    assert digest.matches(b"layer")
    assert not digest.matches(b"layer ")
    assert not digest.matches(b"")
    assert Digest("sha512", HEX512).matches(b"layer")


def test_digest_hasher_uses_its_algorithm():
    hasher = Digest("sha512", HEX512).hasher()
    hasher.update(b"layer")
    assert hasher.hexdigest() == HEX512


def test_digests_are_values():
    assert Digest.parse(f"sha256:{HEX256}") == Digest.of(b"layer")
    assert len({Digest.of(b"layer"), Digest.parse(f"sha256:{HEX256}")}) == 1


# --- names --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "a", "0", "alpine", "library/alpine", "a/b/c/d", "a.b", "a_b", "a__b", "a-b", "a---b",
    "my-org/my.app_v2", "a1/b2", "a" * 255,
])
def test_validate_name_accepts_spec_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", "A", "Library/alpine", "a/", "/a", "a//b", "a.", ".a", "a..b", "a___b", "a_.b",
    "a-", "-a", "_a", "a b", "a:b", "a@b", "a/../b", "a" * 256,
    "/".join(["abcdefghi"] * 26),                     # 259 characters of valid components
])
def test_validate_name_rejects(name):
    with pytest.raises(NameInvalid) as info:
        validate_name(name)
    assert info.value.status == 400


# --- references -----------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["latest", "3.20", "v1.0.0-rc1", "_x", "A", "a" * 128,
                                 "A" + "b_.-" * 31 + "xyz"])
def test_parse_reference_accepts_tags(tag):
    assert parse_reference(tag) == tag


@pytest.mark.parametrize("tag", ["", "a" * 129, ".x", "-x", "a/b", "a b", "a+b", "ä"])
def test_parse_reference_rejects_bad_tags(tag):
    with pytest.raises(TagInvalid):
        parse_reference(tag)


def test_parse_reference_parses_digests():
    assert parse_reference(f"sha256:{HEX256}") == Digest("sha256", HEX256)


def test_parse_reference_with_a_colon_is_a_digest_and_must_be_valid():
    assert is_digest_reference("foo:bar")
    assert not is_digest_reference("latest")
    with pytest.raises(DigestInvalid):
        parse_reference("foo:bar")


# --- Accept --------------------------------------------------------------------------------

def test_parse_accept_one_line_per_type_keeps_order():
    lines = [OCI_INDEX, DOCKER_MANIFEST, OCI_MANIFEST]
    assert parse_accept(lines) == (OCI_INDEX, DOCKER_MANIFEST, OCI_MANIFEST)


def test_parse_accept_comma_list_with_params_case_and_duplicates():
    lines = [
        f"{DOCKER_MANIFEST}, {DOCKER_LIST};q=0.9 , Application/VND.OCI.Image.Manifest.v1+JSON",
        f"{OCI_MANIFEST}; q=0.5, */*;q=0.1",
        f"{DOCKER_MANIFEST}",
        " , ;q=1,",
    ]
    assert parse_accept(lines) == (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, "*/*")


def test_parse_accept_nothing():
    assert parse_accept([]) == ()
    assert parse_accept([""]) == ()


@pytest.mark.parametrize("accept, media_type, expected", [
    ((), OCI_MANIFEST, True),
    (("*/*",), DOCKER_LIST, True),
    (("application/*",), OCI_INDEX, True),
    ((OCI_MANIFEST,), OCI_MANIFEST, True),
    ((OCI_MANIFEST,), OCI_MANIFEST.upper(), True),
    ((DOCKER_MANIFEST, OCI_INDEX), OCI_INDEX, True),
    ((OCI_MANIFEST,), OCI_INDEX, False),
    ((DOCKER_MANIFEST,), DOCKER_LIST, False),
    (("text/*",), OCI_MANIFEST, False),
    (("application/json",), OCI_MANIFEST, False),
])
def test_accepts(accept, media_type, expected):
    assert accepts(accept, media_type) is expected


# --- manifest media type -----------------------------------------------------------------------

OCI_BODY = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}'


@pytest.mark.parametrize("body, content_type, expected", [
    (OCI_BODY, DOCKER_LIST, DOCKER_LIST),                 # upstream's header wins, exactly
    (OCI_BODY, f"{DOCKER_MANIFEST}; charset=utf-8", DOCKER_MANIFEST),
    (OCI_BODY, "application/octet-stream", OCI_INDEX),    # generic header: use the field
    (OCI_BODY, "text/plain; charset=utf-8", OCI_INDEX),
    (OCI_BODY, None, OCI_INDEX),
    (OCI_BODY, "", OCI_INDEX),
    (b'{"schemaVersion":2}', None, OCI_MANIFEST),         # nothing says: OCI manifest
    (b'{"schemaVersion":2}', "application/octet-stream", "application/octet-stream"),
    (b'{"mediaType": 7}', None, OCI_MANIFEST),
    (b'{"mediaType": ""}', None, OCI_MANIFEST),
    (b"[1, 2]", None, OCI_MANIFEST),
    (b'"just a string"', None, OCI_MANIFEST),
    (b"not json", "text/plain", "text/plain"),
    (b"\xff\xfe\x00garbage", None, OCI_MANIFEST),
])
def test_manifest_media_type(body, content_type, expected):
    assert manifest_media_type(body, content_type) == expected
