"""Pinned images (``cache.pin``): warmed at start and again every ``tag_ttl``.

A pin holds the index keys of what its reference names now: the manifests and blobs of the
chosen platforms. When the tag moves, the new digest's content is warmed (and held from the
moment its manifests are known), then the pin's key set is replaced, so the old digest's
content becomes evictable like any other. The set is saved for offline ``cache gc``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import structlog

from ..cache.pins import Pin, PinSet
from ..units import human_size
from .refs import Platform
from .warm import ImageProgress, Warmer

log = structlog.get_logger("pullcache.pins")
MIN_INTERVAL = 1.0


class Pinning:
    def __init__(self, pins: PinSet, warmer: Warmer, refs: tuple[str, ...], *,
                 platforms: list[Platform] | None, all_platforms: bool, interval: float,
                 max_size: int, on_bytes=None) -> None:
        self.pins = pins
        self.warmer = warmer
        self.refs = refs
        self.platforms = platforms
        self.all_platforms = all_platforms
        self.interval = max(interval, MIN_INTERVAL)
        self.max_size = max_size
        self.progress: dict[str, ImageProgress] = {}
        self.over_budget: str | None = None
        self._on_bytes = on_bytes or (lambda nbytes: None)

    async def refresh_all(self) -> None:
        """One round over every pin; its owner runs one every ``interval``
        (``server/admin/objects.py``, a supervised loop)."""
        self.pins.retain(set(self.refs))
        for ref in self.refs:
            try:
                await self.refresh(ref)
            except Exception:  # noqa: BLE001 - one pin's failure must not stop the others
                log.exception("pin_refresh_failed", ref=ref)

    async def refresh(self, ref: str) -> None:
        old = self.pins.get(ref) or Pin(ref)
        progress = self.progress[ref] = ImageProgress(ref)

        def hold(keys: dict[str, int]) -> None:
            self.pins.put(dataclasses.replace(old, pending=tuple(keys)))
            self._check_budget(extra=keys)
        try:
            sizes = await self.warmer.warm(ref, progress, platforms=self.platforms,
                                           all_platforms=self.all_platforms, on_plan=hold)
        except Exception as exc:  # noqa: BLE001 - one pin's failure must not stop the others
            self.pins.put(dataclasses.replace(old, pending=(), error=str(exc)))
            log.warning("pin_warm_failed", ref=ref, error=str(exc))
        else:
            self.pins.put(Pin(ref, progress.digest, sizes, time.time()))
            if old.digest and old.digest != progress.digest:
                log.info("pin_moved", ref=ref, old=old.digest, new=progress.digest)
            elif old.digest is None:
                log.info("pin_warmed", ref=ref, digest=progress.digest,
                         bytes=progress.bytes_total, fetched=progress.fetched_bytes)
        await asyncio.to_thread(self.pins.save)
        self._check_budget()

    def _check_budget(self, extra: dict[str, int] | None = None) -> None:
        """``extra``: a warm's planned keys, held from the plan on, so counted from then:
        a pin too big for the budget is reported before its blobs are fetched."""
        pinned = self.pins.pinned_bytes(extra)
        self._on_bytes(pinned)
        if pinned > self.max_size:
            message = (f"pinned images need {human_size(pinned)}, more than cache.max_size "
                       f"({human_size(self.max_size)})")
            if message != self.over_budget:
                log.warning("pins_exceeded_budget", pinned_bytes=pinned, max_size=self.max_size)
            self.over_budget = message
        else:
            self.over_budget = None

    def snapshot(self) -> list[dict]:
        out = []
        for pin in self.pins.pins():
            progress = self.progress.get(pin.ref)
            out.append({"ref": pin.ref, "digest": pin.digest, "bytes": pin.bytes,
                        "keys": len(pin.sizes), "checked_at": pin.checked_at,
                        "error": pin.error,
                        "warming": progress.snapshot() if progress and progress.state
                        not in ("done", "failed") else None})
        known = {p.ref for p in self.pins.pins()}
        out += [{"ref": r, "digest": None, "bytes": 0, "keys": 0, "checked_at": None,
                 "error": None, "warming": None} for r in self.refs if r not in known]
        return out
