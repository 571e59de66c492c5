"""Pinned content: index keys the evictor must keep, by the image reference that pinned them.

The daemon's ``ops.pinning.Pinning`` fills this set from ``cache.pin``; ``Index.evict_to``
asks ``keeps(key)``. The set is saved to ``<root>/pins.json`` after each change so that an
offline ``pullcache cache gc`` (no daemon) keeps the same content.

``keeps`` is called from the evictor's thread: the key set is an immutable ``frozenset``
replaced whole, so a reader sees either the old set or the new one, never a half-built one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Pin:
    ref: str
    digest: str | None = None            # what the reference named when last warmed
    sizes: dict[str, int] = field(default_factory=dict)  # index key → declared size
    checked_at: float | None = None      # wall clock of the last successful warm
    error: str | None = None             # why the last warm failed, if it did
    pending: tuple[str, ...] = ()        # keys of a warm in progress (kept meanwhile)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


class PinSet:
    def __init__(self, root: Path) -> None:
        self.path = root / "pins.json"
        self._pins: dict[str, Pin] = {}
        self._keys: frozenset[str] = frozenset()

    def keeps(self, key: str) -> bool:
        return key in self._keys

    def pins(self) -> list[Pin]:
        return list(self._pins.values())

    def get(self, ref: str) -> Pin | None:
        return self._pins.get(ref)

    def put(self, pin: Pin) -> None:
        self._pins[pin.ref] = pin
        self._rebuild()

    def retain(self, refs: set[str]) -> None:
        """Forget pins no longer configured."""
        for ref in set(self._pins) - refs:
            del self._pins[ref]
        self._rebuild()

    def pinned_bytes(self, extra: dict[str, int] | None = None) -> int:
        """Bytes the pins hold, each blob counted once (images share base layers); with
        ``extra`` (the keys and sizes of a warm in progress), the bytes they will hold."""
        sizes: dict[str, int] = {}
        for pin in self._pins.values():
            sizes.update(pin.sizes)
        sizes.update(extra or {})
        return sum(sizes.values())

    def _rebuild(self) -> None:
        keys: set[str] = set()
        for pin in self._pins.values():
            keys.update(pin.sizes)
            keys.update(pin.pending)
        self._keys = frozenset(keys)

    # -- persistence (blocking: call through asyncio.to_thread from the loop) ---------------

    def save(self) -> None:
        temp = self.path.with_suffix(".tmp")
        data = {"pins": [asdict(p) for p in self._pins.values()]}
        temp.write_text(json.dumps(data, indent=1))
        os.replace(temp, self.path)

    def load(self) -> "PinSet":
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return self
        for raw in data.get("pins", []):
            raw["sizes"] = dict(raw.get("sizes", {}))
            raw["pending"] = tuple(raw.get("pending", ()))
            self._pins[raw["ref"]] = Pin(**raw)
        self._rebuild()
        return self
