"""``[[upstream]]``: one origin registry, its credentials, freshness and timeouts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pullcache.domains import registrable_domain
from pullcache.errors import ConfigError

from .fields import (
    HOURS,
    MINUTES,
    SECONDS,
    _bool,
    _choice,
    _field,
    _at_least,
    _registries,
    _registry,
    _secret,
    _str,
    _timeout,
    _url,
    _valid_hostport,
    format_duration,
    parse_duration,
    show,
)


def _realm(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a realm host string, got {show(value)}")
    entry = value.strip().lower().rstrip(".")
    if entry.startswith("*."):
        domain = entry[2:]
        if _valid_hostport(domain) and ":" not in domain and registrable_domain(domain):
            return entry
        if _valid_hostport(domain) and ":" not in domain:
            # "*.co.uk", "*.herokuapp.com": every owner under a public suffix, not one.
            raise ConfigError(f"{show(value)} spans a public suffix: name a domain that "
                              f"one owner registered")
    elif _valid_hostport(entry):
        return entry
    raise ConfigError(f'expected a host, "host:port" or "*.domain", got {show(value)}')


def _realms(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"expected an array of realm hosts, got {show(value)}")
    return tuple(map(_realm, value))


_COMPONENT = r"[a-z0-9*]+(?:(?:[._]|__|-+)[a-z0-9*]+)*"   # the OCI name grammar, plus *
_GLOB = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


def _globs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f'expected an array of repository globs like ["library/*"], '
                          f"got {show(value)}")
    for glob in value:
        if not _GLOB.fullmatch(_str(glob)):
            raise ConfigError(f'expected a repository glob like "library/*" or "myorg/**", '
                              f"got {show(glob)}")
    return tuple(value)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(_str(v) and ":" not in v for v in value):
        raise ConfigError(f'expected an array of user names like ["ci", "anonymous"], '
                          f"got {show(value)}")
    return tuple(value)


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
    # How long a referrers list (distribution-spec end-12a) is served before upstream is
    # asked again; unset: tag_ttl. The fallback tag schema is a tag, so it follows tag_ttl.
    referrers_ttl: float | None = _field(parse_duration, None, fmt=format_duration)
    serve_stale: bool = _field(_bool, True)
    # Past tag_ttl, for this long: answer from the cache at once, revalidate in the
    # background (a moved tag is seen one request later). 0: off.
    stale_while_revalidate: float = _field(parse_duration, 1 * HOURS, fmt=format_duration)
    connect_timeout: float = _field(_timeout, 5 * SECONDS, fmt=format_duration)
    read_timeout: float = _field(_timeout, 30 * SECONDS, fmt=format_duration)
    header_timeout: float = _field(_timeout, 15 * SECONDS, fmt=format_duration)
    revalidate_timeout: float = _field(_timeout, 3 * SECONDS, fmt=format_duration)
    max_redirects: int = _field(_at_least(0), 5)
    breaker_failures: int = _field(_at_least(1), 5)
    breaker_cooldown: float = _field(parse_duration, 15 * SECONDS, fmt=format_duration)
    # auth = "ecr" only; region and registry_id are read from an ECR URL when not given.
    region: str | None = _field(_secret, None)
    registry_id: str | None = _field(_secret, None)
    profile: str | None = _field(_secret, None)
    aws_endpoint_url: str | None = _field(_url, None)   # the ECR API, e.g. a VPC endpoint
    token_min_refresh: float = _field(parse_duration, 1 * MINUTES, fmt=format_duration)
    # Token realms, besides the upstream's own host and the built-in presets, that may
    # receive this upstream's credentials: "host", "host:port" or "*.domain".
    trusted_realms: tuple[str, ...] = _field(_realms, (), fmt=list)


    # Pull policy: repository globs ("*" within one path component, "**" across them).
    # With `allow`, only matching repositories may be pulled; `deny` wins over `allow`.
    allow: tuple[str, ...] | None = _field(_globs, None, fmt=list)
    deny: tuple[str, ...] = _field(_globs, (), fmt=list)
    # Who may use this upstream (htpasswd user names; "anonymous" for anonymous clients).
    users: tuple[str, ...] | None = _field(_names, None, fmt=list)

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


DEFAULT_DOCKER_HUB = UpstreamConfig(
    host="docker.io", url="https://registry-1.docker.io",
    aliases=("index.docker.io", "registry-1.docker.io"), default=True)
"""The upstream used when the configuration names none."""
