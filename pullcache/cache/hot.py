"""The hot layer: what a cache hit needs, in memory, bounded by bytes.

It holds index entries (``Entry``), manifest bodies with them, and tag records, so that a
hit is a dict lookup: no SQLite, no thread. It is a cache of the on-disk index, never a
second source of truth: it is warmed lazily from disk on a miss, and ``forget`` is called
(by ``Index``, under its eviction lock) for every key the index drops, before any file is
unlinked.

Recency: a hit records a *touch* (key → wall-clock time) here instead of writing the index.
``BlobStore.flush_recency`` writes the touches to the index in one transaction every
``FLUSH_INTERVAL`` seconds, at shutdown, and before eviction chooses its victims; so the LRU
order is the flushed recency plus the pending touches, and a crash loses at most one
interval of recency, never an entry.

Accounting: an item is charged what it really takes (``footprint``): ``sys.getsizeof`` of its
key, of its value and the value's parts (tuple members, ``__slots__`` fields, strings, bytes),
of the layer's own ``(value, cost)`` pair, and the map's amortized cost of one slot. So
``capacity`` bounds the memory the layer holds, not a nominal count of bodies.

Thread-safety: the event loop reads it and records touches; threads that read the index
fill it, and the thread that evicts calls ``forget``. One ``threading.Lock`` guards the
items, held for dictionary operations only. ``get(pin=…)`` runs
the pin under that lock, so a hit and its pin are atomic with an eviction's ``forget``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

FLUSH_INTERVAL = 2.0   # seconds of recency a crash may lose


def _slot_cost(n: int = 4096) -> int:
    """What one more key costs an ``OrderedDict`` itself (hash table, order links),
    amortized over its growth."""
    od: OrderedDict[int, None] = OrderedDict.fromkeys(range(n))
    return -(-(sys.getsizeof(od) - sys.getsizeof(OrderedDict())) // n)


_SLOT = _slot_cost()
_SHARED = (type(None), bool)    # singletons: nothing of theirs is held per item


def _sizeof(obj: Any) -> int:
    """``obj`` and what it holds, as far as an item's parts go: tuple and set members and
    ``__slots__`` fields, one level of objects each (strings, bytes, numbers at the leaves)."""
    if isinstance(obj, _SHARED):
        return 0
    size = sys.getsizeof(obj)
    if isinstance(obj, (str, bytes, int, float)):
        return size
    if isinstance(obj, (tuple, frozenset, set)):
        return size + sum(_sizeof(part) for part in obj)
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            size += _sizeof(getattr(obj, name, None))
    return size


def footprint(key: str, value: Any) -> int:
    """The bytes the layer holds for ``key`` → ``value``: key, value and its parts, the
    ``(value, cost)`` pair (the cost an int object of its own), and the map's slot."""
    parts = sys.getsizeof(key) + _sizeof(value) + sys.getsizeof((value, 0)) + _SLOT
    return parts + sys.getsizeof(parts)


class HotLayer:
    """A least-recently-used map bounded by ``capacity`` bytes, plus pending touches."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._touches: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str, pin: Callable[[Any], None] | None = None) -> Any | None:
        """The value for ``key`` or None; ``pin(value)`` runs under the lock on a hit."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            if pin is not None:
                pin(item[0])
            return item[0]

    def put(self, key: str, value: Any) -> None:
        """Keep ``value``, charged its ``footprint``, and push out the least recently used."""
        cost = footprint(key, value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if cost > self.capacity:
                return
            self._items[key] = (value, cost)
            self._bytes += cost
            while self._bytes > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def forget(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` (the index no longer has them), and their pending touches."""
        with self._lock:
            for key in keys:
                item = self._items.pop(key, None)
                if item is not None:
                    self._bytes -= item[1]
                self._touches.pop(key, None)

    # -- recency ----------------------------------------------------------------------------

    def touch(self, key: str) -> None:
        """Record a use of the index entry ``key``, to be flushed to the index later.

        Event-loop thread only, like ``take_touches`` (no lock on the hit path): a touch
        from another thread could land in a batch a flush is already writing."""
        self._touches[key] = self._clock()

    def take_touches(self) -> dict[str, float]:
        """The touches recorded since the last call (the caller writes them to the index)."""
        with self._lock:
            touches, self._touches = self._touches, {}
        return touches

    def pending(self) -> int:
        return len(self._touches)
