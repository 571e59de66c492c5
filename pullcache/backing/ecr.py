"""Amazon ECR's control plane: authorization tokens and repositories (aiobotocore).

botocore's exceptions stop here; callers see the domain errors of ``errors.py``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import structlog

from .. import errors

log = structlog.get_logger("pullcache.ecr")
REFRESH_AT = 0.5   # an ECR token lives 12 h; refresh it at half-life, well before expiresAt


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
    an ``expiresAt`` already in the past, which would otherwise mean a fetch per request).
    Implements ``upstream.client.Credentials``.
    """

    def __init__(self, fetch: TokenFetch, *, min_refresh: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._min_refresh = min_refresh
        self._clock, self._wall = clock, wall
        self._token: EcrToken | None = None
        self._fetched_at: float | None = None   # monotonic
        self._refresh_at = 0.0                  # monotonic
        self._lock = asyncio.Lock()

    async def get(self) -> tuple[str, str] | None:
        if self._token is None or self._clock() >= self._refresh_at:
            await self._refresh(force=False)
        return (self._token.username, self._token.password) if self._token else None

    async def rejected(self, since: float) -> bool:
        """The registry refused credentials sent at ``since`` (monotonic): True if fresher
        ones exist now, fetched by this call or by a concurrent one."""
        if self._fetched_at is not None and self._fetched_at > since:
            return True
        return await self._refresh(force=True)

    def _may_fetch(self) -> bool:
        return self._fetched_at is None or \
            self._clock() - self._fetched_at >= self._min_refresh

    async def _refresh(self, *, force: bool) -> bool:
        """Fetch a new token if due (or forced) and allowed; True if one was fetched."""
        seen = self._fetched_at
        async with self._lock:
            if self._fetched_at != seen:      # another caller refreshed while we waited
                return True
            due = force or self._token is None or self._clock() >= self._refresh_at
            if not due or not self._may_fetch():
                return False
            token = await self._fetch()
            now = self._clock()
            lifetime = max(token.expires_at - self._wall(), 0.0)
            self._token, self._fetched_at = token, now
            self._refresh_at = now + max(lifetime * REFRESH_AT, self._min_refresh)
            log.info("token_refreshed", kind="ecr", expires_in=round(lifetime),
                     forced=force)
            return True


class EcrApi:
    """One aiobotocore ECR client for the app's lifetime (``open``/``close``, or
    ``async with``)."""

    def __init__(self, region: str, *, registry_id: str | None = None,
                 profile: str | None = None, endpoint_url: str | None = None) -> None:
        self.region = region
        self.registry_id = registry_id
        self._profile = profile
        self._endpoint_url = endpoint_url
        self._client = None
        self._exit = None

    async def open(self) -> "EcrApi":
        from aiobotocore.session import AioSession
        session = AioSession(profile=self._profile)
        ctx = session.create_client("ecr", region_name=self.region,
                                    endpoint_url=self._endpoint_url)
        self._client = await ctx.__aenter__()
        self._exit = ctx.__aexit__
        return self

    async def close(self) -> None:
        if self._exit is not None:
            await self._exit(None, None, None)
            self._client = self._exit = None

    async def __aenter__(self) -> "EcrApi":
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "RepositoryAlreadyExistsException":
                raise _AlreadyExists() from exc
            if code == "LifecyclePolicyNotFoundException":
                raise _NoPolicy() from exc
            if code in ("ThrottlingException", "TooManyRequestsException", "ThrottledException"):
                raise errors.TooManyRequests(f"ECR {operation}: {code}") from exc
            if code in ("AccessDeniedException", "UnrecognizedClientException", "KmsException",
                        "ExpiredTokenException", "InvalidSignatureException"):
                message = exc.response.get("Error", {}).get("Message", "")
                raise errors.Denied(f"ECR {operation}: {code}: {message}"[:512]) from exc
            raise errors.UpstreamError(f"ECR {operation}: {code or exc}") from exc
        except (BotoCoreError, OSError, asyncio.TimeoutError) as exc:
            raise errors.UpstreamUnavailable(f"ECR {operation}: {exc}") from exc


class _AlreadyExists(Exception):
    pass


class _NoPolicy(Exception):
    pass


_INVALID = re.compile(r"[^a-z0-9._/-]+")


def repository_name(prefix: str, upstream: str, repo: str) -> str:
    """The ECR repository mirroring ``<upstream>/<repo>``: ``<prefix>/<upstream>/<repo>``.

    ECR names are ``[a-z0-9]+([._-][a-z0-9]+)*`` components joined by ``/``, 2–256
    characters. Repository names are already valid components (distribution-spec grammar);
    a host's port separator is not, so ``127.0.0.1:5000`` becomes ``127.0.0.1-5000``.
    """
    host = _INVALID.sub("-", upstream.lower()).strip("-._")
    name = f"{prefix}/{host}/{repo}"
    if len(name) > 256:
        raise errors.NameInvalid(name, message="mirrored name exceeds ECR's 256 characters")
    return name
