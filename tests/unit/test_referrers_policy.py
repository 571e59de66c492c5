"""``proxy.referrers.Referrers``: which source answers, with fakes for the upstream client and
``Manifests`` and a real ``TagStore`` (diskcache in a temp dir)."""

from __future__ import annotations

import json

import pytest

from pullcache import errors
from pullcache.cache.tags import TagStore
from pullcache.metrics import Metrics
from pullcache.oci import OCI_INDEX, OCI_MANIFEST, Digest
from pullcache.proxy.answers import STALE_WARNING, ManifestAnswer, Upstream
from pullcache.proxy.referrers import Referrers
from pullcache.gate.routing import Route
from pullcache.upstream.client import Relayed

SUBJECT = Digest("sha256", "a" * 64)
ROUTE = Route("up.example", "app")


def desc(n: int, kind: str = "application/x.sig") -> dict:
    return {"mediaType": OCI_MANIFEST, "digest": f"sha256:{n:064d}", "size": n,
            "artifactType": kind}


def page(descs: list[dict], link: str | None = None) -> Relayed:
    """A page as the client hands it over: aiohttp has parsed ``Link`` into ``next``."""
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs})
    target = link[link.index("<") + 1:link.index(">")] if link else None
    return Relayed(200, body.encode(), {"Link": link} if link else {},
                       f"http://up.example{target}" if target else None)


class FakeClient:
    name = "up.example"

    def __init__(self, *answers) -> None:
        self.answers = list(answers)    # Relayed or an exception, one per call
        self.calls: list[dict] = []

    async def referrers(self, repo, subject, query):
        self.calls.append(dict(query))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeManifests:
    def __init__(self, answer) -> None:
        self.answer = answer
        self.tags: list[str] = []

    async def get(self, upstream, route, reference, accept):
        self.tags.append(reference)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
async def tags(tmp_path):
    store = TagStore(tmp_path)
    await store.open()
    yield store
    await store.close()


def upstream(client, ttl: float = 300, stale: bool = True) -> Upstream:
    return Upstream(client, tag_ttl=60, serve_stale=stale, referrers_ttl=ttl)


def index_answer(descs, cache="hit", warning=None) -> ManifestAnswer:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs}).encode()
    return ManifestAnswer(body, OCI_INDEX, Digest.of(body), cache, warning)


async def test_api_list_is_followed_across_pages_and_kept(tags):
    client = FakeClient(page([desc(1), desc(2)], '</v2/app/referrers/x?last=2>; rel="next"'),
                        page([desc(2), desc(3)]))
    refs = Referrers(FakeManifests(AssertionError("no fallback")), tags, Metrics())
    up = upstream(client)
    first = await refs.get(up, ROUTE, SUBJECT)
    assert [d["size"] for d in first.descriptors] == [1, 2, 3] and first.cache == "api:miss"
    assert client.calls == [{}, {"last": "2"}]
    again = await refs.get(up, ROUTE, SUBJECT)
    assert again.descriptors == first.descriptors and again.cache == "api:hit"
    assert len(client.calls) == 2


async def test_api_down_serves_the_kept_list_stale(tags):
    client = FakeClient(page([desc(1)]))
    refs = Referrers(FakeManifests(AssertionError("no fallback")), tags, Metrics())
    await refs.get(upstream(client, ttl=0), ROUTE, SUBJECT)
    client.answers = [errors.UpstreamUnavailable("down")]
    stale = await refs.get(upstream(client, ttl=0), ROUTE, SUBJECT)
    assert stale.cache == "api:stale" and stale.warning == STALE_WARNING
    assert stale.descriptors == [desc(1)]
    with pytest.raises(errors.UpstreamUnavailable):
        await refs.get(upstream(client, ttl=0, stale=False), ROUTE, SUBJECT)


async def test_api_down_with_nothing_kept_tries_the_tag_schema(tags):
    client = FakeClient(errors.UpstreamTimeout("slow"))
    manifests = FakeManifests(index_answer([desc(7)], "stale", STALE_WARNING))
    answer = await Referrers(manifests, tags, Metrics()).get(upstream(client), ROUTE, SUBJECT)
    assert answer.descriptors == [desc(7)] and answer.cache == "tag:stale"
    assert answer.warning == STALE_WARNING
    assert manifests.tags == [f"sha256-{'a' * 64}"]


async def test_without_api_the_tag_schema_answers_and_the_api_rests_for_the_ttl(tags):
    client = FakeClient(errors.Unsupported("404"))
    manifests = FakeManifests(index_answer([desc(1), desc(2, "application/spdx+json")]))
    refs = Referrers(manifests, tags, Metrics())
    for _ in range(3):
        answer = await refs.get(upstream(client), ROUTE, SUBJECT)
        assert len(answer.descriptors) == 2 and answer.cache == "tag:hit"
    assert len(client.calls) == 1 and len(manifests.tags) == 3


async def test_an_upstream_that_gains_the_api_is_noticed_after_the_ttl(tags):
    client = FakeClient(errors.Unsupported("405"), page([desc(9)]))
    refs = Referrers(FakeManifests(errors.ManifestUnknown("no tag")), tags, Metrics())
    first = await refs.get(upstream(client, ttl=0), ROUTE, SUBJECT)
    assert first.descriptors == [] and first.cache == "tag:none"
    later = await refs.get(upstream(client, ttl=0), ROUTE, SUBJECT)
    assert later.descriptors == [desc(9)] and later.cache == "api:miss"


async def test_a_tag_schema_tag_that_is_no_index_means_none(tags):
    body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
    manifests = FakeManifests(ManifestAnswer(body, OCI_MANIFEST, Digest.of(body), "miss"))
    answer = await Referrers(manifests, tags, Metrics()).get(
        upstream(FakeClient(errors.Unsupported("x"))), ROUTE, SUBJECT)
    assert answer.descriptors == [] and answer.cache == "tag:miss"
