"""Field converters: a TOML value to a field value, or ``ConfigError``; shared by every
section module. Also the listen-address and cache-dir helpers the sections use."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pullcache.errors import ConfigError

# Re-exported: the units are part of the config vocabulary (``50 * GiB``, ``"5m"``).
from pullcache.units import (  # noqa: F401
    DAYS,
    HOURS,
    MINUTES,
    SECONDS,
    GiB,
    KiB,
    MiB,
    TiB,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    show,
)

_HOSTPORT_RE = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::(\d{1,5}))?")
# DNS labels, plus "_" as in docker-compose service names
_LABELS_RE = re.compile(r"(?!-)[\w-]{1,63}(?<!-)(?:\.(?!-)[\w-]{1,63}(?<!-))*", re.A)


# --- public helpers ----------------------------------------------------------------------

def split_listen(listen: str) -> tuple[str, int]:
    """``("127.0.0.1", 5000)`` from ``"127.0.0.1:5000"``, ``("::1", 5000)`` from
    ``"[::1]:5000"``; the host is a name, an IPv4 or a bracketed IPv6 address. Raises
    ConfigError."""
    m = _HOSTPORT_RE.fullmatch(listen) if isinstance(listen, str) else None
    if not m or m[2] is None or int(m[2]) > 65535 or not _valid_host(m[1]):
        raise ConfigError(f'expected "host:port" or "[ipv6]:port", got {show(listen)}')
    return m[1].strip("[]"), int(m[2])


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/pullcache``, else ``~/.cache/pullcache`` (a relative XDG path is
    ignored, as the XDG spec says)."""
    env = os.environ if env is None else env
    if os.path.isabs(xdg := env.get("XDG_CACHE_HOME", "")):
        return Path(xdg) / "pullcache"
    return (Path(env["HOME"]) if env.get("HOME") else Path.home()) / ".cache" / "pullcache"


def _valid_host(host: str) -> bool:
    try:
        if host.startswith("[") and host.endswith("]"):
            ipaddress.IPv6Address(host[1:-1])
        elif re.fullmatch(r"[\d.]+", host):
            ipaddress.IPv4Address(host)
        else:
            return _LABELS_RE.fullmatch(host) is not None
    except ValueError:
        return False
    return True


def _valid_hostport(text: str) -> bool:
    m = _HOSTPORT_RE.fullmatch(text)
    return bool(m and _valid_host(m[1]) and (m[2] is None or 0 < int(m[2]) <= 65535))


# --- field converters: a TOML value to a field value, or ConfigError ---------------------

def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {show(value, type_only=True)}")
    return value


def _file(value: Any) -> Path | None:
    return Path(_str(value)).expanduser() if value != "" else None  # "" is "not set"


def _secret(value: Any) -> str | None:
    return _str(value) or None  # "" is "not set"


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected a boolean (true or false), got {show(value)}")
    return value


def _number(kinds: tuple[type, ...], ok: Callable[[Any], bool], want: str) -> Callable:
    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, kinds) or not ok(value):
            raise ConfigError(f"expected {want}, got {show(value)}")
        return kinds[-1](value)
    return convert


def _at_least(floor: int) -> Callable[[Any], int]:
    return _number((int,), lambda v: v >= floor, f"an integer >= {floor}")


def _choice(*options: str) -> Callable[[Any], str]:
    """One of ``options``, matched without regard to case, spelled as the option is."""
    spelled = {option.lower(): option for option in options}

    def convert(value: Any) -> str:
        if _str(value).lower() not in spelled:
            raise ConfigError(f"expected one of {', '.join(map(json.dumps, options))}, "
                              f"got {show(value)}")
        return spelled[value.lower()]
    return convert


def _positive(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if (result := parse(value)) == 0:
            raise ConfigError(f"must be greater than zero, got {show(value)}")
        return result
    return convert


def _listen(value: Any) -> str:
    split_listen(_str(value))
    return value


def _registry(value: Any) -> str:
    if not _valid_hostport(_str(value).lower()):
        raise ConfigError(f'expected a registry host like "ghcr.io" or "127.0.0.1:5001", '
                          f"got {show(value)}")
    return value.lower()


def _registries(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"expected an array of registry hosts, got {show(value)}")
    return tuple(map(_registry, value))


def _url(value: Any) -> str:
    parts = urlsplit(_str(value))
    if "@" in parts.netloc:  # not echoed: it may hold a password
        raise ConfigError("credentials belong in username/password, not in the URL")
    if parts.scheme not in ("http", "https") or not _valid_hostport(parts.netloc):
        raise ConfigError(f'expected an http(s) URL like "https://ghcr.io", got {show(value)}')
    if "?" in value or "#" in value:
        raise ConfigError("must not have a query or fragment")
    return value.rstrip("/")


def _env_value(text: str, annotation: str) -> Any:
    """An environment variable's text as the TOML value a field of this type would hold."""
    if annotation == "bool":
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        return words.get(text.strip().lower(), text)
    for number in (int, float) if annotation in ("int", "float") else ():
        with contextlib.suppress(ValueError):
            return number(text)
    if annotation.startswith("tuple"):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _field(convert: Callable[[Any], Any], default: Any = MISSING, *, factory: Any = MISSING,
           fmt: Callable[[Any], Any] = lambda v: v, secret: bool = False) -> Any:
    """A field that reads itself from a TOML value (``convert``) and renders itself (``fmt``)."""
    meta = {"convert": convert, "fmt": fmt, "secret": secret}
    # A secret never reaches a repr (a log line, a traceback): only "***" in renders.
    return field(default=default, default_factory=factory, metadata=meta, repr=not secret)


_fraction = _number((int, float), lambda v: 0 < v <= 1, "a number in (0, 1]")
_timeout = _positive(parse_duration)

