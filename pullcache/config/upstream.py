"""``[[upstream]]``: one origin registry, its credentials, freshness and timeouts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from pullcache.errors import ConfigError

from .fields import (
    HOURS,
    MINUTES,
    SECONDS,
    _bool,
    _choice,
    _field,
    _number,
    _registries,
    _registry,
    _secret,
    _timeout,
    _url,
    format_duration,
    parse_duration,
)


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
    # Past tag_ttl, for this long: answer from the cache at once, revalidate in the
    # background (a moved tag is seen one request later). 0: off.
    stale_while_revalidate: float = _field(parse_duration, 1 * HOURS, fmt=format_duration)
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


DEFAULT_DOCKER_HUB = UpstreamConfig(
    host="docker.io", url="https://registry-1.docker.io",
    aliases=("index.docker.io", "registry-1.docker.io"), default=True)
"""The upstream used when the configuration names none."""
