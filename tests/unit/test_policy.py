"""Pull policy as a table: (user, upstream, repository) → allowed?"""

import pytest

from pullcache.config import loads
from pullcache.gate.policy import Policy, UpstreamPolicy, compile_glob

POLICY = Policy({
    "docker.io": UpstreamPolicy.of(allow=["library/*", "myorg/**"], deny=["myorg/secret-*"]),
    "ghcr.io": UpstreamPolicy.of(users=["ci", "alice"]),
    "quay.io": UpstreamPolicy.of(deny=["**"], users=["anonymous"]),
})


@pytest.mark.parametrize("user,upstream,repo,allowed", [
    ("anonymous", "docker.io", "library/alpine", True),
    ("anonymous", "docker.io", "library/a/b", False),        # * stays in one component
    ("anonymous", "docker.io", "myorg/app", True),
    ("anonymous", "docker.io", "myorg/team/app", True),      # ** spans components
    ("anonymous", "docker.io", "myorg", False),
    ("anonymous", "docker.io", "myorg/secret-db", False),    # deny wins over allow
    ("anonymous", "docker.io", "myorg/team/secret-db", True),
    ("anonymous", "docker.io", "other/app", False),          # allow set: others refused
    ("anonymous", "ghcr.io", "o/app", False),                # users set
    ("ci", "ghcr.io", "o/app", True),
    ("bob", "ghcr.io", "o/app", False),
    ("anonymous", "quay.io", "x/y", False),
    ("anonymous", "unconfigured.example", "x/y", True),       # no policy: open
])
def test_decisions(user, upstream, repo, allowed):
    decision = POLICY.decide(user, upstream, repo)
    assert decision.allowed is allowed
    assert bool(decision.reason) is not allowed


def test_reasons_name_the_repository_or_the_user():
    assert "myorg/secret-db" in POLICY.decide("a", "docker.io", "myorg/secret-db").reason
    assert "'bob'" in POLICY.decide("bob", "ghcr.io", "o/app").reason


@pytest.mark.parametrize("glob,name,match", [
    ("a.b/*", "a.b/c", True), ("a.b/*", "aXb/c", False), ("*", "x", True), ("*", "x/y", False),
    ("**", "x/y/z", True), ("a/**/z", "a/b/c/z", True), ("a*", "abc", True),
])
def test_globs(glob, name, match):
    assert (compile_glob(glob).fullmatch(name) is not None) is match


def test_from_config():
    cfg = loads('[[upstream]]\nhost = "docker.io"\nurl = "https://r"\nallow = ["library/*"]\n'
                'users = ["ci"]\n', env={})
    policy = Policy.from_config(cfg.upstreams)
    assert policy.decide("ci", "docker.io", "library/alpine").allowed
    assert not policy.decide("anonymous", "docker.io", "library/alpine").allowed


@pytest.mark.parametrize("key,value", [("allow", '["Library/*"]'), ("deny", '"x"'),
                                       ("users", '["a:b"]'), ("allow", '["a//b"]')])
def test_config_rejects_bad_policy(key, value):
    from pullcache.errors import ConfigError
    with pytest.raises(ConfigError, match=f"upstream\\[0\\].{key}"):
        loads(f'[[upstream]]\nhost = "docker.io"\nurl = "https://r"\n{key} = {value}\n', env={})
