"""ECR: the repository-name mapping and the token refresh timing (injected clocks, no sleeps)."""

from __future__ import annotations

import asyncio
import re

import pytest

from pullcache.backing.ecr import EcrCredentials, EcrToken, repository_name
from pullcache.errors import NameInvalid
from tests.support.ports import eventually

HOUR = 3600.0


@pytest.mark.parametrize("upstream, repo, expected", [
    ("docker.io", "library/alpine", "pullcache/docker.io/library/alpine"),
    ("ghcr.io", "o/app", "pullcache/ghcr.io/o/app"),
    ("127.0.0.1:5000", "team/x", "pullcache/127.0.0.1_5000/team/x"),
    ("127.0.0.1-5000", "team/x", "pullcache/127.0.0.1-5000/team/x"),
    ("Registry.K8S.io", "pause", "pullcache/registry.k8s.io/pause"),
    ("[::1]:5000", "a", "pullcache/ipv6_0000.0000.0000.0000.0000.0000.0000.0001_5000/a"),
])
def test_repository_name(upstream, repo, expected):
    assert repository_name("pullcache", upstream, repo) == expected


ECR_NAME = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")


def test_repository_name_is_one_to_one_and_valid_for_ecr():
    """Distribution allows ``__`` and runs of ``-``; ECR does not. Hosts with and without a
    port separator, and repositories that differ only in their separators, stay apart."""
    pairs = [(u, r) for u in ("127.0.0.1:5000", "127.0.0.1-5000", "localhost:5000",
                              "localhost", "xn--bcher-kva.example", "[::1]:5000")
             for r in ("my__app", "my_app", "my-app", "a--b", "a-b", "a---b", "a/b__c",
                       "a/b_c", "a.b", "team/x")]
    names = [repository_name("pullcache", u, r) for u, r in pairs]
    assert len(set(names)) == len(pairs)
    assert all(ECR_NAME.fullmatch(n) and len(n) <= 256 for n in names), names
    assert repository_name("pullcache", "docker.io", "my-app") == "pullcache/docker.io/my-app"


def test_repository_name_respects_ecr_length_limit():
    with pytest.raises(NameInvalid):
        repository_name("pullcache", "docker.io", "a/" * 126 + "b")


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_800_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class Fetcher:
    """GetAuthorizationToken stand-in: each call issues a new password, valid ``ttl`` s."""

    def __init__(self, clock: Clock, ttl: float = 12 * HOUR, gate: asyncio.Event | None = None):
        self.clock, self.ttl, self.gate = clock, ttl, gate
        self.calls = 0

    async def __call__(self) -> EcrToken:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return EcrToken("AWS", f"pw{self.calls}", self.clock.wall + self.ttl)


def creds(clock: Clock, fetch: Fetcher, min_refresh: float = 60.0) -> EcrCredentials:
    return EcrCredentials(fetch, min_refresh=min_refresh, clock=lambda: clock.mono,
                          wall=lambda: clock.wall)


async def test_cached_until_half_life_then_refreshed():
    clock = Clock()
    fetch = Fetcher(clock)
    c = creds(clock, fetch)
    assert await c.get() == ("AWS", "pw1")
    clock.advance(6 * HOUR - 1)
    assert await c.get() == ("AWS", "pw1") and fetch.calls == 1
    clock.advance(2)   # past half of the 12 h: refreshed well before expiresAt
    assert await c.get() == ("AWS", "pw2") and fetch.calls == 2


async def test_rejected_refreshes_at_once_but_not_more_often_than_min_interval():
    clock = Clock()
    fetch = Fetcher(clock)
    c = creds(clock, fetch, min_refresh=60)
    await c.get()
    clock.advance(59)
    sent = clock.mono
    assert await c.rejected(sent) is False and fetch.calls == 1   # too soon after the fetch
    clock.advance(1)
    sent = clock.mono
    assert await c.rejected(sent) is True and fetch.calls == 2    # a 401: refreshed at once
    assert await c.get() == ("AWS", "pw2")
    # A request sent before that refresh and refused afterwards: retry with the new token.
    assert await c.rejected(sent - 1) is True and fetch.calls == 2


async def test_expiry_in_the_past_does_not_mean_a_fetch_per_request():
    """Some endpoints (moto among them) report an expiresAt already past."""
    clock = Clock()
    fetch = Fetcher(clock, ttl=-10 * 365 * 24 * HOUR)
    c = creds(clock, fetch, min_refresh=60)
    for _ in range(50):
        await c.get()
        clock.advance(1)
    assert fetch.calls == 1
    clock.advance(10)
    await c.get()
    assert fetch.calls == 2


async def test_one_fetch_at_a_time():
    clock = Clock()
    gate = asyncio.Event()
    fetch = Fetcher(clock, gate=gate)
    c = creds(clock, fetch)
    waiters = [asyncio.create_task(c.get()) for _ in range(20)]
    await eventually(lambda: fetch.calls >= 1, what="the first fetch in flight")
    gate.set()
    assert set(await asyncio.gather(*waiters)) == {("AWS", "pw1")}
    assert fetch.calls == 1
    # Concurrent 401s after the interval: one refresh serves them all.
    clock.advance(120)
    sent = clock.mono
    clock.advance(1)
    results = await asyncio.gather(*(c.rejected(sent) for _ in range(10)))
    assert all(results) and fetch.calls == 2


async def test_a_failed_fetch_propagates_and_the_next_call_retries():
    clock = Clock()
    calls = 0

    async def flaky() -> EcrToken:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("throttled")
        return EcrToken("AWS", "ok", clock.wall + 12 * HOUR)
    c = creds(clock, flaky)
    with pytest.raises(RuntimeError):
        await c.get()
    assert await c.get() == ("AWS", "ok")


async def test_a_failed_refresh_keeps_the_valid_token_and_one_caller_fetches():
    """At half-life with GetAuthorizationToken throttled, 20 concurrent callers get the
    token they had (6 h left); one fetch was tried, and the next waits a backoff."""
    from pullcache.errors import TooManyRequests
    clock = Clock()
    fetch = Fetcher(clock)
    c = creds(clock, fetch, min_refresh=60)
    assert await c.get() == ("AWS", "pw1")
    clock.advance(6 * HOUR + 1)
    throttled = asyncio.Event()

    async def refuse() -> EcrToken:
        fetch.calls += 1
        await throttled.wait()
        raise TooManyRequests("ECR get_authorization_token: ThrottlingException")
    c._fetch = refuse
    callers = [asyncio.create_task(c.get()) for _ in range(20)]
    await eventually(lambda: fetch.calls >= 2, what="the refresh in flight")
    throttled.set()
    assert set(await asyncio.gather(*callers)) == {("AWS", "pw1")}
    assert fetch.calls == 2 and isinstance(c.error, TooManyRequests)
    clock.advance(30)                    # within the backoff: no fetch, the token still used
    assert await c.get() == ("AWS", "pw1") and fetch.calls == 2
    clock.advance(31)
    assert await c.get() == ("AWS", "pw1") and fetch.calls == 3    # tried again, failed
    clock.advance(121)                   # the backoff doubled (120 s)
    c._fetch = fetch
    assert await c.get() == ("AWS", "pw4") and c.error is None


async def test_a_failed_refresh_raises_once_the_token_really_expired():
    from pullcache.errors import TooManyRequests
    clock = Clock()
    c = creds(clock, Fetcher(clock, ttl=HOUR), min_refresh=60)
    await c.get()

    async def refuse() -> EcrToken:
        raise TooManyRequests("throttled")
    c._fetch = refuse
    clock.advance(HOUR + 1)
    with pytest.raises(TooManyRequests):
        await c.get()
    with pytest.raises(TooManyRequests):    # within the backoff: the same error, no fetch
        await c.get()


# -- repository settings ([backing.ecr]) ----------------------------------------------------

def settings_from(text: str):
    from pullcache.backing.repositories import RepositorySettings
    from pullcache.config import loads
    return RepositorySettings.from_config(loads(text).backing_ecr)


def test_settings_become_create_repository_arguments():
    s = settings_from('[backing.ecr]\nencryption = "kms"\nkms_key = "alias/ecr"\n'
                      'scan_on_push = true\ntag_mutability = "immutable"\n'
                      'repository_tags = { team = "platform" }\n')
    assert s.create_arguments() == {
        "imageTagMutability": "IMMUTABLE", "imageScanningConfiguration": {"scanOnPush": True},
        "encryptionConfiguration": {"encryptionType": "KMS", "kmsKey": "alias/ecr"},
        "tags": [{"Key": "team", "Value": "platform"}]}
    assert s.needed_actions() == ["ecr:CreateRepository", "ecr:TagResource", "kms:CreateGrant",
                                  "kms:DescribeKey", "kms:RetireGrant"]


def test_expire_untagged_after_generates_the_policy():
    import json
    s = settings_from('[backing.ecr]\nexpire_untagged_after = "30d"\n')
    [rule] = json.loads(s.lifecycle_policy)["rules"]
    assert rule["selection"] == {"tagStatus": "untagged", "countType": "sinceImagePushed",
                                 "countUnit": "days", "countNumber": 30}
    assert "ecr:PutLifecyclePolicy" in s.needed_actions()


def test_lifecycle_policy_file_is_read_and_checked(tmp_path):
    from pullcache.errors import ConfigError
    (tmp_path / "p.json").write_text('{"rules": []}')
    assert settings_from(f'[backing.ecr]\nlifecycle_policy = "{tmp_path}/p.json"\n') \
        .lifecycle_policy == '{"rules": []}'
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="lifecycle_policy"):
        settings_from(f'[backing.ecr]\nlifecycle_policy = "{tmp_path}/bad.json"\n')


@pytest.mark.parametrize("text, message", [
    ('kms_key = "alias/x"', "kms_key"),
    ('encryption = "DES"', "encryption"),
    ('lifecycle_policy = "/p.json"\nexpire_untagged_after = "30d"', "expire_untagged_after"),
    ('expire_untagged_after = "2h"', "at least 1d"),
    ('repository_tags = ["team"]', "repository_tags"),
    ('tag_mutability = "SOMETIMES"', "tag_mutability"),
])
def test_settings_errors_name_the_key(text, message):
    from pullcache.config import loads
    from pullcache.errors import ConfigError
    with pytest.raises(ConfigError, match=message):
        loads(f"[backing.ecr]\n{text}\n")


def test_differences_of_an_existing_repository():
    s = settings_from('[backing.ecr]\nscan_on_push = true\nrepository_tags = { team = "a" }\n'
                      'expire_untagged_after = "7d"\n')
    same = {"encryptionConfiguration": {"encryptionType": "AES256"},
            "imageScanningConfiguration": {"scanOnPush": True}, "imageTagMutability": "MUTABLE"}
    assert s.differences(same, [{"Key": "team", "Value": "a"}], s.lifecycle_policy) == []
    other = {**same, "imageTagMutability": "IMMUTABLE",
             "encryptionConfiguration": {"encryptionType": "KMS"}}
    got = s.differences(other, [], False)
    assert got[0].startswith("encryption KMS") and "tag_mutability IMMUTABLE" in got
    assert any(d.startswith("tag team") for d in got) and "lifecycle_policy" in got
