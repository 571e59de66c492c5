"""``[cache]``: where content lives, its budget and recovery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pullcache.errors import ConfigError

from .fields import (
    HOURS,
    GiB,
    MiB,
    _bool,
    _field,
    _fraction,
    _positive,
    _str,
    _timeout,
    default_cache_dir,
    format_duration,
    format_size,
    parse_size,
)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: Path = _field(lambda v: Path(_str(v)).expanduser(), factory=default_cache_dir, fmt=str)
    max_size: int = _field(_positive(parse_size), 50 * GiB, fmt=format_size)
    high_watermark: float = _field(_fraction, 0.95)
    low_watermark: float = _field(_fraction, 0.85)
    fill_deadline: float = _field(_timeout, 2 * HOURS, fmt=format_duration)
    reconcile_on_start: bool = _field(_bool, True)
    # Free space left on the filesystem: budget = min(max_size, used + free - min_free).
    min_free: int = _field(parse_size, 1 * GiB, fmt=format_size)
    # Memory per fill the disk refused (pass-through); readers further behind are cut.
    passthrough_window: int = _field(_positive(parse_size), 64 * MiB, fmt=format_size)
    # The hot layer: manifests, tag records and index entries kept in memory for hits.
    memory: int = _field(_positive(parse_size), 64 * MiB, fmt=format_size)
    # Images kept warm and never evicted: warmed at start and every tag_ttl (docs/operations.md).
    pin: tuple[str, ...] = _field(lambda v: _strings(v, "image references"), (), fmt=list)
    # Platforms of pinned images: "os/arch[/variant]", or "all"; empty: the host's.
    pin_platforms: tuple[str, ...] = _field(lambda v: _platforms(v), (), fmt=list)

    def __post_init__(self) -> None:
        if not 0 < self.low_watermark < self.high_watermark <= 1:
            raise ConfigError(f"low_watermark: must be below high_watermark "
                              f"({self.high_watermark}), got {self.low_watermark}")


def _strings(value, what: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and v.strip() and not any(c.isspace() for c in v.strip())
            for v in value):
        raise ConfigError(f"expected an array of {what}, got {value!r}")
    return tuple(v.strip() for v in value)


def _platforms(value) -> tuple[str, ...]:
    items = _strings(value, 'platforms like "linux/amd64" or "all"')
    for item in items:
        if item != "all" and not 2 <= len(item.split("/")) <= 3:
            raise ConfigError(f'expected "os/arch[/variant]" or "all", got {item!r}')
    return items
