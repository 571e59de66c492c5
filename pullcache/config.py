"""Configuration: a TOML file turned into frozen dataclasses, with environment overrides.

Defaults live in the dataclasses below, so a file names only what it changes. Every error is a
``ConfigError`` naming the key path (``upstream[1].tag_ttl``) or the variable it came from.
Unlike hypercorn, unknown keys and unknown ``PULLCACHE_*`` variables are errors: a typo must
never fall back to a default silently.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pullcache.errors import ConfigError
# Re-exported: the units are part of the config vocabulary (``50 * GiB``, ``"5m"``).
from pullcache.units import (GiB, HOURS, KiB, MINUTES, MiB, SECONDS, TiB,  # noqa: F401
                             format_duration, format_size, parse_duration, parse_size, show)

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


def _choice(*options: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if _str(value).lower() not in options:
            raise ConfigError(f"expected one of {', '.join(map(json.dumps, options))}, "
                              f"got {show(value)}")
        return value.lower()
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
    return field(default=default, default_factory=factory, metadata=meta)


_fraction = _number((int, float), lambda v: 0 < v <= 1, "a number in (0, 1]")
_timeout = _positive(parse_duration)


# --- the configuration -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = _field(_listen, "127.0.0.1:5000")
    access_log: bool = _field(_bool, True)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: Path = _field(lambda v: Path(_str(v)).expanduser(), factory=default_cache_dir, fmt=str)
    max_size: int = _field(_positive(parse_size), 50 * GiB, fmt=format_size)
    high_watermark: float = _field(_fraction, 0.95)
    low_watermark: float = _field(_fraction, 0.85)
    fill_deadline: float = _field(_timeout, 2 * HOURS, fmt=format_duration)
    reconcile_on_start: bool = _field(_bool, True)

    def __post_init__(self) -> None:
        if not 0 < self.low_watermark < self.high_watermark <= 1:
            raise ConfigError(f"low_watermark: must be below high_watermark "
                              f"({self.high_watermark}), got {self.low_watermark}")


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _field(_choice("debug", "info", "warning", "error"), "info")
    format: str = _field(_choice("auto", "json", "console"), "auto")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    host: str = _field(_registry)
    url: str = _field(_url)
    aliases: tuple[str, ...] = _field(_registries, (), fmt=list)
    default: bool = _field(_bool, False)
    username: str | None = _field(_secret, None)
    password: str | None = _field(_secret, None, secret=True)
    # "auto": follow whatever challenge the registry sends; "ecr": Amazon ECR, credentials
    # from GetAuthorizationToken with the standard AWS credential chain.
    auth: str = _field(_choice("auto", "ecr"), "auto")
    tag_ttl: float = _field(parse_duration, 5 * MINUTES, fmt=format_duration)
    serve_stale: bool = _field(_bool, True)
    connect_timeout: float = _field(_timeout, 5 * SECONDS, fmt=format_duration)
    read_timeout: float = _field(_timeout, 30 * SECONDS, fmt=format_duration)
    header_timeout: float = _field(_timeout, 15 * SECONDS, fmt=format_duration)
    revalidate_timeout: float = _field(_timeout, 3 * SECONDS, fmt=format_duration)
    max_redirects: int = _field(_number((int,), lambda v: v >= 0, "an integer >= 0"), 5)
    breaker_failures: int = _field(_number((int,), lambda v: v >= 1, "an integer >= 1"), 5)
    breaker_cooldown: float = _field(parse_duration, 15 * SECONDS, fmt=format_duration)
    # auth = "ecr" only; region and registry_id are read from an ECR URL when not given.
    region: str | None = _field(_secret, None)
    registry_id: str | None = _field(_secret, None)
    profile: str | None = _field(_secret, None)
    aws_endpoint_url: str | None = _field(_url, None)   # the ECR API, e.g. a VPC endpoint
    token_min_refresh: float = _field(parse_duration, 1 * MINUTES, fmt=format_duration)

    def __post_init__(self) -> None:
        if (self.username is None) != (self.password is None):
            missing = "password" if self.password is None else "username"
            raise ConfigError(f"{missing}: username and password must be set together")
        if self.auth == "ecr":
            if self.username is not None:
                raise ConfigError("username: not used with auth = \"ecr\" (ECR issues tokens)")
            if self.ecr_region is None:
                raise ConfigError("region: required with auth = \"ecr\" unless the url is an "
                                  "ECR registry (<account>.dkr.ecr.<region>.amazonaws.com)")

    @property
    def ecr_region(self) -> str | None:
        return self.region or ecr_url_parts(self.url)[1]

    @property
    def ecr_registry_id(self) -> str | None:
        return self.registry_id or ecr_url_parts(self.url)[0]


_ECR_HOST = re.compile(r"(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")


def ecr_url_parts(url: str) -> tuple[str | None, str | None]:
    """``https://123456789012.dkr.ecr.eu-west-2.amazonaws.com`` → (registry id, region)."""
    m = _ECR_HOST.fullmatch(urlsplit(url).hostname or "")
    return (m[1], m[2]) if m else (None, None)


@dataclass(frozen=True, slots=True)
class EcrBackingConfig:
    """``[backing.ecr]``: an ECR registry shared by a fleet as the second cache tier."""
    enabled: bool = _field(_bool, False)
    region: str | None = _field(_secret, None)
    registry_id: str | None = _field(_secret, None)
    profile: str | None = _field(_secret, None)
    repository_prefix: str = _field(_str, "pullcache")
    endpoint_url: str | None = _field(_url, None)     # the AWS API (tests: moto)
    registry_url: str | None = _field(_url, None)     # the data plane (default: from the id)
    write_concurrency: int = _field(_number((int,), lambda v: v >= 1, "an integer >= 1"), 4)
    write_retries: int = _field(_number((int,), lambda v: v >= 0, "an integer >= 0"), 5)
    drain_timeout: float = _field(parse_duration, 30 * SECONDS, fmt=format_duration)
    token_min_refresh: float = _field(parse_duration, 1 * MINUTES, fmt=format_duration)
    connect_timeout: float = _field(_timeout, 3 * SECONDS, fmt=format_duration)
    header_timeout: float = _field(_timeout, 10 * SECONDS, fmt=format_duration)
    read_timeout: float = _field(_timeout, 30 * SECONDS, fmt=format_duration)

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not self.region:
            raise ConfigError("region: required when enabled")
        if not (self.registry_id or self.registry_url):
            raise ConfigError("registry_id: required when enabled (or give registry_url)")
        if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*",
                            self.repository_prefix):
            raise ConfigError(f"repository_prefix: not a valid ECR repository name prefix: "
                              f"{json.dumps(self.repository_prefix)}")

    @property
    def data_plane(self) -> str:
        return self.registry_url or (
            f"https://{self.registry_id}.dkr.ecr.{self.region}.amazonaws.com")


DEFAULT_DOCKER_HUB = UpstreamConfig(
    host="docker.io", url="https://registry-1.docker.io",
    aliases=("index.docker.io", "registry-1.docker.io"), default=True)
"""The upstream used when the configuration names none."""


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    log: LogConfig = field(default_factory=LogConfig)
    upstreams: tuple[UpstreamConfig, ...] = (DEFAULT_DOCKER_HUB,)
    backing_ecr: EcrBackingConfig = field(default_factory=EcrBackingConfig)

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ConfigError("upstream: at least one upstream is required")
        marked = [i for i, up in enumerate(self.upstreams) if up.default]
        if len(marked) > 1:
            raise ConfigError(f"upstream[{marked[1]}].default: upstream[{marked[0]}] "
                              "is already the default; only one may be")
        seen: dict[str, str] = {}
        for i, up in enumerate(self.upstreams):
            for key, name in [("host", up.host), *((f"aliases[{j}]", a)
                                                   for j, a in enumerate(up.aliases))]:
                if name in seen:
                    raise ConfigError(f"upstream[{i}].{key}: {json.dumps(name)} is already "
                                      f"used by {seen[name]}")
                seen[name] = f"upstream[{i}].{key}"

    @property
    def default_upstream(self) -> UpstreamConfig:
        """The upstream marked ``default = true``, else the first one."""
        return next((up for up in self.upstreams if up.default), self.upstreams[0])


# --- loading and rendering ---------------------------------------------------------------

_Overrides = dict[str, tuple[str, str]]  # field name -> (variable, text)
_SECTIONS: dict[str, type] = {"server": ServerConfig, "cache": CacheConfig, "log": LogConfig,
                              "backing.ecr": EcrBackingConfig}


def load(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The Config from a TOML file, then ``PULLCACHE_*`` overrides from ``env`` (default
    ``os.environ``). Without a path, ``$PULLCACHE_CONFIG`` names the file; without either,
    only the defaults and the overrides apply. Raises ConfigError."""
    env = os.environ if env is None else env
    if path is None and env.get("PULLCACHE_CONFIG"):
        path = Path(env["PULLCACHE_CONFIG"]).expanduser()
    if path is None:
        return _from_document({}, env)
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return _from_document(document, env)


def loads(text: str, env: Mapping[str, str] | None = None) -> Config:
    """The Config from TOML text, then ``PULLCACHE_*`` overrides from ``env`` (default
    ``os.environ``). Raises ConfigError."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}") from None
    return _from_document(document, os.environ if env is None else env)


def render(config: Config) -> str:
    """The effective configuration as TOML text that loads back to ``config``, except that
    secrets read ``"***"``."""
    tables = [(f"[{name}]", getattr(config, name.replace(".", "_"))) for name in _SECTIONS]
    tables += [("[[upstream]]", up) for up in config.upstreams]
    return "\n".join(line for header, obj in tables for line in (header, *_render(obj), ""))


def _render(obj: Any) -> Iterator[str]:
    for f in fields(obj):
        if (value := getattr(obj, f.name)) is not None:
            value = "***" if f.metadata["secret"] else f.metadata["fmt"](value)
            yield f"{f.name} = {_toml(value)}"


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, str):  # JSON string escapes are TOML's, but for DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return json.dumps(value) if isinstance(value, bool) else repr(value)


def _from_document(doc: dict[str, Any], env: Mapping[str, str]) -> Config:
    for key in doc:
        if key not in ("server", "cache", "log", "backing", "upstream"):
            raise ConfigError(f"{key}: unknown key")
    backing = doc.get("backing", {})
    if not isinstance(backing, dict):
        raise ConfigError(f"backing: expected a table, got {show(backing, type_only=True)}")
    for key in backing:
        if key != "ecr":
            raise ConfigError(f"backing.{key}: unknown key (the backing tier is \"ecr\")")
    doc = {**doc, "backing.ecr": backing.get("ecr", {})}
    if not isinstance(raw_upstreams := doc.get("upstream", []), list):
        raise ConfigError("upstream: expected an array of tables ([[upstream]]), "
                          f"got {show(raw_upstreams, type_only=True)}")
    raw_upstreams = raw_upstreams or [{f.name: v for f in fields(UpstreamConfig)
                                       if (v := getattr(DEFAULT_DOCKER_HUB, f.name)) is not None}]
    tables = {name: (cls, doc.get(name, {})) for name, cls in _SECTIONS.items()}
    tables |= {f"upstream[{i}]": (UpstreamConfig, raw) for i, raw in enumerate(raw_upstreams)}
    overrides = _env_overrides(env, {path: cls for path, (cls, _) in tables.items()})
    defaults = {"cache": {"dir": default_cache_dir(env)}}
    built = {path: _build(cls, raw, path, overrides[path], defaults.get(path, {}))
             for path, (cls, raw) in tables.items()}
    return Config(server=built["server"], cache=built["cache"], log=built["log"],
                  upstreams=tuple(v for k, v in built.items() if k.startswith("upstream")),
                  backing_ecr=built["backing.ecr"])


def _env_overrides(env: Mapping[str, str], tables: dict[str, type]) -> dict[str, _Overrides]:
    """``{"cache": {"max_size": ("PULLCACHE_CACHE_MAX_SIZE", "10GiB")}, "upstream[0]": …}``"""
    overrides: dict[str, _Overrides] = {path: {} for path in tables}
    for var, text in sorted(env.items()):
        if not var.startswith("PULLCACHE_") or var == "PULLCACHE_CONFIG":
            continue
        m = re.fullmatch(r"PULLCACHE_(SERVER|CACHE|LOG|BACKING_ECR|UPSTREAM_(\d+))_(\w+)", var)
        if not m:
            raise ConfigError(f"{var}: unknown variable (expected PULLCACHE_<SERVER|CACHE|LOG|"
                              "BACKING_ECR>_<KEY>, PULLCACHE_UPSTREAM_<N>_<KEY> or "
                              "PULLCACHE_CONFIG)")
        path = f"upstream[{int(m[2])}]" if m[2] else m[1].lower().replace("_", ".")
        if path not in tables:
            count = sum(p.startswith("upstream") for p in tables)
            raise ConfigError(f"{var}: there is no {path} ({count} configured)")
        if (key := m[3].lower()) not in {f.name for f in fields(tables[path])}:
            raise ConfigError(f"{var}: unknown variable ({path} has no key {key!r})")
        if text != "":  # empty is unset: docker-compose passes ${VAR:-} that way
            overrides[path][key] = (var, text)
    return overrides


def _build(cls: type, raw: Any, path: str, overrides: _Overrides,
           defaults: dict[str, Any]) -> Any:
    """An instance of ``cls`` from a TOML table, the overrides winning over the table."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table, got {show(raw, type_only=True)}")
    specs = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in specs:
            raise ConfigError(f"{path}.{key}: unknown key")
    values = dict(defaults)
    for name, spec in specs.items():
        where = f"{path}.{name}"
        try:
            if name in overrides:
                var, text = overrides[name]
                where = f"{var} ({where})"
                values[name] = spec.metadata["convert"](_env_value(text, spec.type))
            elif name in raw:
                values[name] = spec.metadata["convert"](raw[name])
            elif spec.default is MISSING and spec.default_factory is MISSING:
                raise ConfigError("required key is missing")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{path}.{e}") from None
