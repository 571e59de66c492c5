"""The fill: one verified download of one digest, tailed by every request that wants it.

A ``Fill`` is a task owned by ``Fills`` (and so by the app), not by any request: it streams
source bytes into a temp file while hashing them. Readers tail the temp file as it grows,
from any offset, so the first byte reaches every client as soon as it reaches us, N clients
cost one download, and a client that hangs up slows or cancels nothing. One writer thread
writes (``writer.Writer``; a second hashes behind it, ``digester.Digester``); it reads the
source too when the source offers a blocking reader (an upstream over plain TCP:
``Source.reader``) and a thread slot is free (``THREADS``), else the loop reads the source
and hands the thread its chunks. A reader caught up with the writer rides it: the writer
thread sends it each chunk it writes (``riders.py``). On a hash
match readers get the final byte at once, then the file is fsynced, renamed into place and
indexed; on a mismatch or a source error the temp file is deleted and every reader raises
``FillFailed``, so its response is cut short (a client must see a broken transfer, never a
complete-looking wrong blob). A source cut midway is not a failure while another source
joins where it was cut (a ``Range`` request): the temp file and the hash go on.

When the disk refuses the fill (ENOSPC, EDQUOT, EIO, read-only, removed; or the blob cannot
fit the budget at all) it becomes a *pass-through* (``passthrough.PassThrough``): the bytes
continue into a bounded in-memory ``Window`` that readers tail the same way, the temp file is
removed, and nothing is cached. The final byte is still held back until the digest matches.

A fill is for the (upstream, repository) whose request started it, and for those whose
requests joined it once the proxy confirmed them (``proxy/links.py``): its ``links``, recorded
with the commit (``links.py``), or, for one confirmed while the commit runs, right after it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from ..errors import (DigestMismatch, PullcacheError, SizeInvalid, StorageError, UpstreamError,
                      UpstreamTimeout)
from ..oci import Digest
from .handover import Candidate, Handover, Source  # noqa: F401 - Candidate: part of the API
from .index import Entry
from .links import Where
from .passthrough import DEFAULT_LIMIT, PassThrough, Window
from .tail import READ_CHUNK, FillFailed, Tail  # noqa: F401 - FillFailed: part of the API
from .store import BlobStore
from .writer import Writer, WriterFailed

log = structlog.get_logger("pullcache.fill")
# Readers are woken when this much more is readable, or when the writer has caught up with
# the source (a stalled upstream): not once per chunk.
WAKE_STEP = 2 << 20
COMMIT_GRACE = 30.0     # seconds a verified fill may take to commit at shutdown
# Fills whose writer thread also reads the source. Beyond them a fill takes the loop's path
# (never waits: a fill must not queue behind another blob's whole download); every thread
# that reads takes the GIL after each read, so more of them than this only add hand-offs
# of the GIL on a machine with few cores.
THREADS = 8


class Slots:
    """How many more fills may read their source in their writer thread (loop-side count)."""

    def __init__(self, free: int = THREADS) -> None:
        self.free = free


@dataclass(frozen=True, slots=True)
class FillResult:
    entry: Entry | None          # None: passed through, not cached
    size: int
    origin: str
    seconds: float


class Fill(Handover, PassThrough, Tail):
    def __init__(self, kind: str, digest: Digest, store: BlobStore, deadline: float,
                 on_event=None, disk=None, window_limit: int = DEFAULT_LIMIT,
                 link: Where | None = None, *, slots: Slots | None = None) -> None:
        self.kind = kind
        self.digest = digest
        # Who may be served this content (``add_link``); taken by the commit (``_commit``).
        self.links: set[Where] = {link} if link is not None else set()
        self.links_taken = False
        self.store = store
        self.deadline = deadline
        self.temp = store.temp_path()
        self.size: int | None = None
        self.written = 0    # bytes in the temp file
        self._received = 0  # bytes the source gave (ahead of ``written`` by the writer's queue)
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
        # The size a source announced, held back or not: what raw readers wait for.
        self._size_known: asyncio.Future[int | None] = \
            asyncio.get_running_loop().create_future()
        self._used: list[Candidate] = []   # the sources of the bytes, in order
        self._waiters: dict[asyncio.Future[None], None] = {}   # readers in ``started``
        self._progress = asyncio.Event()
        self._on_event = on_event or (lambda event, **_: None)
        self.disk = disk                   # cache.disk.Disk: room and health (optional)
        self.window: Window | None = None  # set when the fill passes through memory
        self._window_limit = window_limit
        self._fd = -1                      # the temp file being written
        self._hasher = None
        self._stream = True
        self._repair = False               # the cache directory was removed: recreate it
        self._loop = asyncio.get_running_loop()
        self._slots = slots if slots is not None else Slots()

    # -- the writer ---------------------------------------------------------------------------

    async def run(self, sources: "list[Candidate]") -> None:
        began = self._began = time.monotonic()
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
            self._ended(entry, seconds)
        finally:
            self._wake()
            if not self.result.done() or self.result.exception() is not None:
                await self._discard_temp()

    def _ended(self, entry: Entry | None, seconds: float) -> None:
        fields = dict(digest=str(self.digest), kind=self.kind, bytes=self.written,
                      seconds=round(seconds, 3), origin=self.origin)
        if entry is None:
            log.info("fill_passed_through", **fields)
            return
        log.info("fill_committed", **fields,
                 verified_seconds=round(self.verified_after or seconds, 3))
        self._on_event("committed", bytes=self.written)
        if self.disk is not None:
            self.disk.recovered()

    async def _download(self, candidate: "Candidate", rest: "list[Candidate]") -> Entry:
        source = await candidate.open()
        try:
            if self._started.done() and source.size != self.size:
                raise SizeInvalid(f"{self.digest}: {candidate.name} announced {source.size} "
                                  f"bytes, readers were promised {self.size}")
            self.size, self.origin = source.size, source.origin
            self._sized(self.size)
            if candidate.stream:
                await self._show(self.size)
            self._hasher = self.digest.hasher()
            self._stream = candidate.stream
            await self._open_temp(source.size)
            try:
                self._received = resumes = 0
                while True:
                    try:
                        await self._receive(source)
                        break
                    except (UpstreamError, UpstreamTimeout) as exc:
                        if isinstance(exc, SizeInvalid) or not self._cut_midway():
                            raise
                        source, joined = await self._go_on(candidate, source, rest, exc,
                                                           resumes)
                        resumes = resumes + 1 if joined is candidate else 0
                        candidate = joined
                hexdigest = await self._writer.finish()
                if self.size is not None and self.written != self.size:
                    raise SizeInvalid(f"{self.digest}: {self.written} of {self.size} bytes")
                if hexdigest != self.digest.hex:
                    log.warning("digest_mismatch", digest=str(self.digest),
                                got=f"{self.digest.algorithm}:{hexdigest}",
                                origin=self.origin, source=candidate.name, bytes=self.written,
                                sources=[used.name for used in self._used])
                    self._on_event("digest_mismatch")
                    raise DigestMismatch(str(self.digest))
                # Verified: readers may have the final byte now. Durability comes after; a
                # crash before the commit only loses the cache entry, never a wrong byte.
                self._verified(candidate)
                await self._sync_temp()
            finally:
                if self._writer is not None:
                    await self._writer.close()
                await self._close_temp()
        except BaseException as exc:
            self._release_reservation()
            if isinstance(exc, WriterFailed):
                raise StorageError(f"cannot write the fill: {exc}") from exc
            raise
        finally:
            await source.close()
        if self.window is not None or self._reservation is None:
            return None     # passed through, or the disk refused the fsync: not cached
        with self._reservation:   # released once the index counts the bytes
            return await self._commit()

    async def _receive(self, source: Source) -> None:
        """The source's bytes into the writer; ``_received`` counts them as they come, so
        a cut leaves it where the source was cut."""
        reader = self._thread_reader(source)
        if reader is not None:
            try:
                await self._writer.drain(reader, WAKE_STEP)   # the thread reads, writes, hashes
            finally:
                reader.stop()    # (a read in progress ends: the thread can be joined)
                self._slots.free += 1
                self._received = self._writer.written   # (each chunk written before the next)
            return
        async for chunk in source.chunks():
            self._received += len(chunk)
            if self.size is None:
                await self._grow_reservation(self._received)
            elif self._received > self.size:
                raise SizeInvalid(f"{self.digest}: more than {self.size} bytes")
            await self._writer.write(chunk)   # waits only when the queue is full

    def _thread_reader(self, source: Source):
        """The source's blocking reader for the writer thread, if it has one and a slot is
        free (taken: given back when the reading ends)."""
        offer = getattr(source, "reader", None)
        if offer is None or self._slots.free <= 0 or self._writer is None:
            return None
        reader = offer()
        if reader is not None:
            self._slots.free -= 1
        return reader

    def _progressed(self, written: int, stream: bool) -> None:
        """The writer thread's report (at most once per loop iteration). Raw readers follow
        ``written`` whatever the source, so the wake-up is for a held-back one too."""
        self.written = written
        if stream:
            self.visible = written
        if written - self._woken_at >= WAKE_STEP or (self._writer and self._writer.idle):
            self._woken_at = written
            self._wake()

    def _verified(self, candidate: "Candidate") -> None:
        self.size = self.visible = self.written
        self.source = candidate.name
        self.verified = True
        self.verified_after = time.monotonic() - self._began
        self._sized(self.size)
        if not self._started.done():
            self._started.set_result(self.size)
            self._announce()
        self._wake()

    def _sized(self, size: int | None) -> None:
        if not self._size_known.done():
            self._size_known.set_result(size)

    async def add_link(self, where: Where) -> None:
        """Link ``where`` (confirmed by the caller) to this content: with the commit, or, when
        the commit has taken the links already, once it is done (the index links only a key
        it holds)."""
        self.links.add(where)
        if not self.links_taken:
            return
        await asyncio.wait([self.result])    # not cancelled with the caller: wait, not await
        if not self.failed and self.result.result().entry is not None:
            await self.store.link(self.kind, self.digest, where)

    def _fail(self, exc: BaseException) -> None:
        if not self._size_known.done():
            self._size_known.set_exception(exc)
            self._size_known.exception()   # retrieved here; raw readers re-raise it
        if not self._started.done():
            self._started.set_exception(exc)
            self._started.exception()  # retrieved here; readers re-raise it
            self._announce()
        if not self.result.done():
            self.result.set_exception(exc)
            self.result.exception()
        if not isinstance(exc, FillFailed):
            log.warning("fill_failed", digest=str(self.digest), error=str(exc),
                        bytes=self.written, origin=self.origin)
        self._on_event("failed")

    @property
    def failed(self) -> bool:
        result = self.result
        return result.done() and (result.cancelled() or result.exception() is not None)

    def _wake(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()


class Fills:
    """The app's fills in progress, one per (kind, digest); owns their tasks."""

    def __init__(self, store: BlobStore, *, deadline: float, on_event=None, disk=None,
                 window: int = DEFAULT_LIMIT) -> None:
        self.store = store
        self.deadline = deadline
        self.disk = disk
        self.window = window
        self._fills: dict[tuple[str, str], Fill] = {}
        self.slots = Slots()
        self._tasks: dict[asyncio.Task[None], Fill] = {}
        self._on_event = on_event

    def __len__(self) -> int:
        return len(self._fills)

    def in_flight(self) -> list[Fill]:
        return list(self._fills.values())

    def running(self, kind: str, digest: Digest) -> Fill | None:
        return self._fills.get((kind, str(digest)))

    def get_or_start(self, kind: str, digest: Digest, sources: list[Candidate],
                     link: Where | None = None) -> tuple[Fill, bool]:
        """The fill for ``digest``, started now if none is running; ``(fill, joined)``.

        ``link``: who a new fill is for (its sources are theirs). A joiner is not linked
        here: the caller confirms it first, then ``Fill.add_link``."""
        key = (kind, str(digest))
        fill = self._fills.get(key)
        if fill is not None and not fill.failed:
            return fill, True
        # (A failed fill stays listed while it cleans up; a new request starts afresh rather
        # than join it and be cut at once.)
        fill = Fill(kind, digest, self.store, self.deadline, self._on_event, self.disk,
                    self.window, link, slots=self.slots)
        self._fills[key] = fill
        task = asyncio.create_task(self._supervise(key, fill, sources), name=f"fill {digest}")
        self._tasks[task] = fill
        task.add_done_callback(lambda done: self._tasks.pop(done, None))
        return fill, False

    async def _supervise(self, key, fill: Fill, sources: list[Candidate]) -> None:
        try:
            await fill.run(sources)
            if fill.result.exception() is None:
                if self.disk is not None:
                    await self.disk.refresh()   # statvfs after each commit
                try:
                    await self.store.make_room()
                except StorageError as exc:    # the disk's trouble, met by the next fill
                    log.warning("eviction_failed", error=str(exc))
        finally:
            if self._fills.get(key) is fill:   # not a newer fill started after this failed
                del self._fills[key]

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
