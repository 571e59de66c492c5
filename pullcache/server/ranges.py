"""Range requests (RFC 9110 §14), one parser for every blob answer, hit or fill.

Policy: one satisfiable ``bytes=`` range is a 206; a range starting at or past the end is
a 416 with ``Content-Range: bytes */size``; anything else (several ranges, an inverted or
malformed one, another unit, an ``If-Range`` that does not match) is answered with the whole
blob, as RFC 9110 §14.2 allows ("A server MAY ignore the Range header field").
"""

from __future__ import annotations

import re
from typing import Mapping

from ..errors import RangeInvalid

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def wanted(headers: Mapping[str, str], size: int | None, etag: str) -> tuple[int, int] | None:
    """The ``(start, end_exclusive)`` a GET asks for; None for the whole blob.

    ``If-Range`` (RFC 9110 §13.1.5) is compared strongly with ``etag``; a date never matches, as
    blobs carry no ``Last-Modified``.
    """
    if_range = headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        return None
    return parse_range(headers.get("Range"), size)


def parse_range(header: str | None, size: int | None) -> tuple[int, int] | None:
    """One ``bytes=`` range → ``(start, end_exclusive)``; None to send the whole blob."""
    if not header or size is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:                       # suffix range: the last N bytes
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None
    if start >= size:
        raise RangeInvalid(header, headers={"Content-Range": f"bytes */{size}"})
    return start, end
