"""Cluster mode's pure parts: rendezvous ownership (pullcache/cluster/ring.py), who is asked
(``Cluster.owners``), and the ``[cluster]`` section (pullcache/config/cluster.py)."""

from __future__ import annotations

import hashlib

import pytest

from pullcache import config
from pullcache.cluster import ASKED, Cluster, ring
from pullcache.errors import ConfigError

KEYS = [f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(4000)]
NODES = [f"10.0.0.{i}:5002" for i in range(1, 9)]
TOKEN = "t" * 32


def owners(members) -> dict[str, str]:
    return {key: ring.owner(key, members) for key in KEYS}


@pytest.mark.parametrize("before, after", [
    (NODES[:4], NODES[:5]),          # one joins: 4 → 5
    (NODES[:5], NODES[:4]),          # one leaves: 5 → 4
    (NODES, NODES[1:]),              # the first of 8 leaves
    (NODES[:2], NODES[:3]),          # 2 → 3
    (NODES[:7], NODES[:3] + NODES[4:8]),   # one leaves and another joins at once
])
def test_only_the_moved_keys_change_owner(before, after):
    old, new = owners(before), owners(after)
    moved = {k for k in KEYS if old[k] != new[k]}
    left, joined = set(before) - set(after), set(after) - set(before)
    # A key moves only from a member that left, or to a member that joined...
    assert all(old[k] in left or new[k] in joined for k in moved)
    # ... and every key of a member that left moves (to someone still there).
    assert {k for k in KEYS if old[k] in left} <= moved
    # About 1/N of the keys move per member changed.
    n = max(len(before), len(after))
    expected = len(KEYS) * (len(left) + len(joined)) / n
    assert 0.8 * expected <= len(moved) <= 1.2 * expected, (len(moved), expected)


def test_keys_spread_evenly_and_every_member_agrees():
    counts = {m: 0 for m in NODES}
    for key in KEYS:
        counts[ring.owner(key, NODES)] += 1
        assert ring.owner(key, list(reversed(NODES))) == ring.owner(key, NODES)
    share = len(KEYS) / len(NODES)
    assert all(0.8 * share <= c <= 1.2 * share for c in counts.values()), counts


async def test_a_node_asks_the_members_ranked_before_it_at_most_two():
    me = NODES[3]
    cluster = Cluster(me, session=None, token=TOKEN, ssl_context=None, timeout=2,
                      read_timeout=30)
    cluster.update(NODES[:6])
    for key in KEYS[:200]:
        ranked = ring.ranked(key, NODES[:6])
        asked = [p.address for p in cluster.owners(key)]
        assert asked == ranked[:min(ranked.index(me), ASKED)]
    # The owner asks nobody: its fill goes to the tier or the origin.
    mine = next(k for k in KEYS if ring.owner(k, NODES[:6]) == me)
    assert cluster.owners(mine) == []


async def test_membership_changes_keep_the_peers_that_stay():
    cluster = Cluster(NODES[0], session=None, token=TOKEN, ssl_context=None, timeout=2,
                      read_timeout=30)
    cluster.update(NODES[:4])
    kept = cluster.peers[NODES[1]]
    cluster.update(NODES[1:3] + NODES[5:6])   # this node is always a member
    assert cluster.members == tuple(sorted({NODES[0], NODES[1], NODES[2], NODES[5]}))
    assert cluster.peers[NODES[1]] is kept
    assert NODES[3] not in cluster.peers


def load(text: str, **env) -> config.Config:
    return config.loads(text, env=env)


def test_cluster_config_reads_peers_token_and_env():
    cfg = load(f'[server]\nlisten = "10.0.0.1:5000"\n[cluster]\npeers = ["10.0.0.1:5000", '
               f'"10.0.0.2:5000"]\ntoken = "{TOKEN}"\n')
    assert cfg.cluster.enabled and cfg.cluster.peers == ("10.0.0.1:5000", "10.0.0.2:5000")
    assert cfg.cluster.refresh == 10 and cfg.cluster.peer_timeout == 2
    assert 'token = "***"' in config.render(cfg) and TOKEN not in config.render(cfg)
    cfg = load("", PULLCACHE_CLUSTER_PEERS_DNS="pullcache-peers.ns.svc:5002",
               PULLCACHE_CLUSTER_TOKEN=TOKEN, PULLCACHE_CLUSTER_ADVERTISE="10.1.2.3:5002",
               PULLCACHE_CLUSTER_REFRESH="30s")
    assert cfg.cluster.peers_dns == "pullcache-peers.ns.svc:5002"
    assert cfg.cluster.refresh == 30
    assert not load("").cluster.enabled


@pytest.mark.parametrize("text, error", [
    ('peers = ["a:1"]', "peers must prove who they are"),
    (f'peers = ["a:1"]\npeers_dns = "x:1"\ntoken = "{TOKEN}"', "not both"),
    ('peers = ["a"]', "host:port"),
    ('peers = "a:1"', "array"),
    (f'peers = ["a:1"]\ntoken = "short"', "at least 16"),
    ('peers = ["a:1"]\ntls_cert = "/c"\ntls_key = "/k"', "set together"),
    ('peers = ["a:1"]\ntls_cert = "/c"\ntls_key = "/k"\ntls_ca = "/ca"', "listener of its own"),
    (f'peers = ["a:1"]\ntoken = "{TOKEN}"\npeer_timeout = "0s"', "greater than zero"),
    (f'peers = ["a:1"]\ntoken = "{TOKEN}"\nlisten = "0.0.0.0:5002"', "wildcard"),
])
def test_cluster_config_errors_name_the_key(text, error):
    with pytest.raises(ConfigError, match=error) as caught:
        load("[cluster]\n" + text)
    assert "cluster" in str(caught.value)
    assert TOKEN not in str(caught.value)
