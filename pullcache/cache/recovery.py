"""Recovery: make the index and the files on disk agree after a crash (or a hand-edit).

Temp files are unfinished fills: deleted (directories too; symlinks are not followed).
Entries whose file is gone: dropped, with their links. Files without an entry (a crash
between rename and index): hashed, adopted when the content matches the name, deleted
otherwise (a manifest's media type died with the crash: it is fetched again). An adopted file
has no links: its first request from each repository is confirmed with the upstream
(``proxy/links.py``). Blocking; ``BlobStore.reconcile`` runs it in a thread.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from .index import Entry, Index, key_for, relpath_for, relpath_of
from .verify import file_matches

log = structlog.get_logger("pullcache.cache")
KINDS = ("blob", "manifest")


@dataclass(frozen=True, slots=True)
class Reconciled:
    temp_files_removed: int
    entries_dropped: int
    files_adopted: int
    files_rejected: int


def reconcile(root: Path, tmp: Path, index: Index) -> Reconciled:
    temps = _clear(tmp)
    dropped = 0
    for key in list(index.keys()):
        try:
            path = root / relpath_of(key)
        except Exception:  # noqa: BLE001 - a foreign key is simply dropped
            path = None
        if path is None or not path.is_file():
            index.drop(key)
            dropped += 1
    index.links.sweep()   # links of keys dropped behind the index's back
    adopted = rejected = 0
    for kind in KINDS:
        top = relpath_for(kind, "x", "xx").split("/")[0]
        for path in (root / top).glob("*/*/*"):
            relpath = path.relative_to(root).as_posix()
            key = key_for(relpath)
            if key is None or key in index:
                continue
            if kind == "manifest":
                # Its media type died with the crash; it will be fetched again.
                path.unlink(missing_ok=True)
                rejected += 1
            elif file_matches(path, key.split(":", 1)[1]):
                index.add(key, Entry(relpath, path.stat().st_size))
                adopted += 1
            else:
                path.unlink(missing_ok=True)
                rejected += 1
    return Reconciled(temps, dropped, adopted, rejected)


def _clear(tmp: Path) -> int:
    """Empty ``tmp``: fills write files there, but anything else (a directory someone made,
    a symlink) must not stop the start. A symlink is unlinked, never followed, so nothing
    outside the cache root is touched; ``shutil.rmtree`` does not follow links inside a
    directory either. What cannot be removed is logged and left."""
    removed = 0
    for temp in tmp.iterdir():
        try:
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp)
            else:
                temp.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cache_temp_not_removed", path=str(temp), error=str(exc))
            continue
        removed += 1
    return removed

