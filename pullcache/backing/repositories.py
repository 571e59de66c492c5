"""The tier's ECR repositories: created once with the fleet's settings, never altered after.

Settings (``[backing.ecr]``) go into CreateRepository itself (encryption, scanning, tag
mutability, resource tags), then PutLifecyclePolicy: an organisation whose SCP demands
"KMS, with our key" on every repository can then use the tier at all. A repository that
already exists with other settings is reported once (a warning), never changed: someone
chose them. A denied CreateRepository is followed by DescribeRepositories (AWS checks IAM
before existence): a repository made beforehand is used as it is; otherwise it is read-only
for the tier for a while, with one log line naming the IAM actions that are missing. Creating and settling a repository (its lifecycle policy)
is one step, repeated until both are done.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import structlog

from .. import errors
from ..singleflight import SingleFlight
from ..units import DAYS
from .contract import TierError, Verdict, verdict_of
from .ecr import EcrApi, IamDenied

log = structlog.get_logger("pullcache.tier")
DENIED_RETRY = 600.0   # seconds a denied repository stays read-only before CreateRepository again
READY_TTL = 6 * 3600.0   # seconds a repository is known to exist before it is asked again


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


class SettingsRecord(Protocol):
    """Where the repositories whose settings are unfinished are kept across restarts
    (``journal.Journal``); blocking, called through ``asyncio.to_thread``."""

    def unsettled(self) -> set[str]: ...
    def settling(self, name: str, pending: bool) -> None: ...


class Repositories:
    """CreateRepository once per name, with the settings; state per repository for status.

    What is remembered expires: a repository "ready" for ``ttl`` seconds (one deleted outside
    pullcache is created again after that, or at once on NAME_UNKNOWN through ``forget``), a
    denied one for ``DENIED_RETRY``. A name ECR refuses outright is skipped for good.
    """

    def __init__(self, api: EcrApi, settings: RepositorySettings, *, ttl: float = READY_TTL,
                 record: "SettingsRecord | None" = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.settings = settings
        self.record = record                 # durable: whose settings are unfinished
        self._loaded = False
        self.ttl = ttl
        self._clock = clock
        self._ready: dict[str, tuple[str, float]] = {}   # name -> ("created" | "existing", when)
        self._denied: dict[str, tuple[str, float]] = {}  # name -> (missing action, when)
        self._skipped: dict[str, str] = {}               # name -> ECR's reason, for good
        self._unsettled: set[str] = set()    # created, settings (lifecycle policy) not yet set
        self._flights: SingleFlight[None] = SingleFlight()

    async def ensure(self, name: str) -> None:
        """The repository exists (created now if needed), its settings complete. Raises
        ``TierError``: DENIED while the tier is read-only for it, SKIP for a name ECR will
        never take. One call to ECR at a time per name, however many jobs ask."""
        if not self._is_ready(name):
            await self._flights.do(name, lambda: self._ensure(name))

    def forgive(self) -> None:
        """Ask again for every denied repository (the operator fixed IAM)."""
        self._denied.clear()

    def forget(self, name: str) -> None:
        """The tier answered NAME_UNKNOWN: the repository is gone; create it again."""
        self._ready.pop(name, None)

    def _is_ready(self, name: str) -> bool:
        ready = self._ready.get(name)
        return ready is not None and self._clock() - ready[1] < self.ttl

    async def _ensure(self, name: str) -> None:
        if self._is_ready(name):
            return
        if name in self._skipped:
            raise TierError(Verdict.SKIP, f"{name}: {self._skipped[name]}")
        denied = self._denied.get(name)
        if denied is not None and self._clock() - denied[1] < DENIED_RETRY:
            raise TierError(Verdict.DENIED, f"{name}: read-only (CreateRepository denied)",
                            action=denied[0])
        await self._load()
        resumed = name in self._unsettled      # created here earlier, its settings unfinished
        if not resumed:
            await self._note(name, pending=True)   # so a crash after the create resumes
        try:
            created = await self._create(name)
        except TierError:
            if not resumed:
                await self._note(name, pending=False)
            raise
        self._denied.pop(name, None)
        if created:
            self._unsettled.add(name)
            log.info("ecr_repository_created", repository=name,
                     encryption=self.settings.encryption, scan_on_push=self.settings.scan_on_push,
                     tag_mutability=self.settings.tag_mutability)
        elif not resumed:
            await self._note(name, pending=False)
            await self._check_drift(name)
        if name in self._unsettled:   # created here: its settings are part of the same step
            await self._put_lifecycle(name)   # TierError RETRY: the next ensure repeats it
            self._unsettled.discard(name)
            await self._note(name, pending=False)
            created = True
        self._ready[name] = ("created" if created else "existing", self._clock())

    async def _create(self, name: str) -> bool:
        """CreateRepository; False if it exists already (or was made beforehand and the
        create was denied); ``TierError`` otherwise."""
        try:
            return await self.api.create_repository(name, self.settings.create_arguments())
        except errors.NameInvalid as exc:
            self._skipped[name] = str(exc)
            log.error("ecr_repository_skipped", repository=name, error=str(exc),
                      retried=False)
            raise TierError(Verdict.SKIP, str(exc)) from exc
        except IamDenied as exc:
            # AWS checks IAM before existence: a repository made beforehand (Terraform) with
            # no CreateRepository allowed is used as it is.
            if not await self._exists(name):
                self._deny(name, exc)
                raise verdict_of(exc, writing=True) from exc
            log.info("ecr_repository_used_as_is", repository=name,
                     reason="CreateRepository denied, the repository exists")
            return False
        except errors.PullcacheError as exc:
            raise verdict_of(exc, writing=True) from exc

    async def _load(self) -> None:
        """Once: the repositories created before a restart whose settings were unfinished."""
        if self._loaded or self.record is None:
            return
        self._loaded = True
        try:
            self._unsettled |= await asyncio.to_thread(self.record.unsettled)
        except Exception as exc:  # noqa: BLE001 - the journal's disk: settings not resumed
            log.warning("tier_journal_failed", op="unsettled", error=repr(exc))

    async def _note(self, name: str, *, pending: bool) -> None:
        """Record (durably) that ``name``'s settings are being applied, or are done."""
        if self.record is None or not self.settings.lifecycle_policy:
            return
        try:
            await asyncio.to_thread(self.record.settling, name, pending)
        except Exception as exc:  # noqa: BLE001 - the journal's disk: the step goes on
            log.warning("tier_journal_failed", op="settling", repository=name,
                        error=repr(exc))

    async def _exists(self, name: str) -> bool:
        try:
            await self.api.describe_repository(name)
        except errors.PullcacheError:
            return False
        return True

    def _deny(self, name: str, exc: IamDenied) -> None:
        self._denied[name] = (exc.action, self._clock())
        log.error("ecr_repository_create_denied", repository=name, action=exc.action,
                  needs=self.settings.needed_actions(), error=str(exc),
                  read_only_for=f"{DENIED_RETRY:g}s")

    async def _put_lifecycle(self, name: str) -> None:
        """PutLifecyclePolicy for a repository created here. A throttle or an outage leaves
        the repository unsettled, and the next job's ``ensure`` puts it again; a denial
        is logged and the repository used without it."""
        if not self.settings.lifecycle_policy:
            return
        try:
            await self.api.put_lifecycle_policy(name, self.settings.lifecycle_policy)
        except IamDenied as exc:
            log.error("ecr_lifecycle_policy_denied", repository=name, action=exc.action,
                      error=str(exc))
        except errors.PullcacheError as exc:
            log.warning("ecr_lifecycle_policy_failed", repository=name, error=str(exc),
                        retried=True)
            raise verdict_of(exc, writing=True) from exc

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
        out = {name: state for name, (state, at) in self._ready.items() if now - at < self.ttl}
        out.update({name: "denied" for name, (_, at) in self._denied.items()
                    if now - at < DENIED_RETRY})
        out.update({name: "skipped" for name in self._skipped})
        return out
