"""Session-wide real-registry fixtures (synchronous; the servers run in their own
threads/processes, so async tests can use them too).

Import into conftest with ``from tests.support.fixtures import *``.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.registry import Registry, start_registry
from tests.support.tokenrealm import TokenRealm

__all__ = ["token_realm", "registry", "registry_basic", "registry_token", "fault_proxy"]


@pytest.fixture(scope="session")
def token_realm() -> Iterator[TokenRealm]:
    """Token server (users: alice/s3cret) trusted by ``registry_token``."""
    with TokenRealm() as realm:
        yield realm


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Anonymous (no auth) registry."""
    with start_registry(tmp_path_factory.mktemp("registry-anonymous")) as reg:
        yield reg


@pytest.fixture(scope="session")
def registry_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """htpasswd registry; credentials in ``.username``/``.password`` (alice/s3cret)."""
    with start_registry(tmp_path_factory.mktemp("registry-basic"), "basic") as reg:
        yield reg


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory, token_realm: TokenRealm) -> Iterator[Registry]:
    """Token-auth registry trusting ``token_realm``; credentials in ``.username``/``.password``."""
    with start_registry(tmp_path_factory.mktemp("registry-token"), "token", token_realm=token_realm) as reg:
        yield reg


@pytest.fixture
def fault_proxy(registry: Registry) -> Iterator[FaultProxy]:
    """A fresh FaultProxy in front of ``registry`` (no fault armed)."""
    with FaultProxy(registry.url) as proxy:
        yield proxy
