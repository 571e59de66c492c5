"""pullcache.cache.verify: every committed file re-hashed against its name."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pullcache.cache.verify import verify


def put(root: Path, tree: str, data: bytes, *, name: str | None = None) -> str:
    hex_ = name or hashlib.sha256(data).hexdigest()
    path = root / tree / "sha256" / hex_[:2] / hex_
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.relative_to(root).as_posix()


def test_verify_finds_only_the_files_whose_bytes_differ_from_their_name(tmp_path):
    put(tmp_path, "blobs", b"good blob")
    put(tmp_path, "manifests", b'{"good": "manifest"}')
    bad = put(tmp_path, "blobs", b"rotten", name=hashlib.sha256(b"fresh").hexdigest())
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "x.part").write_bytes(b"a fill in progress is not checked")
    seen = []
    report = verify(tmp_path, progress=lambda r: seen.append(r.checked))
    assert report.checked == 3 and report.bytes == len(b"good blob") + 20 + len(b"rotten")
    assert report.bad == [bad] and not report.unreadable and not report.ok
    assert seen == [1, 2, 3]


def test_an_empty_or_missing_cache_verifies_clean(tmp_path):
    report = verify(tmp_path / "nothing-here")
    assert report.ok and report.checked == 0
