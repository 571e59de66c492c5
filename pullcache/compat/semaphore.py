"""Taking an ``asyncio.Semaphore`` slot without a yield.

The accept loop takes a batch of queued connections in one loop turn, each against a slot of
the connection cap. ``Semaphore.acquire()`` is a coroutine: awaiting it yields even when a slot
is free, which would cost a loop turn per connection. When ``locked()`` is false a slot is
free, so taking it is one decrement of the semaphore's counter, ``_value``, done here only.
"""

from __future__ import annotations

import asyncio


def take_free_slot(semaphore: asyncio.Semaphore) -> bool:
    """Take a slot if one is free now (no waiter is passed over); False otherwise."""
    if semaphore.locked():
        return False
    semaphore._value -= 1  # noqa: SLF001 - this adapter's purpose
    return True


def check() -> None:
    """Raise AssertionError, naming this adapter, if asyncio's Semaphore no longer fits it."""
    where = "pullcache.compat.semaphore"
    semaphore = asyncio.Semaphore(2)
    assert isinstance(getattr(semaphore, "_value", None), int), \
        f"{where}: asyncio.Semaphore has no integer _value"
    assert take_free_slot(semaphore) and not semaphore.locked(), f"{where}: one slot of two"
    assert take_free_slot(semaphore) and semaphore.locked(), \
        f"{where}: locked() does not follow _value"
    semaphore.release()
    assert not semaphore.locked(), f"{where}: release() does not give the slot back"
