"""``cache verify``: re-hash every cached file (bit rot, tampering) with bounded I/O.

One file at a time, in one worker thread, optionally throttled to ``rate`` bytes/s, so a
verify run beside live traffic costs one disk stream. A file whose content no longer hashes
to its name is reported; with ``repair`` its index key is dropped (the index unlinks the file
once no response is serving it), and the next pull fetches it again. Recency is untouched.

Only what says something about the content is repaired: bytes that hash to another digest,
or an indexed file that is gone. Any other error reading it (EMFILE, EACCES, EIO) says
nothing about the bytes: it is reported (``removed: false, repairable: false``) and the file
is kept, since dropping good content because of a full fd table is worse than leaving it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from ..cache.index import relpath_of
from ..cache.store import BlobStore
from ..cache.verify import file_hexdigest
from ..oci import Digest

log = structlog.get_logger("pullcache.verify")


@dataclass
class VerifyProgress:
    repair: bool = False
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bad: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def snapshot(self) -> dict:
        return {"repair": self.repair, "files_total": self.files_total,
                "files_done": self.files_done, "bytes_total": self.bytes_total,
                "bytes_done": self.bytes_done, "bad": list(self.bad),
                "seconds": round((self.ended or time.monotonic()) - self.started, 3)}


class Verifier:
    def __init__(self, store: BlobStore, *, rate: float | None = None) -> None:
        self.store = store
        self.rate = rate

    async def run(self, progress: VerifyProgress) -> bool:
        """Verify everything indexed; True when every file was good."""
        try:
            files = await asyncio.to_thread(self._inventory)
            progress.files_total = len(files)
            progress.bytes_total = sum(size for _, _, size in files)
            for key, path, _ in files:
                found = await asyncio.to_thread(self._check, key, path, progress)
                progress.files_done += 1
                if found is None:
                    continue
                problem, repairable = found
                log.warning("verify_found_bad", key=key, problem=problem,
                            repairable=repairable)
                bad = {"key": key, "problem": problem, "removed": False,
                       "repairable": repairable}
                if progress.repair and repairable:
                    await asyncio.to_thread(self.store.index.drop, key)
                    bad["removed"] = True
                progress.bad.append(bad)
        finally:
            progress.ended = time.monotonic()
        log.info("verify_finished", files=progress.files_done, bad=len(progress.bad),
                 repaired=progress.repair)
        return not progress.bad

    def _inventory(self) -> list[tuple[str, object, int]]:
        files = []
        for key in list(self.store.index.keys()):
            try:
                path = self.store.root / relpath_of(key)
            except Exception:  # noqa: BLE001 - a foreign key is skipped
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = 0        # indexed but gone: ``_check`` reports it unless evicted
            except OSError:
                size = 0        # ``_check`` reports why it cannot be read
            files.append((key, path, size))
        return files

    def _check(self, key: str, path, progress: VerifyProgress) -> tuple[str, bool] | None:
        """None when good, else (the problem, whether it is the content's own)."""
        expected = Digest.parse(key.partition(":")[2])
        began, read = time.monotonic(), 0

        def step(n: int) -> None:
            nonlocal read
            read += n
            progress.bytes_done += n
            if self.rate:
                ahead = read / self.rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)   # in the worker thread, never on the loop
        try:
            hexdigest = file_hexdigest(path, expected, step)
        except (FileNotFoundError, NotADirectoryError):
            if key not in self.store.index:
                return None   # evicted while we were getting to it: nothing to verify
            return "file missing", True
        except OSError as exc:
            return f"not verified, kept: {exc.strerror or exc}", False
        if hexdigest != expected.hex:
            return f"content hashes to {expected.algorithm}:{hexdigest}", True
        return None
