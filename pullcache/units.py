"""Sizes and durations in human units ("50GiB", "1h30m"), both ways. No I/O.

Unit constants in the hypercorn manner: ``50 * GiB``, ``5 * MINUTES``.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Any

from .errors import ConfigError

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
SECONDS = 1.0
MINUTES = 60 * SECONDS
HOURS = 60 * MINUTES
DAYS = 24 * HOURS

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB}
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": Fraction(1, 1000)}
_NUMBER = r"-?\d+(?:\.\d+)?"
_SIZE_RE = re.compile(rf"\s*({_NUMBER})\s*([a-zA-Z]*)\s*")
_DURATION_RE = re.compile(r"\s*-?(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+")


def show(value: Any, *, type_only: bool = False) -> str:
    """A value for an error message, TOML-style; just its type for tables, arrays, secrets."""
    if isinstance(value, (str, bool, int, float)) and not type_only:
        return json.dumps(value)
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    return kinds.get(type(value), "an array" if isinstance(value, (list, tuple)) else
                     "a table" if isinstance(value, dict) else type(value).__name__)


def parse_size(value: int | str) -> int:
    """Bytes from an int (bytes) or a string like ``"50GiB"``, ``"1.5 GB"``, ``"512kib"``.

    B/KB/MB/GB/TB are powers of 1000 and KiB/MiB/GiB/TiB powers of 1024; the unit is
    case-insensitive and may follow a space. Raises ConfigError.
    """
    m = _SIZE_RE.fullmatch(value) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        n = Fraction(value)
    elif m and m[2].lower() in _SIZE_UNITS:
        n = Fraction(m[1]) * _SIZE_UNITS[m[2].lower()]
    else:
        raise ConfigError(f'expected a size like "50GiB", got {show(value)}')
    if n < 0 or n.denominator != 1:
        raise ConfigError(f"expected a whole, non-negative number of bytes, got {show(value)}")
    return int(n)


def parse_duration(value: float | int | str) -> float:
    """Seconds from a number (seconds) or a string like ``"500ms"``, ``"30s"``, ``"5m"``,
    ``"1h30m"``, ``"2d"`` (a bare number string is seconds). Raises ConfigError."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        total = Fraction(value)
    elif isinstance(value, str) and re.fullmatch(rf"\s*{_NUMBER}\s*", value):
        total = Fraction(value.strip())
    elif isinstance(value, str) and _DURATION_RE.fullmatch(value):
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", value)
        total = sum((Fraction(n) * _DURATION_UNITS[u] for n, u in parts), Fraction(0))
        total = -total if value.strip().startswith("-") else total
    else:
        raise ConfigError(f'expected a duration like "5m", got {show(value)}')
    if total < 0:
        raise ConfigError(f"expected a non-negative duration, got {show(value)}")
    return float(total)


def format_size(n: int) -> int | str:
    """``"50GiB"`` when ``n`` is a whole number of a binary unit, else ``n`` itself."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n and n % unit == 0:
            return f"{n // unit}{name}"
    return n


def format_duration(seconds: float) -> float | str:
    """``"1h30m"`` when ``seconds`` is a whole number of milliseconds, else ``seconds``;
    either way, ``parse_duration`` gives ``seconds`` back exactly."""
    ms = round(seconds * 1000) if math.isfinite(seconds) and seconds >= 0 else None
    if ms is None or float(Fraction(ms, 1000)) != seconds:
        return seconds
    parts = []
    for name, unit in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, unit)
        parts += [f"{count}{name}"] if count else []
    return "".join(parts) or "0s"


def human_size(n: int | float) -> str:
    """``1.5 GiB``, ``640 KiB``, ``12 B``: for people, not for parsing back."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if abs(n) >= unit:
            value = n / unit
            return f"{value:.1f} {name}" if value < 100 else f"{value:.0f} {name}"
    return f"{int(n)} B"


def human_age(seconds: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` (the largest whole unit), ``-`` when unknown."""
    if seconds is None:
        return "-"
    for name, unit in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= unit:
            return f"{int(seconds // unit)}{name}"
    return f"{max(int(seconds), 0)}s"
