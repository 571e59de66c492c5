"""Amazon ECR's control plane: authorization tokens and repositories (aiobotocore).

botocore's exceptions stop here; callers see the domain errors of ``errors.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import math
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import structlog

from .. import errors
from .aws import AioClient

log = structlog.get_logger("pullcache.ecr")
REFRESH_AT = 0.5   # an ECR token lives 12 h; refresh it at half-life, well before expiresAt
MAX_BACKOFF = 600.0   # seconds between tries of a failing token refresh, at most


@dataclass(frozen=True, slots=True)
class EcrToken:
    username: str
    password: str
    expires_at: float   # wall clock (time.time())


TokenFetch = Callable[[], Awaitable[EcrToken]]


class EcrCredentials:
    """ECR registry credentials from GetAuthorizationToken, kept fresh.

    Refreshed at half the token's life, at once after the registry refused it (a 401), one
    fetch at a time, and never more often than ``min_refresh`` seconds (some endpoints report
    an ``expiresAt`` already in the past, which would otherwise mean a fetch per request;
    such a token is used until the registry refuses it).

    A failed refresh (throttled, the API down) keeps the token while it is still valid: the
    failure is logged, the next try waits a backoff that doubles per failure, and callers that
    waited for that fetch share its outcome instead of fetching again. Only a caller with no
    valid token left sees the error. Implements ``upstream.client.Credentials``.
    """

    def __init__(self, fetch: TokenFetch, *, min_refresh: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._min_refresh = min_refresh
        self._clock, self._wall = clock, wall
        self._token: EcrToken | None = None
        self._valid_until = 0.0                 # wall clock; inf: until the registry refuses it
        self._fetched_at: float | None = None   # monotonic
        self._refresh_at = 0.0                  # monotonic
        self._next_try = 0.0                    # monotonic: no fetch before this
        self._attempts = 0                      # fetches ended, for waiters to see one ended
        self._failures = 0                      # consecutive failed fetches
        self.error: errors.PullcacheError | None = None   # the last fetch's failure, if any
        self._lock = asyncio.Lock()

    async def get(self) -> tuple[str, str] | None:
        if not self._usable() or self._clock() >= self._refresh_at:
            await self._refresh(force=False)
        return (self._token.username, self._token.password) if self._usable() else None

    async def rejected(self, since: float) -> bool:
        """The registry refused credentials sent at ``since`` (monotonic): True if fresher
        ones exist now, fetched by this call or by a concurrent one."""
        if self._fetched_at is not None and self._fetched_at > since:
            return True
        self._valid_until = 0.0    # refused: no longer worth keeping through a failed refresh
        return await self._refresh(force=True)

    def _usable(self) -> bool:
        return self._token is not None and self._wall() < self._valid_until

    async def _refresh(self, *, force: bool) -> bool:
        """Fetch a new token if due (or forced) and allowed; True if one was fetched.
        Raises the fetch's error only when no valid token is left."""
        seen = self._attempts
        async with self._lock:
            if self._attempts != seen:   # another caller fetched while this one waited
                return self._outcome()
            due = force or not self._usable() or self._clock() >= self._refresh_at
            if not due or self._clock() < self._next_try:
                if not self._usable() and self.error is not None:
                    raise self.error
                return False
            try:
                token = await self._fetch()
            except errors.PullcacheError as exc:
                self._failed(exc)
                return self._outcome()
            now, wall = self._clock(), self._wall()
            lifetime = max(token.expires_at - wall, 0.0)
            self._token, self._fetched_at, self.error = token, now, None
            self._valid_until = token.expires_at if lifetime > 0 else math.inf
            self._refresh_at = now + max(lifetime * REFRESH_AT, self._min_refresh)
            self._next_try = now + self._min_refresh
            self._attempts += 1
            self._failures = 0
            log.info("token_refreshed", kind="ecr", expires_in=round(lifetime),
                     forced=force)
            return True

    def _failed(self, exc: errors.PullcacheError) -> None:
        now = self._clock()
        self._failures += 1
        backoff = min(self._min_refresh * 2 ** (self._failures - 1), MAX_BACKOFF)
        self._next_try = self._refresh_at = now + backoff
        self._attempts += 1
        self.error = exc
        left = self._valid_until - self._wall() if self._usable() else 0.0
        log.warning("token_refresh_failed", kind="ecr", error=str(exc),
                    failures=self._failures, retry_in=round(backoff, 3),
                    token_left=round(left) if left != math.inf else "until refused")

    def _outcome(self) -> bool:
        """The last fetch's outcome for a caller: True (fresh), False (failed, the valid
        token kept), or its error (failed, nothing valid left)."""
        if self.error is None:
            return True
        if self._usable():
            return False
        raise self.error


class EcrApi(AioClient):
    """One aiobotocore ECR client for the app's lifetime (``open``/``close``, or
    ``async with``)."""

    def __init__(self, region: str, *, registry_id: str | None = None,
                 profile: str | None = None, endpoint_url: str | None = None) -> None:
        self.region = region
        self.registry_id = registry_id
        self._profile = profile
        self._endpoint_url = endpoint_url

    def _create(self):
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession
        session = AioSession(profile=self._profile)
        # One retry at most inside botocore: throttling is backed off above it (the token's
        # refresh, the repositories' next try), and a call that sleeps through botocore's
        # own backoff holds up every caller waiting for it. (botocore's "max_attempts"
        # counts retries; "total_max_attempts" counts tries.)
        return session.create_client("ecr", region_name=self.region,
                                     endpoint_url=self._endpoint_url,
                                     config=AioConfig(retries={"mode": "standard",
                                                               "total_max_attempts": 2}))

    async def token(self) -> EcrToken:
        ids = {"registryIds": [self.registry_id]} if self.registry_id else {}
        answer = await self._call("get_authorization_token", **ids)
        data = answer["authorizationData"][0]
        username, _, password = base64.b64decode(data["authorizationToken"]).decode() \
            .partition(":")
        return EcrToken(username, password, data["expiresAt"].timestamp())

    async def create_repository(self, name: str, settings: dict) -> bool:
        """CreateRepository with ``settings``; False if it exists already."""
        try:
            await self._call("create_repository", repositoryName=name, **self._id(), **settings)
        except _AlreadyExists:
            return False
        return True

    async def put_lifecycle_policy(self, name: str, policy: str) -> None:
        await self._call("put_lifecycle_policy", repositoryName=name,
                         lifecyclePolicyText=policy, **self._id())

    async def describe_repository(self, name: str) -> dict:
        """The repository's description; ``errors.NameUnknown`` if it does not exist."""
        answer = await self._call("describe_repositories", repositoryNames=[name], **self._id())
        return answer["repositories"][0]

    async def repositories(self, prefix: str) -> list[dict]:
        """Every repository whose name starts with ``prefix`` (DescribeRepositories, paged)."""
        found, token = [], None
        while True:
            answer = await self._call("describe_repositories", **self._id(),
                                      **({"nextToken": token} if token else {}))
            found += [r for r in answer["repositories"]
                      if r["repositoryName"].startswith(prefix)]
            if not (token := answer.get("nextToken")):
                return found

    async def repository_tags(self, arn: str) -> list[dict]:
        return (await self._call("list_tags_for_resource", resourceArn=arn)).get("tags", [])

    async def lifecycle_policy(self, name: str) -> str:
        """The repository's lifecycle policy text, "" when it has none."""
        try:
            answer = await self._call("get_lifecycle_policy", repositoryName=name, **self._id())
        except _NoPolicy:
            return ""
        return answer.get("lifecyclePolicyText", "")

    def _id(self) -> dict:
        return {"registryId": self.registry_id} if self.registry_id else {}

    async def _call(self, operation: str, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError
        if self._client is None:
            raise errors.UpstreamUnavailable("ECR API client is not open")
        try:
            return await getattr(self._client, operation)(**kwargs)
        except ClientError as exc:
            raise _error(operation, exc) from exc
        except (BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise errors.UpstreamUnavailable(f"ECR {operation}: {exc}") from exc


class IamDenied(errors.Denied):
    """AWS refused an ECR (or KMS) action; ``action`` names it ("ecr:CreateRepository")."""

    def __init__(self, detail: str, action: str) -> None:
        super().__init__(detail)
        self.action = action


class _AlreadyExists(Exception):
    pass


class _NoPolicy(Exception):
    pass


_THROTTLED = frozenset({"ThrottlingException", "TooManyRequestsException", "ThrottledException"})
_DENIED = frozenset({"AccessDeniedException", "UnrecognizedClientException", "KmsException",
                     "ExpiredTokenException", "InvalidSignatureException"})
_ACTION = re.compile(r"perform: ([a-z0-9-]+:[A-Za-z]+)")


def _error(operation: str, exc) -> Exception:
    """botocore's ClientError → the domain error (the ECR message kept in its detail)."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "")
    if code == "RepositoryAlreadyExistsException":
        return _AlreadyExists()
    if code == "LifecyclePolicyNotFoundException":
        return _NoPolicy()
    if code in _THROTTLED:
        return errors.TooManyRequests(f"ECR {operation}: {code}")
    if code in _DENIED:
        # AWS names the action it refused ("... not authorized to perform: kms:CreateGrant"),
        # which may be another service's than the operation called.
        named = _ACTION.search(message)
        action = named[1] if named else "ecr:" + "".join(
            part.capitalize() for part in operation.split("_"))
        return IamDenied(f"ECR {operation}: {code}: {message}"[:512], action)
    if code == "RepositoryNotFoundException":
        return errors.NameUnknown(f"ECR {operation}: {code}: {message}"[:512])
    if code in ("InvalidParameterException", "InvalidTagParameterException"):
        # The name or a setting ECR will never take: as ECR words it, for the operator.
        return errors.NameInvalid(f"ECR {operation}: {code}: {message}"[:512])
    return errors.UpstreamError(f"ECR {operation}: {code or exc}")


_COMPONENT = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")   # one ECR name component
_HOST = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")
_RUNS = re.compile(r"[._-]{2,}")


def repository_name(prefix: str, upstream: str, repo: str) -> str:
    """The ECR repository mirroring ``<upstream>/<repo>``: ``<prefix>/<host>/<repo>``.

    ECR names are ``[a-z0-9]+([._-][a-z0-9]+)*`` components joined by ``/``, 2–256
    characters. The mapping is one-to-one, and the common names map to themselves:

    - a host's port follows an ``_`` (``127.0.0.1:5000`` → ``127.0.0.1_5000``), which no host
      name has, so ``127.0.0.1-5000`` stays itself; an IPv6 literal is spelled out
      (``ipv6_0000.….0001``); a host ECR cannot spell gets ``_h`` and a hash of itself;
    - a repository with separators Distribution allows and ECR does not (``my__app``,
      ``a--b``) has them collapsed, a hash of its real name appended to its last
      component, and its host segment marked ``_x``, so it meets no other repository.

    ``errors.NameInvalid`` if the result exceeds ECR's 256 characters.
    """
    host = _host(upstream.lower())
    parts = repo.split("/")
    if not all(_COMPONENT.fullmatch(part) for part in parts):
        host += "_x"
        parts = [_RUNS.sub(lambda run: run[0][0], part) for part in parts]
        parts[-1] += "-" + _hash(repo)
    name = "/".join([prefix, host, *parts])
    if len(name) > 256:
        raise errors.NameInvalid(name, message="mirrored name exceeds ECR's 256 characters")
    return name


def _host(text: str) -> str:
    if text.startswith("["):                      # [v6]:port
        address, _, rest = text[1:].partition("]")
        try:
            host = "ipv6_" + ipaddress.IPv6Address(address).exploded.replace(":", ".")
        except ValueError:
            host = f"h_h{_hash(address)}"
        port = rest.removeprefix(":")
    else:
        host, _, port = text.partition(":")
        if not _HOST.fullmatch(host):
            host = (re.sub(r"[^a-z0-9]+", "-", host).strip("-") or "h") + "_h" + _hash(host)
    return host + (f"_{port}" if port.isdigit() else f"_h{_hash(port)}" if port else "")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
