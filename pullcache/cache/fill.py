"""The fill: one verified download of one digest, tailed by every request that wants it.

A ``Fill`` is a task owned by ``Fills`` (and so by the app), not by any request: it streams
source bytes into a temp file while hashing them. Readers tail the temp file as it grows,
from any offset, so the first byte reaches every client as soon as it reaches us, N clients
cost one download, and a client that hangs up slows or cancels nothing. On a hash match the
file is fsynced, renamed into place and indexed; on a mismatch or a source error the temp
file is deleted and every reader raises ``FillFailed``, so its response is cut short (a
client must see a broken transfer, never a complete-looking wrong blob).

When the disk refuses the fill (ENOSPC, EIO, read-only, removed; or the blob cannot fit the
budget at all) it becomes a *pass-through*: the bytes continue into a bounded in-memory
``Window`` (passthrough.py) that readers tail the same way, the temp file is removed, and
nothing is cached. The final byte is still held back until the digest matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Protocol

import structlog

from ..errors import DigestMismatch, PullcacheError, SizeInvalid, StorageError, UpstreamTimeout
from ..oci import Digest
from .index import Entry
from .passthrough import DEFAULT_LIMIT, PassThrough, Window, is_disk_error, unlink_quietly
from .store import BlobStore

log = structlog.get_logger("pullcache.fill")
READ_CHUNK = 1 << 20


class Source(Protocol):
    """An open download: its announced size (if any), its bytes, and how to let go of it."""
    size: int | None
    origin: str

    def chunks(self) -> AsyncIterator[bytes]: ...
    async def close(self) -> None: ...


Opener = Callable[[], Awaitable[Source]]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place a fill may take its bytes from, in the order tried.

    ``stream``: readers see the bytes as they arrive (the origin). Otherwise the bytes are
    shown only once verified, so a corrupt copy (in the backing tier) can be dropped and
    the next candidate tried without any reader having seen a byte of it.
    """
    name: str
    open: Opener
    stream: bool = True


class FillFailed(Exception):
    """The fill a reader was tailing failed after the response had started."""


@dataclass(frozen=True, slots=True)
class FillResult:
    entry: Entry | None          # None: passed through, not cached
    size: int
    origin: str
    seconds: float


class Fill(PassThrough):
    def __init__(self, kind: str, digest: Digest, store: BlobStore, deadline: float,
                 on_event=None, disk=None, window_limit: int = DEFAULT_LIMIT) -> None:
        self.kind = kind
        self.digest = digest
        self.store = store
        self.deadline = deadline
        self.temp = store.temp_path()
        self.size: int | None = None
        self.written = 0    # bytes in the temp file
        self.visible = 0    # bytes readers may see (a held-back source shows none unverified)
        self.source = ""    # the Candidate that filled it
        self.generation = 0  # bumped when a source is dropped and its temp file deleted
        self._reservation = None
        self.readers = 0
        self.origin = ""
        self.result: asyncio.Future[FillResult] = asyncio.get_running_loop().create_future()
        self._started: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._progress = asyncio.Event()
        self._on_event = on_event or (lambda event, **_: None)
        self.disk = disk                   # cache.disk.Disk: room and health (optional)
        self.window: Window | None = None  # set when the fill passes through memory
        self._window_limit = window_limit
        self._fd = -1                      # the temp file being written

    # -- the writer ---------------------------------------------------------------------------

    async def run(self, sources: "list[Candidate]") -> None:
        began = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline):
                entry = await self._download_first(sources)
        except TimeoutError:
            await self._discard_temp()
            self._fail(UpstreamTimeout(str(self.digest), message="fill deadline exceeded"))
        except PullcacheError as exc:
            await self._discard_temp()
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(FillFailed("fill cancelled"))
            raise
        except Exception as exc:  # noqa: BLE001 - the fill task's supervisor
            log.exception("fill_crashed", digest=str(self.digest))
            await self._discard_temp()
            self._fail(exc)
        else:
            seconds = time.monotonic() - began
            self.result.set_result(FillResult(entry, self.written, self.origin, seconds))
            if entry is not None:
                log.info("fill_committed", digest=str(self.digest), kind=self.kind,
                         bytes=self.written, seconds=round(seconds, 3), origin=self.origin)
                self._on_event("committed", bytes=self.written)
                if self.disk is not None:
                    self.disk.recovered()
            else:
                log.info("fill_passed_through", digest=str(self.digest), kind=self.kind,
                         bytes=self.written, seconds=round(seconds, 3), origin=self.origin)
        finally:
            self._wake()
            if not self.result.done() or self.result.exception() is not None:
                await asyncio.to_thread(unlink_quietly, self.temp)

    async def _download_first(self, sources: "list[Candidate]") -> Entry:
        """Try each source in turn; a source that fails before readers saw any of its
        bytes (a tier miss, a tier blob that fails verification) hands over to the next."""
        for i, candidate in enumerate(sources):
            try:
                return await self._download(candidate)
            except PullcacheError as exc:
                if i == len(sources) - 1 or self.visible > 0:
                    raise
                log.warning("fill_source_skipped", digest=str(self.digest),
                            source=candidate.name, error=str(exc))
                self.written = 0
                self.generation += 1   # readers holding the old temp file must reopen
                if self.window is not None:
                    self.window.close()
                    self.window = None
                await asyncio.to_thread(unlink_quietly, self.temp)
        raise FillFailed("no source")  # unreachable: the loop returns or raises

    async def _download(self, candidate: "Candidate") -> Entry:
        source = await candidate.open()
        try:
            if self._started.done() and source.size != self.size:
                raise SizeInvalid(f"{self.digest}: {candidate.name} announced {source.size} "
                                  f"bytes, readers were promised {self.size}")
            self.size, self.origin = source.size, source.origin
            if candidate.stream and not self._started.done():
                # A held-back source promises readers nothing (not even a size) until its
                # bytes are verified: a wrong-length copy must not bind the next source.
                self._started.set_result(self.size)
            hasher = self.digest.hasher()
            if source.size and self.disk is not None and not self.disk.fits(source.size):
                await self._pass_through(f"{source.size} bytes cannot fit the cache "
                                         f"({self.store.budget.max_size} bytes)")
            else:
                if source.size:
                    # Room for it before the first byte lands; counted against the budget
                    # until committed, so concurrent fills cannot overshoot it together.
                    await self.store.make_room(source.size)
                self._reservation = self.store.reservation(source.size or 0)
                self._reservation.__enter__()
                try:
                    self._fd = await asyncio.to_thread(
                        os.open, self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except OSError as exc:
                    if not is_disk_error(exc):
                        raise
                    await self._pass_through("creating the temp file", exc)
            try:
                async for chunk in source.chunks():
                    if self.size is not None and self.written + len(chunk) > self.size:
                        raise SizeInvalid(f"{self.digest}: more than {self.size} bytes")
                    await self._put(chunk, hasher)
                    self.written += len(chunk)
                    if candidate.stream:
                        self.visible = self.written
                        self._wake()
                if self.size is not None and self.written != self.size:
                    raise SizeInvalid(f"{self.digest}: {self.written} of {self.size} bytes")
                if hasher.hexdigest() != self.digest.hex:
                    log.warning("digest_mismatch", digest=str(self.digest),
                                got=f"{self.digest.algorithm}:{hasher.hexdigest()}",
                                origin=self.origin, source=candidate.name, bytes=self.written)
                    self._on_event("digest_mismatch")
                    raise DigestMismatch(str(self.digest))
                if self._fd >= 0:
                    try:
                        await asyncio.to_thread(os.fsync, self._fd)
                    except OSError as exc:
                        if not is_disk_error(exc):
                            raise
                        await self._pass_through("syncing the temp file", exc)
            finally:
                await self._close_temp()
        finally:
            await source.close()
            self._release_reservation()
        self.size = self.visible = self.written
        self.source = candidate.name
        if not self._started.done():
            self._started.set_result(self.size)
        if self.window is not None:
            return None     # verified and served; not cached
        try:
            return await self.store.commit(self.kind, self.digest, self.temp, self.written)
        except StorageError as exc:
            cause = exc.__cause__
            if self.disk is None or not is_disk_error(cause):
                raise
            # Verified, and every reader holds an fd on the temp file: they finish from it;
            # nothing is cached.
            self.disk.refused("committing", cause)
            await asyncio.to_thread(unlink_quietly, self.temp)
            return None

    async def _write_chunk(self, chunk: bytes, hasher) -> None:
        await asyncio.to_thread(_write_and_hash, self._fd, chunk, hasher)

    async def _discard_temp(self) -> None:
        """Remove a failed fill's temp file before any reader hears of the failure (their
        open fds stay valid), so a client that saw its transfer cut finds nothing left."""
        await asyncio.to_thread(unlink_quietly, self.temp)

    async def _close_temp(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            await asyncio.to_thread(os.close, fd)

    def _release_reservation(self) -> None:
        if self._reservation is not None:
            self._reservation.__exit__(None, None, None)
            self._reservation = None

    def _fail(self, exc: BaseException) -> None:
        if not self._started.done():
            self._started.set_exception(exc)
            self._started.exception()  # retrieved here; readers re-raise it
        if not self.result.done():
            self.result.set_exception(exc)
            self.result.exception()
        if not isinstance(exc, FillFailed):
            log.warning("fill_failed", digest=str(self.digest), error=str(exc),
                        bytes=self.written, origin=self.origin)
        self._on_event("failed")

    def _wake(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    # -- the readers --------------------------------------------------------------------------

    @property
    def promised_size(self) -> int | None:
        """The size readers have been promised, once a source has been accepted."""
        started = self._started
        if started.done() and not started.cancelled() and started.exception() is None:
            return started.result()
        return None

    async def started(self) -> int | None:
        """Wait until the source answered; its size, or raise the domain error it gave."""
        return await asyncio.shield(self._started)

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive), as they arrive. Raises ``FillFailed``."""
        async with contextlib.aclosing(self.spans(start, end, READ_CHUNK)) as spans:
            async for fd, offset, length in spans:
                chunk = await asyncio.to_thread(os.pread, fd, length, offset)
                if len(chunk) != length:
                    raise FillFailed("temp file shrank")
                yield chunk

    async def spans(self, start: int = 0, end: int | None = None,
                    limit: int | None = None) -> AsyncIterator[tuple[int, int, int]]:
        """``(fd, offset, length)`` of bytes ``start`` to ``end`` (exclusive) as they become
        readable, for ``pread`` or ``sendfile``; each fd is valid until the next step.
        Raises ``FillFailed``."""
        fd, generation = await self._open_for_read()
        self.readers += 1
        token = id(object())    # this reader, for the pass-through window's bookkeeping
        cap = end if end is not None else self.size   # exclusive; None while unknown
        try:
            offset = start
            while cap is None or offset < cap:
                progress = self._progress
                done = self.result.done()
                if done and self.result.exception() is not None:
                    raise FillFailed(str(self.result.exception()))
                window = self.window
                if window is not None:
                    window.release(token)
                if generation != self.generation:
                    # The source was dropped before showing any byte (offset is still
                    # ``start``): read the new temp file, never the dropped one. Or the
                    # fill went pass-through: read the window, same offsets.
                    await asyncio.to_thread(os.close, fd)
                    fd = -1
                    fd, generation = await self._open_for_read()
                available = self.visible if cap is None else min(self.visible, cap)
                if cap is not None and cap == self.size and not done:
                    # Hold back the blob's final byte until its digest is verified: no client
                    # may receive a complete-looking blob of unverified content. A range that
                    # ends earlier is served as soon as it is written (clients that assemble
                    # ranges, like containerd, verify the digest of the whole).
                    available = min(available, cap - 1)
                if offset < available:
                    length = available - offset if limit is None else \
                        min(available - offset, limit)
                    if window is not None and generation == self.generation:
                        if not window.hold(token, offset):
                            raise FillFailed("fell behind the pass-through window")
                        length = min(length, READ_CHUNK)   # spans stay short in memory
                    yield fd, offset, length
                    offset += length
                elif done:
                    if end is None and self.size != cap and cap is not None:
                        raise FillFailed("blob size differs from the announced one")
                    return   # size was unknown: the verified end is where the bytes end
                else:
                    await progress.wait()
        finally:
            self.readers -= 1
            if self.window is not None:
                self.window.release(token)
            if fd >= 0:
                await asyncio.to_thread(os.close, fd)

    async def _open_for_read(self) -> tuple[int, int]:
        """Open the temp file (or the committed file if the fill finished meanwhile);
        return the fd and the temp file's generation.

        An fd opened on the temp file stays valid across the commit's rename (POSIX).
        """
        await self.started()
        while True:
            generation = self.generation
            if self.window is not None:
                if self.window.fd < 0:
                    raise FillFailed("the pass-through ended before this reader started")
                return self.window.open(), generation
            try:
                fd = await asyncio.to_thread(os.open, self.temp, os.O_RDONLY)
            except FileNotFoundError:
                if not self.result.done():
                    await self._progress.wait()  # the writer has not created it yet
                    continue
                if self.result.exception() is not None:
                    raise FillFailed(str(self.result.exception())) from None
                entry = self.result.result().entry
                if entry is None:
                    raise FillFailed("passed through, not cached")
                path = self.store.path(entry)
                try:
                    return await asyncio.to_thread(os.open, path, os.O_RDONLY), generation
                except FileNotFoundError:
                    # Evicted between its commit and this late reader (a budget smaller
                    # than the fills in flight): a cut the client retries, not a 500.
                    raise FillFailed("evicted right after its commit") from None
            if generation == self.generation:
                return fd, generation
            await asyncio.to_thread(os.close, fd)   # raced with a source change: again


def _write_and_hash(fd: int, chunk: bytes, hasher) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view):]
    hasher.update(chunk)


class Fills:
    """The app's fills in progress, one per (kind, digest); owns their tasks."""

    def __init__(self, store: BlobStore, *, deadline: float, on_event=None, disk=None,
                 window: int = DEFAULT_LIMIT) -> None:
        self.store = store
        self.deadline = deadline
        self.disk = disk
        self.window = window
        self._fills: dict[tuple[str, str], Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_event = on_event

    def __len__(self) -> int:
        return len(self._fills)

    def running(self, kind: str, digest: Digest) -> Fill | None:
        return self._fills.get((kind, str(digest)))

    def get_or_start(self, kind: str, digest: Digest,
                     sources: list[Candidate]) -> tuple[Fill, bool]:
        """The fill for ``digest``, started now if none is running; ``(fill, joined)``."""
        key = (kind, str(digest))
        fill = self._fills.get(key)
        if fill is not None:
            return fill, True
        fill = Fill(kind, digest, self.store, self.deadline, self._on_event, self.disk,
                    self.window)
        self._fills[key] = fill
        task = asyncio.create_task(self._supervise(key, fill, sources), name=f"fill {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill, False

    async def _supervise(self, key, fill: Fill, sources: list[Candidate]) -> None:
        try:
            await fill.run(sources)
            if fill.result.exception() is None:
                if self.disk is not None:
                    await self.disk.refresh()   # statvfs after each commit
                await self.store.make_room()
        finally:
            self._fills.pop(key, None)

    async def close(self) -> None:
        """Cancel every fill (at shutdown); their temp files are removed."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
