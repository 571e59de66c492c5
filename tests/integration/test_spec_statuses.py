"""Every route of distribution-spec v1.1.1's endpoint table (end-1 … end-13), each malformed
part, the status and code pullcache answers, in front of the real Distribution 2.8.

The rule: a malformed part is a 400 with the spec's code naming it (code-4 DIGEST_INVALID,
code-8 NAME_INVALID), except an invalid *tag* on end-3: the reference grammar makes it a
tag that cannot exist, so it is the 404 MANIFEST_UNKNOWN that end-3 lists (the conformance
suite asks ``.INVALID_MANIFEST_NAME`` for exactly that). Referrers (end-12a) with a bad
digest: "a 400 Bad Request MUST be returned". Pushes and deletes: a pull-through cache
offers none: 405 UNSUPPORTED (code-13) with ``Allow: GET, HEAD`` (RFC 9110 §15.5.6); end-9
and end-10 list 405 for a registry with deletes disabled, and the spec's content-management
text ("MUST respond with either a 400 Bad Request or a 405 Method Not Allowed"); the push
endpoints have no read-only case in the spec, so they answer the same. end-13 (GET an upload
session) is a 404 BLOB_UPLOAD_UNKNOWN: no session exists here.
"""

from __future__ import annotations

import pytest

from tests.support.daemon import Pullcache, UpstreamSpec
from tests.support.http import request

SPEC_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
              "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
              "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED",
              "TOOMANYREQUESTS"}
# distribution-spec "Legacy Docker support error codes": MAY be met, clients SHOULD NOT
# depend on them. Distribution answers a bad ``n`` with this one; so do we.
LEGACY_CODES = {"PAGINATION_NUMBER_INVALID"}
HEX = "0" * 64
BAD_DIGESTS = ["sha256:totallywrong", "notadigest", "md5:" + "0" * 32, "sha256:" + "A" * 64]
BAD_TAGS = [".INVALID_MANIFEST_NAME", "-dash", "bad!tag", "t" * 129]
BAD_NAMES = ["UPPER", "a..b", "trailing-", "-lead"]

# (endpoint id, method, path, malformed part, status, code)
TABLE = [
    ("end-1", "GET", "/v2/", "-", 200, None),
    *[("end-2", m, f"/v2/ok/blobs/{d}", "digest", 400, "DIGEST_INVALID")
      for m in ("GET", "HEAD") for d in BAD_DIGESTS],
    *[("end-2", m, f"/v2/{n}/blobs/sha256:{HEX}", "name", 400, "NAME_INVALID")
      for m in ("GET", "HEAD") for n in BAD_NAMES],
    ("end-2", "GET", f"/v2/ok/blobs/sha256:{HEX}", "unknown", 404, "BLOB_UNKNOWN"),
    *[("end-3", m, f"/v2/ok/manifests/{t}", "tag", 404, "MANIFEST_UNKNOWN")
      for m in ("GET", "HEAD") for t in BAD_TAGS],
    *[("end-3", m, f"/v2/ok/manifests/{d}", "digest", 400, "DIGEST_INVALID")
      for m in ("GET", "HEAD") for d in BAD_DIGESTS if ":" in d],
    *[("end-3", m, f"/v2/{n}/manifests/latest", "name", 400, "NAME_INVALID")
      for m in ("GET", "HEAD") for n in BAD_NAMES],
    ("end-3", "GET", "/v2/ok/manifests/nosuchtag", "unknown", 404, "MANIFEST_UNKNOWN"),
    *[("end-8a", "GET", f"/v2/{n}/tags/list", "name", 400, "NAME_INVALID") for n in BAD_NAMES],
    ("end-8a", "GET", "/v2/ok/tags/list", "unknown", 404, "NAME_UNKNOWN"),
    *[("end-8b", "GET", f"/v2/ok/tags/list?n={n}", "n", 400, "PAGINATION_NUMBER_INVALID")
      for n in ("-1", "abc", "1.5")],
    *[("end-12a", "GET", f"/v2/ok/referrers/{d}", "digest", 400, "DIGEST_INVALID")
      for d in BAD_DIGESTS],
    *[("end-12a", "GET", f"/v2/{n}/referrers/sha256:{HEX}", "name", 400, "NAME_INVALID")
      for n in BAD_NAMES],
    ("end-12a", "GET", f"/v2/ok/referrers/sha256:{HEX}", "unknown", 200, None),
    ("end-12b", "GET", f"/v2/ok/referrers/sha256:{HEX}?artifactType=a%2Fb", "unknown", 200,
     None),
    ("end-12b", "GET", "/v2/ok/referrers/bad?artifactType=a%2Fb", "digest", 400,
     "DIGEST_INVALID"),
    ("end-4a", "POST", "/v2/ok/blobs/uploads/", "push", 405, "UNSUPPORTED"),
    ("end-4b", "POST", f"/v2/ok/blobs/uploads/?digest=sha256:{HEX}", "push", 405, "UNSUPPORTED"),
    ("end-5", "PATCH", "/v2/ok/blobs/uploads/abc", "push", 405, "UNSUPPORTED"),
    ("end-6", "PUT", f"/v2/ok/blobs/uploads/abc?digest=sha256:{HEX}", "push", 405,
     "UNSUPPORTED"),
    ("end-7", "PUT", "/v2/ok/manifests/latest", "push", 405, "UNSUPPORTED"),
    ("end-9", "DELETE", f"/v2/ok/manifests/sha256:{HEX}", "delete", 405, "UNSUPPORTED"),
    ("end-9", "DELETE", "/v2/ok/manifests/latest", "delete", 405, "UNSUPPORTED"),
    ("end-10", "DELETE", f"/v2/ok/blobs/sha256:{HEX}", "delete", 405, "UNSUPPORTED"),
    ("end-11", "POST", f"/v2/ok/blobs/uploads/?mount=sha256:{HEX}&from=other", "push", 405,
     "UNSUPPORTED"),
    ("end-13", "GET", "/v2/ok/blobs/uploads/abc", "upload", 404, "BLOB_UPLOAD_UNKNOWN"),
]


@pytest.fixture(scope="module")
def pc(registry, tmp_path_factory):
    """One pullcache for the whole table (each row is one request)."""
    with Pullcache(tmp_path_factory.mktemp("statuses"),
                   [UpstreamSpec(registry.host, registry.url, default=True)]) as started:
        yield started


@pytest.mark.parametrize("endpoint,method,path,part,status,code", TABLE,
                         ids=[f"{e}-{m}-{p}-{i}" for i, (e, m, _, p, _, _) in enumerate(TABLE)])
def test_status_table(pc, endpoint, method, path, part, status, code):
    r = request(pc.url, path, method=method)
    assert r.status == status, (endpoint, method, path, r.status, r.body)
    if status == 405:
        assert r.headers["allow"] == "GET, HEAD"
    if method == "HEAD":
        assert r.body == b""
    elif code is not None:
        assert r.headers["content-type"].startswith("application/json")
        assert r.error_codes == [code], (path, r.body)
        assert code in SPEC_CODES | LEGACY_CODES
