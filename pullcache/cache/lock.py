"""The cache directory's owner lock: one daemon, or one offline command, at a time.

``fcntl.flock`` on ``<root>/lock``: the kernel releases it when the holder exits, even on
SIGKILL, so a crash never leaves a stale lock behind. The daemon holds it for its lifetime;
``pullcache cache ls|gc|verify|stats`` hold it while they work on the directory without a
daemon, which keeps a daemon from starting meanwhile (and them from running beside one
whose admin API they could not reach).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

class CacheLocked(Exception):
    """Another process holds the cache directory."""


class CacheLock:
    def __init__(self, root: Path, role: str) -> None:
        self.path = root / "lock"
        self.role = role
        self._fd: int | None = None
        self._writable = False

    def acquire(self) -> "CacheLock":
        """Take the lock without waiting; raise ``CacheLocked`` naming the holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            # A read-only filesystem (the daemon then passes every pull through): nothing
            # can change the directory, so a missing lock file is no danger; one that exists
            # is still flocked, read-only, to keep two daemons apart.
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return self
            writable = False
        else:
            writable = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CacheLocked(f"cache dir {self.path.parent} is in use by {holder}") from None
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.role} (pid {os.getpid()})\n".encode(), 0)
        self._fd, self._writable = fd, writable
        return self

    def release(self) -> None:
        if self._fd is not None:
            if self._writable:
                os.ftruncate(self._fd, 0)
            os.close(self._fd)   # closing the last fd drops the flock
            self._fd = None

    def __enter__(self) -> "CacheLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
