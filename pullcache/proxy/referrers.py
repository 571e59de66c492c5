"""Referrers (distribution-spec v1.1.1 end-12a/b), answered by pullcache for every upstream.

upstream has the API   → its list, every page followed, kept ``referrers_ttl``; when the
                         upstream is down or rate-limiting, the kept list, stale, with
                         ``Warning: 299``.
upstream lacks it      → the spec's own fallback ("Unavailable Referrers API"): the tag
(404 / 405 /             ``<alg>-<ref>`` of the "Referrers Tag Schema", resolved through the
 UNSUPPORTED)            normal tag path, so it is cached, revalidated and served stale like
                         any tag. An image index there lists the referrers; anything else,
                         or no such tag, means there are none.

Whichever way, the caller gets descriptors and turns them into a 200 image index, filtered
by ``artifactType`` here (the upstream is always asked for the whole list, so one kept list
serves every filter). The referrer manifests themselves are pulled by digest like any other.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import structlog

from .. import errors
from ..cache.tags import TagStore
from ..metrics import Metrics
from ..oci import DEFAULT_ACCEPT, OCI_INDEX, Digest, referrer_descriptors, referrers_tag
from ..gate.routing import Route
from ..singleflight import SingleFlight
from .answers import STALE_WARNING, Upstream, next_page
from .manifests import Manifests

log = structlog.get_logger("pullcache.proxy")
MAX_PAGES = 50              # of an upstream's paginated list (each page ≤ 4 MiB)
MAX_REMEMBERED = 10_000     # (upstream, repository) pairs known to lack the API


@dataclass(frozen=True, slots=True)
class ReferrersAnswer:
    descriptors: list[dict]
    cache: str                 # api:hit | api:miss | api:joined | api:stale | tag:<manifest cache>
    warning: str | None = None


class Referrers:
    def __init__(self, manifests: Manifests, tags: TagStore, metrics: Metrics) -> None:
        self.manifests = manifests
        self.tags = tags
        self.metrics = metrics
        self._flights: SingleFlight[list[dict]] = SingleFlight()
        # Where the API answered "not here", and when (monotonic): asked again after
        # referrers_ttl, so an upstream that gains the API is noticed.
        self._without_api: OrderedDict[tuple[str, str], float] = OrderedDict()

    async def get(self, upstream: Upstream, route: Route, subject: Digest) -> ReferrersAnswer:
        answer = await self._answer(upstream, route, subject)
        self.metrics.requests.inc("referrers", answer.cache)
        return answer

    async def _answer(self, upstream: Upstream, route: Route,
                      subject: Digest) -> ReferrersAnswer:
        max_age = upstream.referrers_max_age
        where = (route.upstream, route.repo)
        learned = self._without_api.get(where)
        if learned is not None and time.monotonic() - learned < max_age:
            return await self._from_tag(upstream, route, subject)
        record = await self.tags.get_referrers(route.upstream, route.repo, str(subject))
        if record is not None and time.time() - record["checked_at"] < max_age:
            return ReferrersAnswer(record["manifests"], "api:hit")
        key = ("referrers", route.upstream, route.repo, str(subject))
        try:
            found, joined = await self._flights.do(
                key, lambda: self._fetch(upstream, route, subject))
        except errors.Unsupported:
            self._remember_without_api(where)
            return await self._from_tag(upstream, route, subject)
        except errors.UPSTREAM_FAILURES as exc:
            if record is None:
                # Never asked while it was up: a tag-schema index we once read may be kept.
                return await self._from_tag(upstream, route, subject)
            if not upstream.serve_stale:
                raise
            log.warning("served_stale", upstream=route.upstream, repo=route.repo,
                        referrers=str(subject), error=str(exc),
                        age=round(time.time() - record["checked_at"], 1))
            return ReferrersAnswer(record["manifests"], "api:stale", STALE_WARNING)
        self._without_api.pop(where, None)
        return ReferrersAnswer(found, "api:joined" if joined else "api:miss")

    async def _fetch(self, upstream: Upstream, route: Route, subject: Digest) -> list[dict]:
        """The whole list, following the upstream's ``Link`` pages (spec end-12a), kept."""
        found: dict[str, dict] = {}
        query: dict[str, str] = {}
        for _ in range(MAX_PAGES):
            page = await upstream.client.referrers(route.repo, subject, query)
            for desc in referrer_descriptors(page.body):
                found.setdefault(desc["digest"], desc)
            query = next_page(page)
            if not query:
                break
        else:
            log.warning("referrers_truncated", upstream=route.upstream, repo=route.repo,
                        subject=str(subject), pages=MAX_PAGES)
        manifests = list(found.values())
        await self.tags.put_referrers(route.upstream, route.repo, str(subject),
                                      {"manifests": manifests, "checked_at": time.time()})
        return manifests

    async def _from_tag(self, upstream: Upstream, route: Route,
                        subject: Digest) -> ReferrersAnswer:
        """The "Referrers Tag Schema" fallback, through ``Manifests`` like any tag."""
        tag = referrers_tag(subject)
        try:
            answer = await self.manifests.get(upstream, route, tag, DEFAULT_ACCEPT)
        except (errors.ManifestUnknown, errors.NameUnknown):
            return ReferrersAnswer([], "tag:none")
        # Spec: "If … the tag schema does not return a valid image index, the client SHOULD
        # assume there are no referrers to the manifest."
        found = referrer_descriptors(answer.body) if answer.media_type == OCI_INDEX else []
        return ReferrersAnswer(found, f"tag:{answer.cache}", answer.warning)

    def _remember_without_api(self, where: tuple[str, str]) -> None:
        self._without_api[where] = time.monotonic()
        self._without_api.move_to_end(where)
        while len(self._without_api) > MAX_REMEMBERED:
            self._without_api.popitem(last=False)
