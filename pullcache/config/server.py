"""``[server]`` and ``[log]``: how the daemon listens and logs."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import _bool, _choice, _field, _listen


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = _field(_listen, "127.0.0.1:5000")
    # /metrics, /healthz, /readyz and the /admin/… API; "" serves the probes and /metrics on
    # `listen` instead (and no admin API).
    admin_listen: str = _field(lambda v: _listen(v) if v != "" else v, "127.0.0.1:5001")
    access_log: bool = _field(_bool, True)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _field(_choice("debug", "info", "warning", "error"), "info")
    format: str = _field(_choice("auto", "json", "console"), "auto")
