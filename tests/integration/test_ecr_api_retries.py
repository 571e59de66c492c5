"""The ECR API client retries inside botocore once at most: throttling is backed off above it
(the token's refresh, the repositories' next try), and a call that sleeps through botocore's
own backoff holds up every caller waiting for it. botocore's ``max_attempts`` counts retries
(``total_max_attempts`` counts tries)."""

from __future__ import annotations

import pytest

from pullcache import errors
from pullcache.backing.ecr import EcrApi
from tests.support.ecr import ACCOUNT, AWS_ENV, REGION, AwsFront, start_moto


@pytest.fixture
def front(monkeypatch):
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    server, moto = start_moto()
    aws = AwsFront(moto).start()
    yield aws
    aws.stop()
    server.stop()


async def test_a_throttled_call_is_tried_twice_at_most(front):
    front.fail["GetAuthorizationToken"] = ("ThrottlingException", "Rate exceeded")
    async with EcrApi(REGION, registry_id=ACCOUNT, endpoint_url=front.url) as api:
        with pytest.raises(errors.TooManyRequests):
            await api.token()
    assert front.count("GetAuthorizationToken") == 2
