"""Shared pytest configuration. Real-server fixtures live in tests/support/fixtures.py."""

from tests.support.fixtures import *  # noqa: F401,F403

import pytest  # noqa: E402

from tests.support.daemon import Pullcache, UpstreamSpec  # noqa: E402


@pytest.fixture
def make_pullcache(tmp_path):
    """Factory: a pullcache subprocess in front of the given upstreams; stopped afterwards."""
    started: list[Pullcache] = []

    def make(*upstreams: UpstreamSpec, name: str = "pc", server: dict | None = None,
             **cache) -> Pullcache:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        specs = list(upstreams)
        if specs and not any(u.default for u in specs):
            specs[0].default = True
        pc = Pullcache(workdir, specs, cache, server=server or {})
        started.append(pc)
        return pc.start()

    yield make
    for pc in started:
        pc.stop()


@pytest.fixture
def counted(make_pullcache, fault_proxy):
    """pullcache in front of the counting fault proxy (breaker off: faults are deliberate)."""
    return make_pullcache(UpstreamSpec(fault_proxy.host, fault_proxy.url,
                                       extra={"breaker_failures": 1000}))


@pytest.fixture
def pullcache(make_pullcache, registry):
    """pullcache with the anonymous registry as its default upstream."""
    return make_pullcache(UpstreamSpec(registry.host, registry.url))
