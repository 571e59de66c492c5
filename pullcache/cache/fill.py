"""The fill: one verified download of one digest, tailed by every request that wants it.

A ``Fill`` is a task owned by ``Fills`` (and so by the app), not by any request: it streams
source bytes into a temp file while hashing them. Readers tail the temp file as it grows,
from any offset, so the first byte reaches every client as soon as it reaches us, N clients
cost one download, and a client that hangs up slows or cancels nothing. The loop reads the
source and one writer thread writes and hashes (``writer.Writer``). On a hash match readers
get the final byte at once, then the file is fsynced, renamed into place and indexed; on a
mismatch or a source error the temp file is deleted and every reader raises ``FillFailed``,
so its response is cut short (a client must see a broken transfer, never a complete-looking
wrong blob).
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
from .store import BlobStore
from .writer import Writer, WriterFailed

log = structlog.get_logger("pullcache.fill")
READ_CHUNK = 1 << 20
# Readers are woken when this much more is readable, or when the writer has caught up with
# the source (a stalled upstream): not once per chunk.
WAKE_STEP = 2 << 20
COMMIT_GRACE = 30.0     # seconds a verified fill may take to commit at shutdown


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
    entry: Entry
    size: int
    origin: str
    seconds: float


class Fill:
    def __init__(self, kind: str, digest: Digest, store: BlobStore, deadline: float,
                 on_event=None) -> None:
        self.kind = kind
        self.digest = digest
        self.store = store
        self.deadline = deadline
        self.temp = store.temp_path()
        self.size: int | None = None
        self.written = 0    # bytes in the temp file
        self.visible = 0    # bytes readers may see (a held-back source shows none unverified)
        self.verified = False  # every byte is in the temp file and matched the digest
        self._began = time.monotonic()
        self.verified_after: float | None = None   # seconds from start to verification
        self._woken_at = 0
        self._writer: Writer | None = None
        self.source = ""    # the Candidate that filled it
        self.generation = 0  # bumped when a source is dropped and its temp file deleted
        self._reservation = None
        self.readers = 0
        self.origin = ""
        self.result: asyncio.Future[FillResult] = asyncio.get_running_loop().create_future()
        self._started: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._progress = asyncio.Event()
        self._on_event = on_event or (lambda event, **_: None)

    # -- the writer ---------------------------------------------------------------------------

    async def run(self, sources: "list[Candidate]") -> None:
        began = self._began = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline):
                entry = await self._download_first(sources)
        except TimeoutError:
            self._fail(UpstreamTimeout(str(self.digest), message="fill deadline exceeded"))
        except PullcacheError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(FillFailed("fill cancelled"))
            raise
        except Exception as exc:  # noqa: BLE001 - the fill task's supervisor
            log.exception("fill_crashed", digest=str(self.digest))
            self._fail(exc)
        else:
            seconds = time.monotonic() - began
            self.result.set_result(FillResult(entry, self.written, self.origin, seconds))
            log.info("fill_committed", digest=str(self.digest), kind=self.kind,
                     bytes=self.written, seconds=round(seconds, 3), origin=self.origin,
                     verified_seconds=round(self.verified_after or seconds, 3))
            self._on_event("committed", bytes=self.written)
        finally:
            self._wake()
            if not self.result.done() or self.result.exception() is not None:
                await asyncio.to_thread(self.temp.unlink, True)

    async def _download_first(self, sources: "list[Candidate]") -> Entry:
        """Try each source in turn; a source that fails before readers saw any of its
        bytes (a tier miss, a tier blob that fails verification) hands over to the next."""
        for i, candidate in enumerate(sources):
            try:
                return await self._download(candidate)
            except PullcacheError as exc:
                if i == len(sources) - 1 or self.visible > 0:
                    raise
                (log.info if exc.status == 404 else log.warning)(   # a miss is not trouble
                    "fill_source_skipped", digest=str(self.digest), source=candidate.name,
                    error=str(exc))
                self.written = self._woken_at = 0
                self.generation += 1   # readers holding the old temp file must reopen
                await asyncio.to_thread(self.temp.unlink, True)
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
            # Room for it before the first byte lands, made and reserved in one step and
            # counted until committed, so concurrent fills cannot overshoot it together.
            self._reservation = await self.store.reserve(source.size or 0)
            fd = await asyncio.to_thread(os.open, self.temp,
                                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._writer = Writer(fd, hasher, lambda n: self._progressed(n, candidate.stream))
            try:
                received = 0
                async for chunk in source.chunks():
                    received += len(chunk)
                    if self.size is not None and received > self.size:
                        raise SizeInvalid(f"{self.digest}: more than {self.size} bytes")
                    await self._writer.write(chunk)   # waits only when the queue is full
                hexdigest = await self._writer.finish()
                if self.size is not None and self.written != self.size:
                    raise SizeInvalid(f"{self.digest}: {self.written} of {self.size} bytes")
                if hexdigest != self.digest.hex:
                    log.warning("digest_mismatch", digest=str(self.digest),
                                got=f"{self.digest.algorithm}:{hexdigest}",
                                origin=self.origin, source=candidate.name, bytes=self.written)
                    self._on_event("digest_mismatch")
                    raise DigestMismatch(str(self.digest))
                # Verified: readers may have the final byte now. Durability comes after; a
                # crash before the commit only loses the cache entry, never a wrong byte.
                self._verified(candidate)
                await asyncio.to_thread(os.fsync, fd)
            finally:
                await self._writer.close()
                await asyncio.to_thread(os.close, fd)
        except BaseException as exc:
            if self._reservation is not None:
                self._reservation.release()
            if isinstance(exc, WriterFailed):
                raise StorageError(f"cannot write the fill: {exc}") from exc
            raise
        finally:
            await source.close()
        with self._reservation:   # released once the index counts the bytes
            return await self.store.commit(self.kind, self.digest, self.temp, self.written)

    def _progressed(self, written: int, stream: bool) -> None:
        """The writer thread's report (at most once per loop iteration)."""
        self.written = written
        if not stream:
            return
        self.visible = written
        if written - self._woken_at >= WAKE_STEP or (self._writer and self._writer.idle):
            self._woken_at = written
            self._wake()

    def _verified(self, candidate: "Candidate") -> None:
        self.size = self.visible = self.written
        self.source = candidate.name
        self.verified = True
        self.verified_after = time.monotonic() - self._began
        if not self._started.done():
            self._started.set_result(self.size)
        self._wake()

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
        cap = end if end is not None else self.size   # exclusive; None while unknown
        try:
            offset = start
            while cap is None or offset < cap:
                progress = self._progress
                verified = self.verified   # then the bytes are whole, whatever the commit does
                if not verified and self.result.done() and self.result.exception() is not None:
                    raise FillFailed(str(self.result.exception()))
                if generation != self.generation:
                    # The source was dropped before showing any byte (offset is still
                    # ``start``): read the new temp file, never the dropped one.
                    await asyncio.to_thread(os.close, fd)
                    fd = -1
                    fd, generation = await self._open_for_read()
                available = self.visible if cap is None else min(self.visible, cap)
                if cap is not None and cap == self.size and not verified:
                    # Hold back the blob's final byte until its digest is verified: no client
                    # may receive a complete-looking blob of unverified content. A range that
                    # ends earlier is served as soon as it is written (clients that assemble
                    # ranges, like containerd, verify the digest of the whole).
                    available = min(available, cap - 1)
                if offset < available:
                    length = available - offset if limit is None else \
                        min(available - offset, limit)
                    yield fd, offset, length
                    offset += length
                elif verified:
                    if end is None and self.size != cap and cap is not None:
                        raise FillFailed("blob size differs from the announced one")
                    return   # size was unknown: the verified end is where the bytes end
                else:
                    await progress.wait()
            while cap == 0 and not self.verified:
                # An empty blob has no final byte to hold back: its (empty) end waits for
                # the verification all the same.
                if self.result.done() and self.result.exception() is not None:
                    raise FillFailed(str(self.result.exception()))
                await self._progress.wait()
        finally:
            self.readers -= 1
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
            try:
                fd = await asyncio.to_thread(os.open, self.temp, os.O_RDONLY)
            except FileNotFoundError:
                if not self.result.done():
                    await self._progress.wait()  # the writer has not created it yet
                    continue
                if self.result.exception() is not None:
                    raise FillFailed(str(self.result.exception())) from None
                path = self.store.path(self.result.result().entry)
                return await asyncio.to_thread(os.open, path, os.O_RDONLY), generation
            if generation == self.generation:
                return fd, generation
            await asyncio.to_thread(os.close, fd)   # raced with a source change: again


class Fills:
    """The app's fills in progress, one per (kind, digest); owns their tasks."""

    def __init__(self, store: BlobStore, *, deadline: float, on_event=None) -> None:
        self.store = store
        self.deadline = deadline
        self._fills: dict[tuple[str, str], Fill] = {}
        self._tasks: dict[asyncio.Task[None], Fill] = {}
        self._on_event = on_event

    def __len__(self) -> int:
        return len(self._fills)

    def in_flight(self) -> list[Fill]:
        return list(self._fills.values())

    def running(self, kind: str, digest: Digest) -> Fill | None:
        return self._fills.get((kind, str(digest)))

    def get_or_start(self, kind: str, digest: Digest,
                     sources: list[Candidate]) -> tuple[Fill, bool]:
        """The fill for ``digest``, started now if none is running; ``(fill, joined)``."""
        key = (kind, str(digest))
        fill = self._fills.get(key)
        if fill is not None:
            return fill, True
        fill = Fill(kind, digest, self.store, self.deadline, self._on_event)
        self._fills[key] = fill
        task = asyncio.create_task(self._supervise(key, fill, sources), name=f"fill {digest}")
        self._tasks[task] = fill
        task.add_done_callback(lambda done: self._tasks.pop(done, None))
        return fill, False

    async def _supervise(self, key, fill: Fill, sources: list[Candidate]) -> None:
        try:
            await fill.run(sources)
            if fill.result.exception() is None:
                await self.store.make_room()
        finally:
            self._fills.pop(key, None)

    async def close(self, commit_grace: float = COMMIT_GRACE) -> None:
        """At shutdown: cancel every fill still downloading (their temp files are removed).
        A verified fill has already given clients their last byte: it gets ``commit_grace``
        seconds to finish its commit, so what was served stays cached."""
        committing = [task for task, fill in self._tasks.items() if fill.verified]
        for task in set(self._tasks) - set(committing):
            task.cancel()
        if committing:
            await asyncio.wait(committing, timeout=commit_grace)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
