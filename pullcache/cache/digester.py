"""A fill's digest, computed in a thread of its own, a chunk or two behind its writer.

A cold blob's writer thread receives, writes and hashes every byte. SHA-256 is the largest of
the three (about as much CPU as receiving and writing together: docs/benchmarks.md, "The
cold fill"), and done in line it makes the writer the download's slowest stage, which every
client's bytes follow. In a thread of its own, the hash of one chunk runs while the writer
receives and writes the next (hashlib lets go of the GIL for a large update): the stage the
clients wait for is about halved, and the CPU spent is the same.

A chunk may be a view of a buffer its source fills again a few reads later
(``upstream.socket_body``: a ring of buffers). ``settle(n)`` waits until at most ``n`` chunks
given are still to be hashed, so the writer, settling before it takes the next chunk, never
lets a buffer be refilled while it is being hashed.
"""

from __future__ import annotations

import queue
import threading

Chunk = bytes | memoryview


class Digester:
    """Feeds ``hasher`` (a ``hashlib`` object) in order, in its own thread. ``update`` and
    ``settle`` are for one thread (the writer's); ``hexdigest`` ends the thread."""

    def __init__(self, hasher) -> None:
        self._hasher = hasher
        self._queue: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        self._hashed_one = threading.Condition(threading.Lock())
        self._given = 0      # chunks given (the writer's count)
        self._hashed = 0     # chunks hashed (the digester's count, under the condition)
        self._thread = threading.Thread(target=self._run, name="fill-digest", daemon=True)
        self._thread.start()

    def update(self, chunk: Chunk) -> None:
        self._given += 1
        self._queue.put(chunk)

    def settle(self, behind: int) -> None:
        """Wait until at most ``behind`` of the chunks given are still to be hashed."""
        if self._given - self._hashed <= behind:   # (a stale read can only be too high)
            return
        with self._hashed_one:
            while self._given - self._hashed > behind:
                self._hashed_one.wait()

    def close(self) -> None:
        """Hash what was given, then end the thread (blocking: call it off the loop)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        """The digest of every chunk given; ``close`` first when they may not all be hashed."""
        self.close()
        return self._hasher.hexdigest()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hasher.update(chunk)
            with self._hashed_one:
                self._hashed += 1
                self._hashed_one.notify()
