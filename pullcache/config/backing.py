"""``[backing.ecr]``: the ECR registry a fleet shares as its second cache tier."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pullcache.errors import ConfigError

from .fields import (
    DAYS,
    MINUTES,
    SECONDS,
    _bool,
    _choice,
    _field,
    _at_least,
    _positive,
    _secret,
    _str,
    _timeout,
    _url,
    MiB,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    show,
)


def _tags(value: Any) -> tuple[tuple[str, str], ...]:
    """``{ team = "platform" }`` (or ``team=platform,env=prod`` from the environment);
    ECR's tag limits: keys up to 128 characters, values up to 256."""
    if isinstance(value, list) and all(isinstance(i, str) and "=" in i for i in value):
        value = dict(item.partition("=")[::2] for item in value)   # from the environment
    if not isinstance(value, dict):
        raise ConfigError(f"expected a table of tags, got {show(value, type_only=True)}")
    for key, text in value.items():
        if not isinstance(text, str) or not 0 < len(key) <= 128 or len(text) > 256:
            raise ConfigError(f"{key}: expected a tag (key 1-128 characters, value a string "
                              f"of up to 256)")
    return tuple(sorted(value.items()))


def _check_policy_file(path: str) -> None:
    """A path to an ECR lifecycle policy (a JSON object), read at load: ``check-config``
    then refuses what ``serve`` would refuse, with the key path."""
    try:
        with open(path, encoding="utf-8") as f:
            policy = json.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {json.dumps(path)}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{json.dumps(path)} is not JSON: {exc}") from None
    if not isinstance(policy, dict):
        raise ConfigError(f"{json.dumps(path)}: expected a JSON object (an ECR lifecycle "
                          f"policy), got {show(policy, type_only=True)}")


@dataclass(frozen=True, slots=True)
class TierConfig:
    """What every second-tier backing has: its writer queue, timeouts and breakers."""
    enabled: bool = _field(_bool, False)
    write_concurrency: int = _field(_at_least(1), 4)
    write_retries: int = _field(_at_least(0), 5)
    drain_timeout: float = _field(parse_duration, 30 * SECONDS, fmt=format_duration)
    connect_timeout: float = _field(_timeout, 3 * SECONDS, fmt=format_duration)
    header_timeout: float = _field(_timeout, 10 * SECONDS, fmt=format_duration)
    read_timeout: float = _field(_timeout, 30 * SECONDS, fmt=format_duration)
    # The tier's breakers (one for reads, one for writes): open after this many failures
    # in a row, for the cool-down. An upload's timeout grows with its body at upload_rate.
    breaker_failures: int = _field(_at_least(1), 5)
    breaker_cooldown: float = _field(parse_duration, 15 * SECONDS, fmt=format_duration)
    upload_rate: int = _field(_positive(parse_size), 1 * MiB, fmt=format_size)
    resync_interval: float = _field(parse_duration, 10 * MINUTES, fmt=format_duration)


@dataclass(frozen=True, slots=True)
class EcrBackingConfig(TierConfig):
    """``[backing.ecr]``: an ECR registry shared by a fleet as the second cache tier."""
    region: str | None = _field(_secret, None)
    registry_id: str | None = _field(_secret, None)
    profile: str | None = _field(_secret, None)
    repository_prefix: str = _field(_str, "pullcache")
    endpoint_url: str | None = _field(_url, None)     # the AWS API (tests: moto)
    registry_url: str | None = _field(_url, None)     # the data plane (default: from the id)
    token_min_refresh: float = _field(parse_duration, 1 * MINUTES, fmt=format_duration)
    # Repository settings, applied when pullcache creates a repository (never altered after).
    encryption: str = _field(_choice("AES256", "KMS"), "AES256")
    kms_key: str | None = _field(_secret, None)       # ARN, id or alias/...; KMS only
    scan_on_push: bool = _field(_bool, False)
    tag_mutability: str = _field(_choice("MUTABLE", "IMMUTABLE"), "MUTABLE")
    lifecycle_policy: str | None = _field(_secret, None)        # a path to ECR lifecycle JSON
    expire_untagged_after: float | None = _field(parse_duration, None, fmt=format_duration)
    repository_tags: tuple[tuple[str, str], ...] = _field(_tags, (), fmt=dict)

    def __post_init__(self) -> None:
        if self.kms_key and self.encryption != "KMS":
            raise ConfigError('kms_key: only with encryption = "KMS"')
        if self.lifecycle_policy and self.expire_untagged_after is not None:
            raise ConfigError("expire_untagged_after: give either it or lifecycle_policy")
        if self.lifecycle_policy:
            try:
                _check_policy_file(self.lifecycle_policy)
            except ConfigError as exc:
                raise ConfigError(f"lifecycle_policy: {exc}") from None
        if self.expire_untagged_after is not None and self.expire_untagged_after < DAYS:
            raise ConfigError("expire_untagged_after: ECR counts in days; at least 1d")
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


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")   # S3's bucket naming rules
MIN_PART, MAX_PART = 8 * MiB, 64 * MiB


def _prefix(value: Any) -> str:
    text = _str(value).strip("/")
    if any(part in ("", ".", "..") for part in text.split("/")) and text:
        raise ConfigError(f"expected key segments joined by /, got {show(value)}")
    return text


@dataclass(frozen=True, slots=True)
class S3BackingConfig(TierConfig):
    """``[backing.s3]``: a bucket on any S3-compatible store (S3, MinIO, Ceph RGW, R2, GCS)
    shared by a fleet as the second cache tier (docs/operations.md §13)."""
    # The tier's short timeout: a store that has not answered by then is skipped for the
    # origin, so a slow store costs a pull at most this.
    header_timeout: float = _field(_timeout, 5 * SECONDS, fmt=format_duration)
    bucket: str | None = _field(_secret, None)
    prefix: str = _field(_prefix, "pullcache")
    region: str | None = _field(_secret, None)
    endpoint_url: str | None = _field(_url, None)      # MinIO, Ceph, R2, GCS (tests: moto)
    addressing_style: str = _field(_choice("path", "virtual", "auto"), "auto")
    # Credentials: the standard chain (environment, profile, instance role, web identity)
    # unless both keys are given; never rendered, logged or repr'd.
    profile: str | None = _field(_secret, None)
    access_key_id: str | None = _field(_secret, None, secret=True)
    secret_access_key: str | None = _field(_secret, None, secret=True)
    server_side_encryption: str | None = _field(_choice("AES256", "aws:kms"), None)
    kms_key: str | None = _field(_secret, None)        # aws:kms only (default: the AWS key)
    storage_class: str | None = _field(_secret, None)  # STANDARD, INTELLIGENT_TIERING, ...
    # Multipart above one part; parts of 8-64 MiB (S3 allows 10,000 parts: 80 GiB at 8 MiB).
    part_size: int = _field(_positive(parse_size), 8 * MiB, fmt=format_size)
    # "If-None-Match: *" on every put (no object uploaded twice across nodes); false for a
    # store that refuses it: a HEAD before the put then (a race may upload twice).
    conditional_put: bool = _field(_bool, True)
    # After AccessDenied on a write, the tier is read-only this long (the missing action
    # logged), then writes are tried again.
    denied_for: float = _field(parse_duration, 10 * MINUTES, fmt=format_duration)

    def __post_init__(self) -> None:
        if self.kms_key and self.server_side_encryption != "aws:kms":
            raise ConfigError('kms_key: only with server_side_encryption = "aws:kms"')
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ConfigError("access_key_id: give both it and secret_access_key, or neither "
                              "(the standard credential chain)")
        if not MIN_PART <= self.part_size <= MAX_PART:
            raise ConfigError("part_size: between 8MiB and 64MiB")
        if not self.enabled:
            return
        if not self.bucket:
            raise ConfigError("bucket: required when enabled")
        if not _BUCKET.fullmatch(self.bucket):
            raise ConfigError(f"bucket: not a valid bucket name: {json.dumps(self.bucket)}")
        if not (self.region or self.endpoint_url):
            raise ConfigError("region: required when enabled (or give endpoint_url)")
