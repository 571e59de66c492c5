"""Configuration: a TOML file turned into frozen dataclasses, with environment overrides.

Each section is a frozen dataclass in its own module (``server``, ``access``, ``cache``,
``upstream``, ``backing``); defaults live there, so a file names only what it changes. This
module is the one loader: ``SECTIONS`` lists the tables it reads. Every error is a
``ConfigError`` naming the key path (``upstream[1].tag_ttl``) or the variable it came from.
Unlike hypercorn, unknown keys and unknown ``PULLCACHE_*`` variables are errors: a typo must
never fall back to a default silently.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from pullcache.errors import ConfigError
from pullcache.units import show

from .access import AccessConfig
from .backing import EcrBackingConfig, S3BackingConfig
from .cache import CacheConfig
from .cluster import ClusterConfig
from .fields import _env_value, default_cache_dir, split_listen
from .server import LogConfig, ServerConfig
from .upstream import DEFAULT_DOCKER_HUB, UpstreamConfig


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    log: LogConfig = field(default_factory=LogConfig)
    upstreams: tuple[UpstreamConfig, ...] = (DEFAULT_DOCKER_HUB,)
    backing_ecr: EcrBackingConfig = field(default_factory=EcrBackingConfig)
    backing_s3: S3BackingConfig = field(default_factory=S3BackingConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

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
        if self.cluster.enabled and not self.cluster.advertise:
            host, _ = split_listen(self.cluster.listen or self.server.listen)
            if host in ("", "0.0.0.0", "::"):
                raise ConfigError("cluster.advertise: the peers cannot reach a wildcard "
                                  "listen address; set this node's address here")
        if self.backing_ecr.enabled and self.backing_s3.enabled:
            raise ConfigError("backing.s3.enabled: backing.ecr is enabled already; "
                              "at most one tier may be")

    @property
    def default_upstream(self) -> UpstreamConfig:
        """The upstream marked ``default = true``, else the first one."""
        return next((up for up in self.upstreams if up.default), self.upstreams[0])


# --- loading and rendering ---------------------------------------------------------------

_Overrides = dict[str, tuple[str, str]]  # field name -> (variable, text)
# TOML table → section class; the Config field is the table name with "." as "_".
SECTIONS: dict[str, type] = {"server": ServerConfig, "access": AccessConfig, "cache": CacheConfig,
                             "log": LogConfig,
                             "backing.ecr": EcrBackingConfig, "backing.s3": S3BackingConfig,
                             "cluster": ClusterConfig}


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
    tables = [(f"[{name}]", getattr(config, name.replace(".", "_"))) for name in SECTIONS]
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
    if isinstance(value, dict):   # an inline table
        return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):  # JSON string escapes are TOML's, but for DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return json.dumps(value) if isinstance(value, bool) else repr(value)


def _from_document(doc: dict[str, Any], env: Mapping[str, str]) -> Config:
    for key in doc:
        if key not in {name.split(".")[0] for name in SECTIONS} | {"upstream"}:
            raise ConfigError(f"{key}: unknown key")
    backing = doc.get("backing", {})
    if not isinstance(backing, dict):
        raise ConfigError(f"backing: expected a table, got {show(backing, type_only=True)}")
    for key in backing:
        if key not in ("ecr", "s3"):
            raise ConfigError(f"backing.{key}: unknown key (a backing tier is \"ecr\" or "
                              f"\"s3\")")
    doc = {**doc, "backing.ecr": backing.get("ecr", {}), "backing.s3": backing.get("s3", {})}
    if not isinstance(raw_upstreams := doc.get("upstream", []), list):
        raise ConfigError("upstream: expected an array of tables ([[upstream]]), "
                          f"got {show(raw_upstreams, type_only=True)}")
    raw_upstreams = raw_upstreams or [{f.name: v for f in fields(UpstreamConfig)
                                       if (v := getattr(DEFAULT_DOCKER_HUB, f.name)) is not None}]
    tables = {name: (cls, doc.get(name, {})) for name, cls in SECTIONS.items()}
    tables |= {f"upstream[{i}]": (UpstreamConfig, raw) for i, raw in enumerate(raw_upstreams)}
    overrides = _env_overrides(env, {path: cls for path, (cls, _) in tables.items()})
    defaults = {"cache": {"dir": default_cache_dir(env)}}
    built = {path: _build(cls, raw, path, overrides[path], defaults.get(path, {}))
             for path, (cls, raw) in tables.items()}
    return Config(upstreams=tuple(v for k, v in built.items() if k.startswith("upstream")),
                  **{name.replace(".", "_"): built[name] for name in SECTIONS})


def _env_overrides(env: Mapping[str, str], tables: dict[str, type]) -> dict[str, _Overrides]:
    """``{"cache": {"max_size": ("PULLCACHE_CACHE_MAX_SIZE", "10GiB")}, "upstream[0]": …}``"""
    overrides: dict[str, _Overrides] = {path: {} for path in tables}
    for var, text in sorted(env.items()):
        if not var.startswith("PULLCACHE_") or var == "PULLCACHE_CONFIG":
            continue
        sections = "|".join(name.upper().replace(".", "_") for name in SECTIONS)
        m = re.fullmatch(rf"PULLCACHE_({sections}|UPSTREAM_(\d+))_(\w+)", var)
        if not m:
            raise ConfigError(f"{var}: unknown variable (expected PULLCACHE_<{sections}>_<KEY>, "
                              "PULLCACHE_UPSTREAM_<N>_<KEY> or PULLCACHE_CONFIG)")
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
