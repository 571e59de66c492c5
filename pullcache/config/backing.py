"""``[backing.ecr]``: the ECR registry a fleet shares as its second cache tier."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pullcache.errors import ConfigError

from .fields import (
    MINUTES,
    SECONDS,
    _bool,
    _field,
    _number,
    _secret,
    _str,
    _timeout,
    _url,
    format_duration,
    parse_duration,
)


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
