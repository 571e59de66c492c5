"""What the cache holds, image by image (``cache ls``), and removing an image (``cache rm``).

Images are found through the tag records (``cache/tags.py``: keys
``{upstream}/{repo}:{tag}#{accept class}``); an image's size is its manifest plus every
cached manifest and blob it references, each counted once. Nothing here refreshes recency:
looking is not using.

``rm`` removes the named tag records (on disk and in the hot layer) and then only the content
that nothing else names: no other manifest, no tag record left standing, no pin.
It is safe while serving: it only drops index keys, and the index unlinks a file only
once no response is serving it (the pins of ``Index.get(pin=True)``); a fill in flight is not
in the index yet, so its download completes (and commits) untouched.
"""

from __future__ import annotations

import asyncio
import fnmatch
from pathlib import Path

import diskcache

from .. import errors
from ..cache.index import relpath_of
from ..cache.pins import PinSet
from ..cache.store import BlobStore
from ..cache.tags import hot_key
from ..gate.routing import UpstreamTable
from .graph import references
from .refs import parse_image


class Catalog:
    def __init__(self, store: BlobStore, pins: PinSet) -> None:
        self.store = store
        self.pins = pins
        self._tags: diskcache.Cache | None = None

    async def open(self, home: Path | None = None) -> None:
        """``home``: where the tag records live, when not the cache root (``Disk.home``)."""
        self._tags = await asyncio.to_thread(diskcache.Cache,
                                             str((home or self.store.root) / "tags"))

    async def close(self) -> None:
        if self._tags is not None:
            await asyncio.to_thread(self._tags.close)

    # -- ls ---------------------------------------------------------------------------------

    async def ls(self, repo_glob: str | None = None) -> list[dict]:
        return await asyncio.to_thread(self._ls, repo_glob)

    def _ls(self, repo_glob: str | None) -> list[dict]:
        rows: dict[tuple, dict] = {}
        for key, (upstream, repo, tag) in self._tag_keys():
            if repo_glob and not (fnmatch.fnmatch(repo, repo_glob)
                                  or fnmatch.fnmatch(f"{upstream}/{repo}", repo_glob)):
                continue
            digest = self._record_digest(key)
            if digest is None or (upstream, repo, tag, digest) in rows:
                continue
            if f"manifest:{digest}" not in self.store.index:
                continue   # the tag's manifest was evicted: nothing of it to list
            content = self._closure(digest)
            used = [t for t in map(self.store.index.last_used, content) if t is not None]
            rows[(upstream, repo, tag, digest)] = {
                "upstream": upstream, "repository": repo, "tag": tag, "digest": digest,
                "size": sum(content.values()), "files": len(content),
                "last_used": max(used) if used else None,
                "pinned": self.pins.keeps(f"manifest:{digest}")}
        return [rows[k] for k in sorted(rows)]

    def _tag_keys(self):
        for key in list(self._tags.iterkeys()):
            if not isinstance(key, str) or key.endswith("#tags/list") or "#" not in key:
                continue
            name = key.rpartition("#")[0]
            image, _, tag = name.rpartition(":")
            upstream, _, repo = image.partition("/")
            if upstream and repo and tag:
                yield key, (upstream, repo, tag)

    def _record_digest(self, key: str) -> str | None:
        record = self._tags.get(key)
        return record.get("digest") if isinstance(record, dict) else None

    def _manifest_body(self, digest: str) -> bytes | None:
        try:
            return (self.store.root / relpath_of(f"manifest:{digest}")).read_bytes()
        except (errors.PullcacheError, OSError):
            return None

    def _size(self, kind: str, digest: str) -> int | None:
        key = f"{kind}:{digest}"
        if key not in self.store.index:
            return None
        try:
            return (self.store.root / relpath_of(key)).stat().st_size
        except (errors.PullcacheError, OSError):
            return None

    def _closure(self, digest: str) -> dict[str, int]:
        """Index key → size of everything cached that this manifest needs."""
        out: dict[str, int] = {}
        pending = [digest]
        while pending:
            d = pending.pop()
            size = self._size("manifest", d)
            body = self._manifest_body(d) if size is not None else None
            if body is None:
                continue
            out[f"manifest:{d}"] = size
            refs = references(body)
            pending += [c for c, _ in refs.children if f"manifest:{c}" not in out]
            for blob, _ in refs.blobs:
                blob_size = self._size("blob", blob)
                if blob_size is not None:
                    out[f"blob:{blob}"] = blob_size
        return out

    # -- rm ---------------------------------------------------------------------------------

    async def rm(self, table: UpstreamTable, texts: list[str]) -> dict:
        refs = [parse_image(table, t) for t in texts]   # all parse before anything goes
        return await asyncio.to_thread(self._rm, refs)

    def _rm(self, refs) -> dict:
        tag_keys: list[str] = []
        roots: set[str] = set()
        missing = []
        records = [(key, name, self._record_digest(key)) for key, name in self._tag_keys()]
        for ref in refs:
            found = False
            for key, (upstream, repo, tag), digest in records:
                if (upstream, repo) != (ref.route.upstream, ref.route.repo):
                    continue
                if (tag == ref.reference) or (ref.is_digest and digest == ref.reference):
                    tag_keys.append(key)
                    if digest:
                        roots.add(digest)
                        found = True
            if ref.is_digest and f"manifest:{ref.reference}" in self.store.index:
                roots.add(ref.reference)
                found = True
            if not found:
                missing.append(str(ref))
        doomed: dict[str, int] = {}
        for digest in roots:
            doomed.update(self._closure(digest))
        pinned = sorted(k for k in doomed if self.pins.keeps(k))
        if pinned:
            raise errors.Denied(f"{len(pinned)} files are pinned by cache.pin",
                                message="image is pinned by cache.pin; unpin it first")
        # Content stays while anything else names it: a manifest outside ``doomed``, or a
        # tag record that is not being removed (alpine:latest on the digest of alpine:3.19).
        gone = set(tag_keys)
        shared = self._referenced_elsewhere(set(doomed))
        shared.update(f"manifest:{digest}" for key, _, digest in records
                      if digest and key not in gone and f"manifest:{digest}" in doomed)
        for key in [k for k in shared if k.startswith("manifest:")]:
            shared.update(k for k in self._closure(key.partition(":")[2]) if k in doomed)
        removed = {k: s for k, s in doomed.items() if k not in shared}
        for key in removed:
            self.store.index.drop(key)
        for key in tag_keys:
            self._tags.delete(key)
        # The tag store answers fresh records from memory: they go with the disk's.
        self.store.hot.forget(hot_key(key) for key in tag_keys)
        return {"removed_files": len(removed), "removed_bytes": sum(removed.values()),
                "kept_shared": len(doomed) - len(removed), "tags_removed": len(tag_keys),
                "not_cached": missing}

    def _referenced_elsewhere(self, doomed: set[str]) -> set[str]:
        """Keys in ``doomed`` that a cached manifest outside ``doomed`` references."""
        shared: set[str] = set()
        for key in list(self.store.index.keys()):
            if not key.startswith("manifest:") or key in doomed:
                continue
            body = self._manifest_body(key.partition(":")[2])
            if body is None:
                continue
            refs = references(body)
            shared.update(f"manifest:{c}" for c, _ in refs.children)
            shared.update(f"blob:{b}" for b, _ in refs.blobs)
        return shared & doomed


