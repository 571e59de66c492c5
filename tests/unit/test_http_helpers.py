"""pullcache.server.routes: the pure helpers (Range, tags/list pagination)."""

from __future__ import annotations

import pytest

from pullcache.errors import PaginationInvalid, RangeInvalid
from pullcache.server.ranges import parse_range, wanted
from pullcache.server.routes import paginate, parse_n

SIZE = 1000


# --- parse_range -----------------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    ("bytes=0-", (0, SIZE)),
    ("bytes=500-", (500, SIZE)),
    ("bytes=999-", (999, SIZE)),
    ("bytes=0-0", (0, 1)),
    ("bytes=0-99", (0, 100)),
    ("bytes=100-199", (100, 200)),
    ("bytes=900-5000", (900, SIZE)),       # last beyond the end: clipped
    ("bytes=-1", (999, SIZE)),             # suffix: the last N bytes
    ("bytes=-100", (900, SIZE)),
    ("bytes=-5000", (0, SIZE)),
    ("  bytes=10-19  ", (10, 20)),
])
def test_satisfiable_ranges(header, expected):
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1005", "bytes=5000-", "bytes=-0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(RangeInvalid) as info:
        parse_range(header, SIZE)
    assert info.value.status == 416
    assert info.value.headers == {"Content-Range": f"bytes */{SIZE}"}


def test_any_range_of_an_empty_blob_is_unsatisfiable():
    with pytest.raises(RangeInvalid) as info:
        parse_range("bytes=0-", 0)
    assert info.value.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize("header", [
    None, "",
    "bytes=0-1,5-6",                # several ranges: the whole blob (RFC 9110 §14.2)
    "bytes=0-1, 5-6",
    "bytes=-",                      # garbage
    "bytes=",
    "bytes=a-b",
    "bytes=1.5-2",
    "items=0-1",
    "0-1",
    "bytes 0-1",
    "bytes=+1-2",
    "bytes=5-3",                    # last < first: invalid, so ignored
    "bytes=2000-1000",
])
def test_ranges_answered_with_the_whole_blob(header):
    assert parse_range(header, SIZE) is None


def test_unknown_size_ignores_the_range():
    assert parse_range("bytes=0-10", None) is None


ETAG = '"sha256:' + "a" * 64 + '"'


@pytest.mark.parametrize("if_range, expected", [
    (None, (5, 10)),                          # no precondition
    (ETAG, (5, 10)),                          # the same representation: the range
    (f" {ETAG} ", (5, 10)),
    ("W/" + ETAG, None),                      # weak never matches (RFC 9110 §13.1.5)
    ('"sha256:other"', None),                 # another representation: the whole blob
    ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # a date: blobs carry no Last-Modified
])
def test_if_range_decides_whether_the_range_applies(if_range, expected):
    headers = {"Range": "bytes=5-9"}
    if if_range is not None:
        headers["If-Range"] = if_range
    assert wanted(headers, SIZE, ETAG) == expected


# --- parse_n -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, expected", [(None, None), ("", None), ("0", 0), ("1", 1),
                                         ("100", 100), ("007", 7)])
def test_parse_n(n, expected):
    assert parse_n(n) == expected


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", " 1", "1e3", "+1"])
def test_parse_n_rejects(n):
    with pytest.raises(PaginationInvalid) as info:
        parse_n(n)
    assert info.value.status == 400


def test_parse_n_rejects_non_decimal_unicode_digits():
    with pytest.raises(PaginationInvalid):
        parse_n("²")


# --- paginate ------------------------------------------------------------------------------------

TAGS = ["1.0", "1.1", "2.0", "latest"]


@pytest.mark.parametrize("n, last, page, more", [
    (None, None, TAGS, False),
    (2, None, ["1.0", "1.1"], True),
    (4, None, TAGS, False),
    (10, None, TAGS, False),
    (2, "1.1", ["2.0", "latest"], False),
    (1, "1.1", ["2.0"], True),
    (None, "1.0", ["1.1", "2.0", "latest"], False),
    (None, "1.05", ["1.1", "2.0", "latest"], False),     # last need not be a tag
    (2, "latest", [], False),
    (2, "zzz", [], False),
    (0, None, [], True),
    (None, "", TAGS, False),
])
def test_paginate(n, last, page, more):
    assert paginate(TAGS, n, last) == (page, more)


def test_paginate_does_not_modify_its_input():
    tags = list(TAGS)
    paginate(tags, 1, "1.0")
    assert tags == TAGS
