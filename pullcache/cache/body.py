"""A blob answer's body: one object, whatever holds the bytes.

A response asks a ``Body`` for ``spans(start, end)`` (file descriptor, offset, length) and
sends them (``sendfile`` or ``pread``), then calls ``aclose()``, which lets go of whatever
the body held: the pin that keeps a committed file from eviction, the file's descriptor.
Routes handle Range once, against ``size``, and never see a pin or a fill.

A span's descriptor belongs to the body and is valid until the next step of ``spans``: a
sender that waits (for a slow client) between steps must ``os.dup`` it for itself. A sender
that can hand over its client's socket (``riders.Pusher``) lets a fill's writer thread send
the bytes it has just written itself, while the reader is caught up with it.
"""

from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Protocol

from ..errors import StorageError
from .descriptors import open_fd
from .fill import Fill
from .index import Entry
from .riders import Pusher
from .store import BlobStore

Span = tuple[int, int, int]   # (fd, offset, length)


class Body(Protocol):
    size: int | None      # None: a fill whose source announced no length

    def spans(self, start: int = 0, end: int | None = None,
              pusher: Pusher | None = None) -> AsyncIterator[Span]: ...
    async def aclose(self) -> None: ...


class FileBody:
    """A committed file, open and pinned (safe from eviction) until ``aclose``."""

    def __init__(self, store: BlobStore, entry: Entry, fd: int) -> None:
        self.size: int | None = entry.size
        self.entry = entry
        self._store = store
        self._fd = fd

    @classmethod
    async def open(cls, store: BlobStore, entry: Entry) -> "FileBody | None":
        """Open ``entry``, which the caller pinned; None (and unpinned) if its file is gone
        (deleted behind the index's back), so the caller can fetch it again."""
        try:
            fd = await open_fd(store.path(entry))
        except asyncio.CancelledError:
            store.unpin(entry)     # the descriptor, if it lands, is closed by open_fd
            raise
        except FileNotFoundError:
            store.unpin(entry)
            return None
        except OSError as exc:
            store.unpin(entry)
            raise StorageError(f"cannot open a cached blob: {exc.strerror}") from exc
        return cls(store, entry, fd)

    async def spans(self, start: int = 0, end: int | None = None,
                    pusher: Pusher | None = None) -> AsyncIterator[Span]:
        end = self.size if end is None else end
        if self._fd < 0:
            raise ValueError("body is closed")
        if end > start:
            yield self._fd, start, end - start

    async def aclose(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
            self._store.unpin(self.entry)


class FillBody:
    """A fill in progress: its bytes as they arrive (see ``Fill.spans``); holds nothing.
    ``raw``: as written, before a held-back source is verified (a peer's answer)."""

    def __init__(self, fill: Fill, size: int | None, *, raw: bool = False) -> None:
        self.size = size
        self.fill = fill
        self.raw = raw

    def spans(self, start: int = 0, end: int | None = None,
              pusher: Pusher | None = None) -> AsyncIterator[Span]:
        return self.fill.spans(start, end, raw=self.raw, pusher=pusher)

    async def aclose(self) -> None:
        pass   # each spans() iterator closes its own descriptor
