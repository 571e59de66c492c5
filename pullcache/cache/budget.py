"""The cache's size budget, and the bytes a fill holds against it while in flight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, slots=True)
class Budget:
    max_size: int
    high_watermark: float = 0.95
    low_watermark: float = 0.85

    @property
    def high(self) -> int:
        return int(self.max_size * self.high_watermark)

    @property
    def low(self) -> int:
        return int(self.max_size * self.low_watermark)


class Reservation:
    """Bytes a fill counts against the budget until ``release``, which comes after its
    commit: the bytes are always counted, by the reservation or by the index. Idempotent."""

    def __init__(self, release: Callable[[int], None], nbytes: int) -> None:
        self._release: Callable[[int], None] | None = release
        self.nbytes = nbytes

    @property
    def held(self) -> bool:
        return self._release is not None

    def release(self) -> None:
        if self._release is not None:
            self._release, release = None, self._release
            release(self.nbytes)

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
