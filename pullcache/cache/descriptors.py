"""Opening files from the event loop without leaking what a cancelled open opened.

``os.open`` runs in a thread (a slow disk must not block the loop). A thread cannot be
stopped: when the task awaiting it is cancelled (a client went away, the app shuts down), the
open still completes, and its descriptor would belong to no one. ``open_fd`` closes it.
"""

from __future__ import annotations

import asyncio
import os


async def open_fd(path, flags: int = os.O_RDONLY, mode: int = 0o777) -> int:
    """``os.open(path, flags, mode)`` in the default executor. Cancelled while the thread
    runs: the descriptor it opens is closed as it lands, and ``CancelledError`` propagates."""
    opening = asyncio.get_running_loop().run_in_executor(None, os.open, path, flags, mode)
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_landed)
        raise


def _close_landed(opening: asyncio.Future) -> None:
    if not opening.cancelled() and opening.exception() is None:
        os.close(opening.result())
