"""Discovery: the tag list (distribution-spec end-8); referrers (end-12) are ``referrers.py``."""

from __future__ import annotations

import json

from .. import errors
from ..cache.tags import TagStore
from ..gate.routing import Route
from ..singleflight import SingleFlight
from .answers import STALE_WARNING, TagList, Upstream, next_page

MAX_TAG_PAGES = 100


class Discovery:
    def __init__(self, tags: TagStore) -> None:
        self.tags = tags
        self._list_flights: SingleFlight[list[str]] = SingleFlight()

    async def tag_list(self, upstream: Upstream, route: Route) -> TagList:
        """Every tag of the repository, in lexical order (distribution-spec end-8a).

        Fetched whole (following upstream's own pagination) so that ``n``/``last`` work the
        same whatever the upstream supports; Distribution 2.8 ignores them. The last answer
        is kept, to be served stale when the upstream is down.
        """
        key = ("tags/list", route.upstream, route.repo)
        try:
            tags, _ = await self._list_flights.do(key, lambda: self._fetch_tags(upstream, route))
        except errors.UPSTREAM_FAILURES:
            saved = await self.tags.get_list(route.upstream, route.repo)
            if saved is None or not upstream.serve_stale:
                raise
            return TagList(saved, STALE_WARNING)
        await self.tags.put_list(route.upstream, route.repo, tags)
        return TagList(tags)

    async def _fetch_tags(self, upstream: Upstream, route: Route) -> list[str]:
        found: set[str] = set()
        query: dict[str, str] = {}
        for _ in range(MAX_TAG_PAGES):
            page = await upstream.client.passthrough(route.repo, "tags/list", query)
            try:
                found.update(t for t in (json.loads(page.body).get("tags") or [])
                             if isinstance(t, str))
            except (ValueError, AttributeError) as exc:
                raise errors.UpstreamError("malformed tags/list answer") from exc
            query = next_page(page)
            if not query:
                break
        return sorted(found)
