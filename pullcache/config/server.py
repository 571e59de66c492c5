"""``[server]`` and ``[log]``: how the daemon listens and logs."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import (SECONDS, _bool, _choice, _field, _listen, _number, _timeout,
                     format_duration)

_connections = _number((int,), lambda v: v >= 1, "a whole number >= 1")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = _field(_listen, "127.0.0.1:5000")
    access_log: bool = _field(_bool, True)
    # Many and slow clients: each bounds what one connection may hold.
    header_timeout: float = _field(_timeout, 10 * SECONDS, fmt=format_duration)
    keepalive_timeout: float = _field(_timeout, 75 * SECONDS, fmt=format_duration)
    max_connections: int = _field(_connections, 4096)
    send_timeout: float = _field(_timeout, 60 * SECONDS, fmt=format_duration)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _field(_choice("debug", "info", "warning", "error"), "info")
    format: str = _field(_choice("auto", "json", "console"), "auto")
