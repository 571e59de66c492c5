"""The pass-through window: a fill's bytes held in memory when the disk refuses them.

When the cache's filesystem fails a fill (ENOSPC, EDQUOT, EIO, EROFS, a removed directory)
or a blob cannot fit the budget at all, the fill carries on without a temp file: its bytes go
to a ``Window``, an anonymous in-memory file (``memfd_create(2)``). Readers keep tailing it
exactly as they tail a temp file (``pread``/``sendfile`` from an fd, same offsets), so a
client mid-download never notices; nothing is cached.

The window is bounded where the memory is spent: it holds at most ``limit`` bytes behind the
writer, plus, for each reader sending at that moment, its span in flight (at most 1 MiB).
Bytes further behind are released in whole pages (``fallocate(PUNCH_HOLE)``) as the writer
goes on, all but the pages of spans in flight, which stay as islands below the window until
their send ends. So a stalled client costs one span, however long it stalls and however much
the writer puts meanwhile.

A reader that falls out of the window is cut, at its next step: the same broken transfer as
any failed fill, which the client resumes with ``Range`` (a new fill). The other choice, to
pause the upstream read until the slowest reader catches up, would let one stalled client
stall every other reader of the blob and the download itself (the upstream connection
idling toward its timeout) for as long as the send timeout; a cut costs only the client
that stalled. A released byte is never sent: a reader's span is registered before it is
sent, and the pages of a registered span are not released until it is let go.

A source whose bytes are held back until verified (the backing tier's) passes through only
if it fits the window whole: its readers start at byte 0 once it is verified. Otherwise the
fill hands over to the next source (the origin), which streams.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import threading
import weakref

import structlog

from ..errors import StorageError
from .descriptors import open_fd
from .writer import Writer

#: errnos that mean "the disk refused", not "the upstream failed": a fill meeting one carries
#: on in memory (EROFS: remounted read-only; ENOENT: the cache directory was removed).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOENT,
                         errno.EACCES, errno.EPERM})
DEFAULT_LIMIT = 64 << 20
GROW_STEP = 8 << 20    # a fill of unknown length reserves this far ahead of its bytes
log = structlog.get_logger("pullcache.fill")

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)


def is_disk_error(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass   # already gone, or its directory went with it, or read-only


def as_oserror(exc: Exception) -> OSError:
    """The disk's errno behind an index failure: SQLite says "readonly database" or
    "unable to open database file" (its directory was removed), not EROFS/ENOENT."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return OSError(errno.EROFS, str(exc))
    if "unable to open" in text:
        return OSError(errno.ENOENT, str(exc))
    return OSError(errno.EIO, str(exc))


class Window:
    """One fill's bytes in memory, from ``start`` (inclusive) to what the writer put."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.fd = os.memfd_create("pullcache-passthrough", os.MFD_CLOEXEC)
        # Open as long as the fill is referenced (a request that joined it may open the
        # window after the fill ended): closed when the fill object goes.
        self._closer = weakref.finalize(self, os.close, self.fd)
        self.limit = limit
        self.start = 0                        # bytes below this offset are released...
        self._islands: list[tuple[int, int]] = []   # ...but these pages, for spans in flight
        self._in_flight: dict[int, tuple[int, int]] = {}  # reader token → its span (from, to)
        self._cut: set[int] = set()
        self._lock = threading.Lock()

    # -- the writer (blocking: called on the fill's writer thread, by the Writer's sink) -----

    def put(self, offset: int, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def seed(self, path, begin: int, end: int) -> None:
        """Copy bytes ``begin``..``end`` of the temp file the disk gave up on."""
        self.start = begin
        fd = os.open(path, os.O_RDONLY)
        try:
            offset = begin
            while offset < end:
                data = os.pread(fd, min(1 << 20, end - offset), offset)
                if not data:
                    break
                self.put(offset, data)
                offset += len(data)
        finally:
            os.close(fd)

    def trim(self, written: int) -> None:
        """Release what is more than ``limit`` behind ``written``, but the pages of spans in
        flight; mark readers that far behind as cut (at their next step)."""
        floor = written - self.limit
        floor -= floor % _PAGE
        if floor <= self.start and not self._islands:
            return
        with self._lock:
            held = [(begin - begin % _PAGE, -(-end // _PAGE) * _PAGE)
                    for begin, end in self._in_flight.values()]
            for token, (begin, _) in self._in_flight.items():
                if begin < floor:
                    self._cut.add(token)
            gone = self._islands
            if floor > self.start:
                # Whole pages only: punching part of a page zeroes the rest of it in place,
                # and a page sendfile(2) handed to a socket may still be on its way out (the
                # socket holds the page itself, not a copy). A page wholly punched keeps its
                # content for whoever still holds it.
                gone = [*gone, (self.start - self.start % _PAGE, floor)]
                self.start = floor
            self._islands = []
            for begin, end in gone:
                for low, high in _without(begin, end, held):
                    self._punch(low, high)
                self._islands += [(max(begin, low), min(end, high)) for low, high in held
                                  if low < end and high > begin]

    def _punch(self, begin: int, end: int) -> None:
        if _libc.fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                           begin, end - begin) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    # -- the readers (on the event loop) ----------------------------------------------------

    def hold(self, token: int, offset: int, length: int) -> bool:
        """Register the span a reader is about to send; False: it fell behind (cut it)."""
        with self._lock:
            if token in self._cut or offset < self.start:
                return False
            self._in_flight[token] = (offset, offset + length)
            return True

    def release(self, token: int) -> None:
        with self._lock:
            self._in_flight.pop(token, None)
            self._cut.discard(token)

    def open(self) -> int:
        """A reader's own fd on the window (valid after the fill closes its own)."""
        return os.dup(self.fd)

    def close(self) -> None:
        self._closer()
        self.fd = -1


def _without(begin: int, end: int, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``begin``..``end`` less the ranges in ``held``, as disjoint ranges."""
    pieces = [(begin, end)]
    for low, high in held:
        pieces = [part for b, e in pieces
                  for part in ((b, min(e, low)), (max(b, high), e)) if part[0] < part[1]]
    return pieces


class PassThrough:
    """The writer's disk side, mixed into ``fill.Fill`` (whose state it uses: ``window``,
    ``written``, ``temp``, ``generation``, ``disk``, ``_fd``, ``_writer``, ``_hasher``): the
    temp file and its writer thread, and the switch to the window when the disk refuses.

    The writer thread is where a refused write surfaces: there ``_take_over`` seeds a window
    with the last bytes readers may still need and hands it to the loop (``_switched``), and
    the thread carries on into the window, the refused chunk first. Readers reopen on the
    window at the same offsets; nothing is cached."""

    async def _open_temp(self, size: int | None) -> None:
        """Reserve room and open the temp file and its writer thread; or pass through."""
        progress = lambda n: self._progressed(n, self._stream)   # noqa: E731
        if size and self.disk is not None and not self.disk.fits(size):
            why = f"{size} bytes cannot fit the cache ({self.store.budget.max_size} bytes)"
            self._check_window(why)
            self._switched(Window(self._window_limit), why, None)
            self._writer = Writer(-1, self._hasher, progress, sink=self._window_sink)
            return
        # Room for it before the first byte lands, made and reserved in one step and
        # counted until committed, so concurrent fills cannot overshoot it together.
        try:
            self._reservation = await self.store.reserve(size or 0)
            # (read too: the writer thread catches riders up from it, riders.py)
            self._fd = await open_fd(self.temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except (OSError, StorageError) as exc:
            cause = exc.__cause__ if isinstance(exc, StorageError) else exc
            if not self._disk_refused(cause):
                raise
            self._check_window(f"creating the temp file: {cause}")
            self._switched(Window(self._window_limit), "creating the temp file", cause)
            self._writer = Writer(-1, self._hasher, progress, sink=self._window_sink)
            return
        self._writer = Writer(self._fd, self._hasher, progress, fallback=self._take_over)

    async def _grow_reservation(self, received: int) -> None:
        """A source that announced no length: count its bytes against the budget as they
        come, ``GROW_STEP`` ahead (room made for each step)."""
        reservation = self._reservation
        if reservation is None or received <= reservation.nbytes:
            return
        try:
            await self.store.grow(reservation, received - reservation.nbytes + GROW_STEP)
        except StorageError as exc:     # the index cannot evict: counted all the same
            log.warning("fill_room_not_made", digest=str(self.digest), error=str(exc))

    def _fits_window(self) -> bool:
        """Whether this source may pass through: a streamed one always (readers follow the
        writer); a held-back one only if its whole body fits the window, since its readers
        start at offset 0 once it is verified, and a window that freed the start would cut
        every one of them after the whole download."""
        return self._stream or (self.size is not None and self.size <= self._window_limit)

    def _check_window(self, why: str) -> None:
        if not self._fits_window():
            raise StorageError(f"{self.digest}: held back, {self.size} bytes cannot pass "
                               f"through a {self._window_limit}-byte window ({why})")

    def _disk_refused(self, exc: BaseException | None) -> bool:
        """Pass through rather than fail: the disk refused, and a ``Disk`` is watching
        (without one, a bare ``Fills``, a refused write fails the fill)."""
        return self.disk is not None and is_disk_error(exc)

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
            self._reservation.release()
            self._reservation = None

    # -- the switch ------------------------------------------------------------------------------

    def _take_over(self, exc: OSError, written: int):
        """(the writer thread) The disk refused a write at ``written``: seed a window, hand
        it to the loop, and return where the thread writes from now on."""
        if not self._disk_refused(exc) or not self._fits_window():
            raise exc   # a held-back source that cannot pass through: the next source
        window = Window(self._window_limit)
        begin = max(0, written - window.limit)
        try:
            window.seed(self.temp, begin, written)
        except OSError:
            window.start = written    # unreadable too (EIO): readers behind are cut
        unlink_quietly(self.temp)
        switched = threading.Event()

        def on_loop() -> None:
            try:
                self._switched(window, "writing the temp file", exc, written)
            finally:
                switched.set()
        self._loop.call_soon_threadsafe(on_loop)
        # Until the loop has the window, no progress past the temp file may reach readers.
        switched.wait(60)
        return self._window_sink

    def _window_sink(self, offset: int, chunk: bytes) -> None:
        """(the writer thread) One chunk into the window; release what is far behind."""
        self.window.put(offset, chunk)
        self.window.trim(offset + len(chunk))

    def _switched(self, window: Window, why: str, exc: OSError | None,
                  written: int = 0) -> None:
        """(the loop) Readers reopen on the window at the same offsets; the temp file and the
        reservation are gone; the disk's health hears of it."""
        self.written = written
        self._release_reservation()
        self.window = window
        self.generation += 1
        self._wake()
        if exc is not None and self.disk is not None:
            self.disk.refused(why, exc)
            self._repair = exc.errno == errno.ENOENT
        log.warning("fill_passthrough", digest=str(self.digest), kind=self.kind, reason=why,
                    error=str(exc) if exc else None, bytes=written, window=window.limit)
        self._on_event("passthrough")

    # -- after verification --------------------------------------------------------------------

    async def _sync_temp(self) -> None:
        """fsync the verified temp file. Refused: readers (all holding an fd on it, or the
        final byte already) finish from it; nothing is cached."""
        if self._repair and self.disk is not None:
            self._repair = False
            await self.disk.repair()    # the cache directory was removed under the fill
        if self._fd < 0 or self.window is not None:
            return
        try:
            await asyncio.to_thread(os.fsync, self._fd)
        except OSError as exc:
            if not self._disk_refused(exc):
                raise
            self.disk.refused("syncing the temp file", exc)
            self._release_reservation()
            await self._discard_temp()

    async def _commit(self):
        # Taken here, on the loop: a link added from now on is recorded after the commit.
        links, self.links_taken = frozenset(self.links), True
        try:
            return await self.store.commit(self.kind, self.digest, self.temp, self.written,
                                           links=links)
        except StorageError as exc:
            cause = exc.__cause__
            if not self._disk_refused(cause):
                raise
            # Verified, and every reader holds an fd on the temp file: they finish from it;
            # nothing is cached.
            self.disk.refused("committing", cause)
            await self._discard_temp()
            return None
