"""A hit and a fill answer alike: one Range policy, one ETag (the digest), for every case.

Each case gets its own blob, so its first GET is served by the fill (a miss) and its second,
once committed, from disk (a hit); both answers must be identical: status, headers, body.
"""

from __future__ import annotations

import pytest

from tests.support.http import request
from tests.support.images import build_raw_blob_image, push

SIZE = 64 * 1024
VOLATILE = {"date", "x-request-id"}

CASES = {
    "no range": {},
    "bytes=0-": {"Range": "bytes=0-"},
    "bytes=5-9": {"Range": "bytes=5-9"},
    "suffix": {"Range": "bytes=-10"},
    "open end": {"Range": "bytes=1000-"},
    "last beyond the end": {"Range": f"bytes=10-{SIZE * 2}"},
    "past the end": {"Range": f"bytes={SIZE}-"},
    "empty suffix": {"Range": "bytes=-0"},
    "inverted": {"Range": "bytes=9-5"},
    "multi-range": {"Range": "bytes=0-1,5-6"},
    "garbage": {"Range": "bytes=abc"},
    "other unit": {"Range": "items=0-5"},
    "if-range matches": {"Range": "bytes=5-9", "If-Range": "ETAG"},
    "if-range differs": {"Range": "bytes=5-9", "If-Range": '"sha256:0000"'},
    "if-range date": {"Range": "bytes=5-9", "If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"},
}

EXPECTED = {   # status, body slice (None: an error envelope)
    "no range": (200, slice(0, SIZE)),
    "bytes=0-": (206, slice(0, SIZE)),
    "bytes=5-9": (206, slice(5, 10)),
    "suffix": (206, slice(SIZE - 10, SIZE)),
    "open end": (206, slice(1000, SIZE)),
    "last beyond the end": (206, slice(10, SIZE)),
    "past the end": (416, None),
    "empty suffix": (416, None),
    "inverted": (200, slice(0, SIZE)),
    "multi-range": (200, slice(0, SIZE)),
    "garbage": (200, slice(0, SIZE)),
    "other unit": (200, slice(0, SIZE)),
    "if-range matches": (206, slice(5, 10)),
    "if-range differs": (200, slice(0, SIZE)),
    "if-range date": (200, slice(0, SIZE)),
}


def _comparable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in VOLATILE}


def test_every_range_case_is_answered_the_same_by_a_fill_and_a_hit(pullcache, registry):
    outcomes = []
    for i, (name, case) in enumerate(CASES.items()):
        image = build_raw_blob_image(f"ranges-{i}", SIZE)
        push(registry, "ranges/table", f"c{i}", image)
        layer = image.layers[0]
        path = f"/v2/ranges/table/blobs/{layer.digest}"
        headers = {k: (f'"{layer.digest}"' if v == "ETAG" else v) for k, v in case.items()}
        misses = pullcache.metric("pullcache_requests_total", kind="blob", outcome="miss")
        fill = request(pullcache.url, path, headers=headers)
        assert pullcache.metric("pullcache_requests_total", kind="blob",
                                outcome="miss") == misses + 1, f"{name}: not a fill"
        pullcache.wait_committed(layer.digest)
        hits = pullcache.metric("pullcache_requests_total", kind="blob", outcome="hit")
        hit = request(pullcache.url, path, headers=headers)
        assert pullcache.metric("pullcache_requests_total", kind="blob",
                                outcome="hit") == hits + 1, f"{name}: not a hit"

        assert (fill.status, _comparable(fill.headers), fill.body) == \
            (hit.status, _comparable(hit.headers), hit.body), name
        status, part = EXPECTED[name]
        assert hit.status == status, name
        if part is None:
            assert hit.headers["content-range"] == f"bytes */{SIZE}", name
            assert hit.error_codes, name
        else:
            assert hit.body == layer.data[part], name
            assert hit.headers["etag"] == f'"{layer.digest}"', name
            assert hit.headers["content-length"] == str(part.stop - part.start), name
            if status == 206:
                assert hit.headers["content-range"] == \
                    f"bytes {part.start}-{part.stop - 1}/{SIZE}", name
            else:
                assert "content-range" not in hit.headers, name
        outcomes.append(name)
    assert outcomes == list(CASES)


@pytest.mark.parametrize("method", ["HEAD"])
def test_head_of_a_hit_and_a_fill_carry_the_same_headers(pullcache, registry, method):
    image = build_raw_blob_image("ranges-head", SIZE)
    push(registry, "ranges/head", "v1", image)
    layer = image.layers[0]
    path = f"/v2/ranges/head/blobs/{layer.digest}"
    before = request(pullcache.url, path, method=method)        # not cached: asks upstream
    assert request(pullcache.url, path).status == 200            # now cached
    after = request(pullcache.url, path, method=method)
    assert _comparable(before.headers) == _comparable(after.headers)
    assert after.headers["etag"] == f'"{layer.digest}"'
