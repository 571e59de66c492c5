"""``[server]`` and ``[log]``: how the daemon listens and logs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pullcache.errors import ConfigError

from .fields import (SECONDS, _bool, _choice, _field, _file, _listen, _number, _str,
                     _timeout, format_duration)

_connections = _number((int,), lambda v: v >= 1, "a whole number >= 1")
MIN_TOKEN = 16


def _token(value) -> str | None:
    """A bearer token (RFC 6750 ``b64token`` characters), long enough not to be guessed;
    "" is "not set". The error never echoes it."""
    text = _str(value)
    if text == "":
        return None
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
    if len(text) < MIN_TOKEN or not set(text) <= allowed:
        raise ConfigError(f"expected at least {MIN_TOKEN} characters of A-Z a-z 0-9 - . _ ~ + / "
                          "= (e.g. `openssl rand -hex 32`)")
    return text


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = _field(_listen, "127.0.0.1:5000")
    # /metrics, /healthz, /readyz and the /admin/… API; "" serves the probes and /metrics on
    # `listen` instead (and no admin API).
    admin_listen: str = _field(lambda v: _listen(v) if v != "" else v, "127.0.0.1:5001")
    # Asked of every /admin/… call as `Authorization: Bearer <token>` when set; the CLI sends
    # it. Recommended when admin_listen is not on loopback. Reloaded on SIGHUP.
    admin_token: str | None = _field(_token, None, secret=True)
    access_log: bool = _field(_bool, True)
    # HTTPS on `listen`: PEM certificate chain and key (reloaded on SIGHUP). TLS 1.2+.
    tls_cert: Path | None = _field(_file, None, fmt=str)
    tls_key: Path | None = _field(_file, None, fmt=str)
    # mTLS: clients must present a certificate signed by one of these CAs.
    tls_client_ca: Path | None = _field(_file, None, fmt=str)
    # SIGTERM: how long responses in flight may take to finish before they are cut.
    drain_timeout: float = _field(_timeout, 30 * SECONDS, fmt=format_duration)
    # Many and slow clients: each bounds what one connection may hold.
    header_timeout: float = _field(_timeout, 10 * SECONDS, fmt=format_duration)
    # TLS: the handshake must end within this, or the connection (and its slot) is let go.
    handshake_timeout: float = _field(_timeout, 10 * SECONDS, fmt=format_duration)
    keepalive_timeout: float = _field(_timeout, 75 * SECONDS, fmt=format_duration)
    max_connections: int = _field(_connections, 4096)
    send_timeout: float = _field(_timeout, 60 * SECONDS, fmt=format_duration)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ConfigError(f"{missing}: tls_cert and tls_key must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca: needs tls_cert and tls_key (mTLS is TLS)")


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _field(_choice("debug", "info", "warning", "error"), "info")
    format: str = _field(_choice("auto", "json", "console"), "auto")
