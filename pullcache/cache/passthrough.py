"""The pass-through window: a fill's bytes held in memory when the disk refuses them.

When the cache's filesystem fails a fill (ENOSPC, EDQUOT, EIO, EROFS, a removed directory)
or a blob cannot fit the budget at all, the fill carries on without a temp file: its bytes go
to a ``Window``, an anonymous in-memory file (``memfd_create(2)``). Readers keep tailing it
exactly as they tail a temp file (``pread``/``sendfile`` from an fd, same offsets), so a
client mid-download never notices; nothing is cached.

The window is bounded: bytes more than ``limit`` behind the writer are released
(``fallocate(PUNCH_HOLE)``), except those a reader is sending at that moment (its span in
flight, at most 1 MiB, whose start holds what follows it until the send ends: a client that
stops reading holds it at most the sendfile stall timeout). A reader that fell further behind
than ``limit`` is cut at its next step, the same broken transfer as any failed fill; it can
resume with ``Range`` (a new fill). A released byte is never sent: a reader's span is
registered before it is sent, and nothing at or after a registered offset is released.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import threading
import weakref

import structlog

#: errnos that mean "the disk refused", not "the upstream failed": a fill meeting one carries
#: on in memory (EROFS: remounted read-only; ENOENT: the cache directory was removed).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOENT,
                         errno.EACCES, errno.EPERM})
DEFAULT_LIMIT = 64 << 20
log = structlog.get_logger("pullcache.fill")

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
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
        self.start = 0                        # bytes below this offset are released
        self._in_flight: dict[int, int] = {}  # reader token → offset of its span in flight
        self._cut: set[int] = set()
        self._lock = threading.Lock()

    # -- the writer (blocking: called through asyncio.to_thread) ---------------------------

    def put(self, offset: int, chunk: bytes, hasher=None) -> None:
        view = memoryview(chunk)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n
        if hasher is not None:
            hasher.update(chunk)

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
        """Release what is more than ``limit`` behind ``written``; mark readers that far
        behind as cut (their span in flight is kept until they take their next step)."""
        floor = written - self.limit
        if floor <= self.start:
            return
        with self._lock:
            for token, offset in self._in_flight.items():
                if offset < floor:
                    self._cut.add(token)
            keep = min([floor, *self._in_flight.values()])
            if keep > self.start:
                if _libc.fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                                   self.start, keep - self.start) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
                self.start = keep

    # -- the readers (on the event loop) ----------------------------------------------------

    def hold(self, token: int, offset: int) -> bool:
        """Register the span a reader is about to send; False: it fell behind (cut it)."""
        with self._lock:
            if token in self._cut or offset < self.start:
                return False
            self._in_flight[token] = offset
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


class PassThrough:
    """The writer's half of a pass-through, mixed into ``fill.Fill`` (whose state it uses:
    ``window``, ``written``, ``temp``, ``generation``, ``disk``, ``_fd``)."""

    async def _put(self, chunk: bytes, hasher) -> None:
        """Write and hash one chunk: to the temp file, or the window once the disk refused."""
        if self.window is None:
            try:
                await self._write_chunk(chunk, hasher)
                return
            except OSError as exc:
                if not is_disk_error(exc):
                    raise
                await self._pass_through("writing the temp file", exc)
        window = self.window
        await asyncio.to_thread(window.put, self.written, chunk, hasher)
        window.trim(self.written + len(chunk))

    async def _pass_through(self, why: str, exc: OSError | None = None) -> None:
        """Carry on in memory: seed the window with the last bytes readers may still need,
        drop the temp file and the reservation, and make readers reopen on the window."""
        window = Window(self._window_limit)
        if self._fd >= 0 and self.written:
            begin = max(0, self.written - window.limit)
            try:
                await asyncio.to_thread(window.seed, self.temp, begin, self.written)
            except OSError:
                window.start = self.written   # unreadable too (EIO): readers behind are cut
        await self._close_temp()
        await asyncio.to_thread(unlink_quietly, self.temp)
        self._release_reservation()
        self.window = window
        self.generation += 1    # readers reopen: on the window, at the same offset
        self._wake()
        if exc is not None and self.disk is not None:
            self.disk.refused(why, exc)
            if exc.errno == errno.ENOENT:
                await self.disk.repair()
        log.warning("fill_passthrough", digest=str(self.digest), kind=self.kind, reason=why,
                    error=str(exc) if exc else None, bytes=self.written,
                    window=window.limit)
        self._on_event("passthrough")

