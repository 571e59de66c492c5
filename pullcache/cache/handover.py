"""A fill's sources, one after another: which one the bytes come from, and the hand-over
when one fails.

Mixed into ``fill.Fill`` (whose state it uses: ``size``, ``written``, ``visible``,
``generation``, ``window``, ``origin``, ``_received``, ``_used``, ``_stream``, ``_started``,
``_writer``; and ``_download``, which reads one source to the end). A source that fails before readers saw
a byte of the fill is replaced by the next, from byte 0. A source cut midway is continued,
from the byte where it was cut, by itself or by the next source that answers a ``Range``
request with exactly the bytes left: the temp file and the hash state go on, and no byte is
fetched twice (docs/operations.md, "Cluster mode").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Protocol

import structlog

from ..errors import DigestMismatch, PullcacheError, SizeInvalid
from .index import Entry
from .tail import FillFailed

log = structlog.get_logger("pullcache.fill")
MAX_RESUMES = 2         # times a cut source is resumed from where it was cut


class Source(Protocol):
    """An open download: its announced size (if any), its bytes, and how to let go of it."""
    size: int | None
    origin: str

    def chunks(self) -> AsyncIterator[bytes]: ...
    async def close(self) -> None: ...

    # Optional: ``reader()``, the rest of the bytes for the writer thread to read itself (a
    # ``writer.Drain`` with ``stop()``, which ends a read in progress), or None; asked once,
    # before ``chunks``.


Opener = Callable[[], Awaitable[Source]]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place a fill may take its bytes from, in the order tried.

    ``stream``: readers see the bytes as they arrive (the origin, a peer). Otherwise the
    bytes are shown only once verified, so a corrupt copy (in the backing tier) can be
    dropped and the next candidate tried without any reader having seen a byte of it.
    """
    name: str
    open: Opener
    stream: bool = True
    # Opens the same bytes from an offset (a ``Range`` request): a transfer cut midway goes
    # on from where it was cut, from this source (``resumes`` times) or, when another
    # source was cut, in its place, rather than starting over.
    resume: "Callable[[int], Awaitable[Source]] | None" = None
    resumes: int = MAX_RESUMES
    # Told why this source was given up (a peer's breaker hears of its wrong bytes).
    on_failure: Callable[[PullcacheError], None] | None = None


class Handover:
    """The sources tried in order, and the hand-over of a cut one (see the module)."""

    async def _download_first(self, sources: "list[Candidate]") -> Entry:
        """Try each source in turn. A source cut midway hands its bytes over to the next
        that joins with a ``Range`` request (``_go_on``). A source that fails before readers
        saw any of the fill's bytes (a tier miss, a tier blob that fails verification, a cut
        no later source could join) hands over to the next, which starts at byte 0."""
        rest = list(sources)
        while rest:
            candidate = rest.pop(0)
            self._used = [candidate]
            try:
                return await self._download(candidate, rest)
            except PullcacheError as exc:
                # Wrong bytes may be any contributor's: every source of them is told.
                blamed = self._used if isinstance(exc, DigestMismatch) else self._used[-1:]
                for used in blamed:
                    if used.on_failure is not None:
                        used.on_failure(exc)
                if not rest or self.visible > 0:
                    raise
                (log.info if exc.status == 404 else log.warning)(   # a miss is not trouble
                    "fill_source_skipped", digest=str(self.digest),
                    source=self._used[-1].name, error=str(exc))
                self.written = self._woken_at = 0
                self.generation += 1   # readers holding the old temp file must reopen
                if self.window is not None:
                    self.window.close()
                    self.window = None
                await self._discard_temp()
        raise FillFailed("no source")  # unreachable: the loop returns or raises

    async def _show(self, size: int | None) -> None:
        """A streamed source took over: readers get the size and every byte written."""
        if not self._started.done():
            # A held-back source promises readers nothing (not even a size) until its
            # bytes are verified: a wrong-length copy must not bind the next source.
            self._started.set_result(size)
            self._announce()
            # One turn of the loop for the readers just woken: they send their response
            # headers before the temp file's set-up (threads) competes with them.
            await asyncio.sleep(0)
        self.visible = self.written
        self._wake()

    def _cut_midway(self) -> bool:
        return self.size is not None and 0 < self._received < self.size

    async def _go_on(self, candidate: "Candidate", cut: Source, rest: "list[Candidate]",
                     exc: PullcacheError, resumes: int) -> "tuple[Source, Candidate]":
        """After a cut at ``_received``: the bytes from there, keeping what the fill holds
        (temp file and hash state). The same source again (``resumes`` times), else the
        first of ``rest`` that joins: it answers the ``Range`` with exactly the bytes left.
        One that cannot (no ``resume``, a 200 for the whole blob, an error) is passed over
        for the hand-over and stays in ``rest``: when none joins, the cut is raised and, if
        no reader saw a byte, ``_download_first`` starts the next source from byte 0."""
        await cut.close()
        received = self._received
        if candidate.resume is not None and resumes < candidate.resumes:
            try:
                return await self._join(candidate, received, exc), candidate
            except PullcacheError as again:
                exc = again
        if candidate.on_failure is not None:
            candidate.on_failure(exc)
        for i, successor in enumerate(rest):
            if successor.resume is None:
                continue
            try:
                source = await self._join(successor, received, exc)
            except PullcacheError as refused:
                log.info("fill_join_refused", digest=str(self.digest), source=successor.name,
                         offset=received, error=str(refused))
                continue
            del rest[i]
            self._used.append(successor)
            self.origin = source.origin
            # Bytes held back stay so until verified, whoever sends the rest: a corrupt
            # tier prefix must not reach a reader through the origin's streamed suffix.
            self._stream = self._stream and successor.stream
            if self._stream:
                await self._show(self.size)
            elif self._writer is not None:
                self._writer.riders.hold()   # (no rider gets them either: riders.py)
            return source, successor
        raise exc

    async def _join(self, candidate: "Candidate", received: int,
                    exc: PullcacheError) -> Source:
        """``candidate``'s bytes from ``received`` on, announcing exactly the bytes left."""
        source = await candidate.resume(received)
        if source.size is not None and source.size != self.size - received:
            await source.close()
            raise SizeInvalid(f"{self.digest}: {candidate.name} resumed at {received} with "
                              f"{source.size} bytes, {self.size - received} were left")
        log.info("fill_resumed", digest=str(self.digest), source=candidate.name,
                 offset=received, error=str(exc))
        return source
