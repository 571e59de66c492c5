"""``[cluster] peers_dns``: members are the A/AAAA records of a name, resolved again by a
supervised loop (pullcache/cluster/members.py, pullcache/tasks.py). A real DNS server
(dnslib) on 127.0.0.1 answers; the test changes its records as a headless Service's
endpoints change. The records' addresses are documentation ones (RFC 5737, RFC 3849): they
are names in the ring here, and nothing connects to them.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading

import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

from pullcache.cluster import Cluster, DnsMembers, ring
from pullcache.tasks import Loops
from tests.support.ports import eventually, free_port

NAME = "pullcache-peers.cluster.test"
PORT = 5002
KEYS = [f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(2000)]


class Records(BaseResolver):
    """The zone: NAME's addresses, changed by the test; ``failing`` answers SERVFAIL."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.failing = False
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        with self.lock:
            if self.failing:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            qname, qtype = request.q.qname, QTYPE[request.q.qtype]
            if str(qname).rstrip(".") == NAME:
                for address in self.addresses:
                    if qtype == "A" and ":" not in address:
                        reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=1))
                    if qtype == "AAAA" and ":" in address:
                        reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(address), ttl=1))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def dns():
    records = Records()
    server = DNSServer(records, address="127.0.0.1", port=free_port())
    server.start_thread()
    yield records, server.server.server_address[1]
    server.stop()


def resolver(port: int):
    """Ask the test's DNS server, as the system resolver would ask the cluster's."""
    def ask(name: str) -> list[str]:
        found = []
        for qtype in ("A", "AAAA"):
            reply = DNSRecord.parse(DNSRecord.question(name, qtype).send(
                "127.0.0.1", port, timeout=2))
            if reply.header.rcode != RCODE.NOERROR:
                raise OSError(f"{name}: {RCODE[reply.header.rcode]}")
            found += [str(rr.rdata) for rr in reply.rr if QTYPE[rr.rtype] == qtype]
        return found

    async def resolve(name: str) -> list[str]:
        return await asyncio.to_thread(ask, name)
    return resolve


def owners(cluster: Cluster) -> dict[str, str]:
    return {key: ring.owner(key, cluster.members) for key in KEYS}


async def test_members_follow_dns_and_only_moved_keys_change_owner(dns):
    records, port = dns
    me = "192.0.2.1:5002"
    records.addresses = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::4"]
    cluster = Cluster(me, session=None, token="t" * 32, ssl_context=None, timeout=2,
                      read_timeout=30)
    cluster.dns = DnsMembers(NAME, PORT, resolve=resolver(port))
    loops = Loops()
    task = loops.every("cluster_peers", 0.05, cluster.refresh)
    try:
        await eventually(lambda: len(cluster.members) == 4, 10, "four members")
        assert "[2001:db8::4]:5002" in cluster.members
        before = owners(cluster)

        records.addresses = ["192.0.2.1", "192.0.2.2", "2001:db8::4"]     # .3 is gone
        await eventually(lambda: len(cluster.members) == 3, 10, "three members")
        after = owners(cluster)
        moved = {k for k in KEYS if before[k] != after[k]}
        assert moved == {k for k in KEYS if before[k] == "192.0.2.3:5002"}
        assert 0.2 * len(KEYS) <= len(moved) <= 0.3 * len(KEYS)

        records.addresses += ["192.0.2.5"]                                # .5 joins
        await eventually(lambda: "192.0.2.5:5002" in cluster.members, 10, ".5 a member")
        joined = owners(cluster)
        moved = {k for k in KEYS if after[k] != joined[k]}
        assert moved == {k for k in KEYS if joined[k] == "192.0.2.5:5002"}
        assert 0.2 * len(KEYS) <= len(moved) <= 0.3 * len(KEYS)

        # DNS failing keeps the last members: a hiccup must not make every node an owner.
        records.failing = True
        await eventually(lambda: cluster.dns.error is not None, 10, "the lookup failing")
        assert owners(cluster) == joined
        assert cluster.status()["dns"]["error"]
        records.failing = False
        await eventually(lambda: cluster.dns.error is None, 10, "the lookup back")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
