"""The tier's ECR repositories: created once with the fleet's settings, never altered after.

Settings (``[backing.ecr]``) go into CreateRepository itself (encryption, scanning, tag
mutability, resource tags), then PutLifecyclePolicy: an organisation whose SCP demands
"KMS, with our key" on every repository can then use the tier at all. A repository that
already exists with other settings is reported once (a warning), never changed: someone
chose them. A denied CreateRepository makes that repository read-only for the tier for a
while, with one log line naming the IAM actions that are missing.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import structlog

from .. import errors
from ..singleflight import SingleFlight
from ..units import DAYS
from .ecr import EcrApi

log = structlog.get_logger("pullcache.tier")
DENIED_RETRY = 600.0   # seconds a denied repository stays read-only before CreateRepository again
_ACTION = re.compile(r"perform: ([a-z0-9-]+:[A-Za-z]+)")


@dataclass(frozen=True, slots=True)
class RepositorySettings:
    encryption: str = "AES256"                 # "AES256" | "KMS"
    kms_key: str | None = None
    scan_on_push: bool = False
    tag_mutability: str = "MUTABLE"            # "MUTABLE" | "IMMUTABLE"
    lifecycle_policy: str | None = None        # ECR lifecycle policy JSON text
    tags: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def from_config(cls, cfg) -> "RepositorySettings":
        """From ``[backing.ecr]``; reads the ``lifecycle_policy`` file (ConfigError if bad)."""
        policy = None
        if cfg.lifecycle_policy:
            try:
                policy = Path(cfg.lifecycle_policy).read_text()
                json.loads(policy)
            except (OSError, ValueError) as exc:
                raise errors.ConfigError(f"backing.ecr.lifecycle_policy: {exc}") from None
        elif cfg.expire_untagged_after is not None:
            policy = expire_untagged(cfg.expire_untagged_after)
        return cls(cfg.encryption, cfg.kms_key, cfg.scan_on_push, cfg.tag_mutability, policy,
                   tuple(cfg.repository_tags))

    @property
    def immutable(self) -> bool:
        return self.tag_mutability == "IMMUTABLE"

    def create_arguments(self) -> dict[str, Any]:
        """CreateRepository's parameters for these settings."""
        encryption: dict[str, str] = {"encryptionType": self.encryption}
        if self.encryption == "KMS" and self.kms_key:
            encryption["kmsKey"] = self.kms_key
        args: dict[str, Any] = {
            "imageTagMutability": self.tag_mutability,
            "imageScanningConfiguration": {"scanOnPush": self.scan_on_push},
            "encryptionConfiguration": encryption,
        }
        if self.tags:
            args["tags"] = [{"Key": k, "Value": v} for k, v in self.tags]
        return args

    def needed_actions(self) -> list[str]:
        """The IAM actions creating a repository with these settings needs."""
        actions = ["ecr:CreateRepository"]
        if self.tags:
            actions.append("ecr:TagResource")
        if self.encryption == "KMS":
            actions += ["kms:CreateGrant", "kms:DescribeKey", "kms:RetireGrant"]
        if self.lifecycle_policy:
            actions.append("ecr:PutLifecyclePolicy")
        return actions

    def differences(self, described: dict, tags: list[dict] | None,
                    policy: str | None | bool) -> list[str]:
        """How an existing repository differs from these settings (``tags``/``policy`` None:
        not known; ``policy`` False: the repository has none)."""
        out = []
        enc = described.get("encryptionConfiguration") or {}
        if enc.get("encryptionType", "AES256") != self.encryption:
            out.append(f"encryption {enc.get('encryptionType')} (want {self.encryption})")
        elif self.kms_key and self.kms_key.startswith("arn:") and \
                enc.get("kmsKey") not in (None, self.kms_key):
            out.append(f"kms_key {enc.get('kmsKey')} (want {self.kms_key})")
        scan = (described.get("imageScanningConfiguration") or {}).get("scanOnPush", False)
        if scan != self.scan_on_push:
            out.append(f"scan_on_push {str(scan).lower()}")
        if described.get("imageTagMutability", "MUTABLE") != self.tag_mutability:
            out.append(f"tag_mutability {described.get('imageTagMutability')}")
        if tags is not None:
            have = {t["Key"]: t["Value"] for t in tags}
            out += [f"tag {k} missing or not {v!r}" for k, v in self.tags if have.get(k) != v]
        if self.lifecycle_policy and policy is not None:
            if policy is False or json.loads(policy) != json.loads(self.lifecycle_policy):
                out.append("lifecycle_policy")
        return out


def expire_untagged(seconds: float) -> str:
    """The lifecycle policy of ``expire_untagged_after``: untagged images (by-digest content
    no tag points at any more) expire that many days after their push."""
    days = max(1, round(seconds / DAYS))
    return json.dumps({"rules": [{
        "rulePriority": 1,
        "description": f"pullcache: expire untagged images {days} days after push",
        "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed",
                      "countUnit": "days", "countNumber": days},
        "action": {"type": "expire"}}]})


class Repositories:
    """CreateRepository once per name, with the settings; state per repository for status."""

    def __init__(self, api: EcrApi, settings: RepositorySettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.settings = settings
        self._clock = clock
        self._ready: dict[str, str] = {}      # name -> "created" | "existing"
        self._denied: dict[str, float] = {}   # name -> monotonic time of the denial
        self._flights: SingleFlight[None] = SingleFlight()

    async def ensure(self, name: str) -> None:
        """The repository exists (created now if needed); ``errors.Denied`` while
        CreateRepository is denied for it (the tier is read-only for it meanwhile). One
        call to ECR at a time per name, however many jobs ask."""
        if name not in self._ready:
            await self._flights.do(name, lambda: self._ensure(name))

    async def _ensure(self, name: str) -> None:
        if name in self._ready:
            return
        denied_at = self._denied.get(name)
        if denied_at is not None and self._clock() - denied_at < DENIED_RETRY:
            raise errors.Denied(f"{name}: read-only (CreateRepository denied)")
        try:
            created = await self.api.create_repository(name, self.settings.create_arguments())
        except errors.Denied as exc:
            self._denied[name] = self._clock()
            missing = _action(exc) or "ecr:CreateRepository"
            log.error("ecr_repository_create_denied", repository=name, action=missing,
                      needs=self.settings.needed_actions(), error=str(exc),
                      read_only_for=f"{DENIED_RETRY:g}s")
            raise
        self._denied.pop(name, None)
        if created:
            log.info("ecr_repository_created", repository=name,
                     encryption=self.settings.encryption, scan_on_push=self.settings.scan_on_push,
                     tag_mutability=self.settings.tag_mutability)
            await self._put_lifecycle(name)
        else:
            await self._check_drift(name)
        self._ready[name] = "created" if created else "existing"

    async def _put_lifecycle(self, name: str) -> None:
        if not self.settings.lifecycle_policy:
            return
        try:
            await self.api.put_lifecycle_policy(name, self.settings.lifecycle_policy)
        except errors.Denied as exc:
            log.error("ecr_lifecycle_policy_denied", repository=name,
                      action=_action(exc) or "ecr:PutLifecyclePolicy", error=str(exc))
        except errors.PullcacheError as exc:
            log.warning("ecr_lifecycle_policy_failed", repository=name, error=str(exc))

    async def _check_drift(self, name: str) -> None:
        """Warn once if an existing repository's settings differ; never alter them."""
        try:
            described = await self.api.describe_repository(name)
            tags = await self.api.repository_tags(described["repositoryArn"])
            policy = await self.api.lifecycle_policy(name) \
                if self.settings.lifecycle_policy else None
        except errors.PullcacheError as exc:
            log.info("ecr_repository_settings_unchecked", repository=name, error=str(exc))
            return
        differences = self.settings.differences(described, tags,
                                                False if policy == "" else policy)
        if differences:
            log.warning("ecr_repository_settings_differ", repository=name,
                        differences=differences, altered=False)

    async def close(self) -> None:
        await self._flights.close()

    def status(self) -> dict[str, str]:
        now = self._clock()
        out = dict(self._ready)
        out.update({name: "denied" for name, at in self._denied.items()
                    if now - at < DENIED_RETRY})
        return out


def _action(exc: Exception) -> str | None:
    """The IAM action an AccessDenied message names ("… not authorized to perform: X …")."""
    m = _ACTION.search(str(exc))
    return m[1] if m else None
