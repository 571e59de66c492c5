"""Re-hash committed content: does every file still hold what its name (its digest) says?

A plain, blocking function over a cache root, usable beside a running daemon (it only
reads): ``ops.verify`` (``pullcache cache verify``) hashes with ``file_hexdigest``,
reconcile uses ``file_matches`` to adopt files, and the chaos soak calls ``verify`` after the
storm. It never deletes; the caller decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..oci import Digest
from .index import key_for

TREES = ("blobs", "manifests")
CHUNK = 1 << 20


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)        # relpaths whose content differs
    unreadable: list[str] = field(default_factory=list)  # relpaths that could not be read

    @property
    def ok(self) -> bool:
        return not self.bad and not self.unreadable


def file_hexdigest(path: Path, expected: Digest,
                   on_chunk: Callable[[int], None] | None = None) -> str:
    """The hex digest of ``path``'s bytes, with ``expected``'s algorithm; ``on_chunk`` is
    told each chunk's size (progress, throttling: ``ops.verify``)."""
    hasher = expected.hasher()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return hasher.hexdigest()


def file_matches(path: Path, digest: str) -> bool:
    """True when the bytes of ``path`` hash to ``digest`` (``sha256:…``)."""
    try:
        expected = Digest.parse(digest)
    except Exception:  # noqa: BLE001 - a malformed name simply does not match
        return False
    return file_hexdigest(path, expected) == expected.hex


def verify(root: Path, *, progress: Callable[[VerifyReport], None] | None = None) -> VerifyReport:
    """Hash every committed file under ``root`` (blobs and manifests) against its name.

    Files evicted while the walk runs are skipped, not reported. ``progress`` is called
    after each file (for a CLI's progress line).
    """
    report = VerifyReport()
    for tree in TREES:
        for path in sorted((root / tree).glob("*/*/*")):
            relpath = path.relative_to(root).as_posix()
            key = key_for(relpath)
            if key is None or not path.is_file():
                continue
            try:
                size = path.stat().st_size
                good = file_matches(path, key.split(":", 1)[1])
            except FileNotFoundError:
                continue
            except OSError:
                report.unreadable.append(relpath)
                continue
            report.checked += 1
            report.bytes += size
            if not good:
                report.bad.append(relpath)
            if progress is not None:
                progress(report)
    return report
