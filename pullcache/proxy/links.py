"""Who may be served what: the rule every cache hit obeys (docs/architecture.md, "What
pullcache promises": content answers only where it is linked).

Cached content is shared: one file per digest, whichever upstream and repository it was
fetched for. Serving it is not: a hit for (upstream U, repository R) requires that the
content be **linked** to (U, R). Policy (``gate.policy``) decides who may ask for R on U;
a link says that U has the content in R. Without the link, a digest learnt anywhere would
open any other repository's content, or another upstream's, to whoever may pull *some*
repository.

- A link is recorded by what fetched the content for (U, R): a blob fill from U's R (or
  from the backing tier's copy of U's R), a manifest fetched by digest or by tag from R, a
  tag of R resolved by U to a digest already cached.
- An unlinked hit (content cached through another repository or upstream) is confirmed
  once with a ``HEAD`` to U for R, with U's credentials (distribution-spec end-2 for blobs,
  end-3 for manifests), and then linked: no byte is fetched again. U's 404 is the client's
  404 (``BLOB_UNKNOWN``, ``MANIFEST_UNKNOWN``), its 401/403 the client's. When U cannot be
  asked (down, breaker open, timeout), the hit is refused with U's error, exactly as an
  uncached pull would be: never the bytes.
- A fill in flight is content not yet cached: a request joining another (U, R)'s fill is
  confirmed first, the same way (``cache.fill.Fill.add_link``).
- A tag's record belongs to its (U, R): the manifest it names is linked by definition,
  fresh, stale-while-revalidate or served stale when U is down. A manifest by digest is
  not: from memory (the hot path) it is served only when memory knows the link, else the
  index is asked, else U.

Links live in the index (``cache/links.py``) and go with their file: eviction, ``cache rm``,
``cache verify --repair``; restarts keep them. A linked hit costs a memory lookup.
"""

from __future__ import annotations

import structlog

from .. import errors
from ..cache.store import BlobStore
from ..gate.routing import Route
from ..metrics import Metrics
from ..oci import DEFAULT_ACCEPT, Digest
from ..singleflight import SingleFlight
from .answers import Upstream

log = structlog.get_logger("pullcache.proxy")


class Links:
    """Checks and records links (the rule above) for the proxy's nouns."""

    def __init__(self, store: BlobStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self._asking: SingleFlight[None] = SingleFlight()   # one HEAD per (U, R, digest)

    def known(self, route: Route, kind: str, digest: Digest) -> bool:
        """Linked, as far as memory knows: the hot path (no thread, no I/O)."""
        return self.store.known_link(kind, digest, (route.upstream, route.repo))

    async def confirm(self, upstream: Upstream, route: Route, kind: str,
                      digest: Digest) -> None:
        """Return once cached ``kind:digest`` may answer ``route``: linked already, or
        confirmed now by U and linked. Raises U's answer (or its absence) otherwise."""
        where = (route.upstream, route.repo)
        if self.store.known_link(kind, digest, where):
            return
        try:
            if await self.store.linked(kind, digest, where):
                return
        except errors.StorageError as exc:   # the index cannot say: U can
            log.warning("link_unread", kind=kind, digest=str(digest), error=str(exc))

        async def head_and_link() -> None:
            await self._head(upstream, route, kind, digest)
            await self.record(route, kind, digest)
        # One flight per (U, R, digest): a herd from R costs one HEAD and one link.
        key = ("confirm", kind, route.upstream, route.repo, str(digest))
        await self._asking.do(key, head_and_link)

    async def ask(self, upstream: Upstream, route: Route, kind: str, digest: Digest) -> None:
        """HEAD ``digest`` in R on U (one flight per (U, R, digest)), recording nothing:
        return if U has it there, else raise what U answered. For content not yet cached
        (a fill in flight: ``Fill.add_link`` records the link with its commit)."""
        key = ("ask", kind, route.upstream, route.repo, str(digest))
        await self._asking.do(key, lambda: self._head(upstream, route, kind, digest))

    async def _head(self, upstream: Upstream, route: Route, kind: str, digest: Digest) -> None:
        fields = dict(upstream=route.upstream, repo=route.repo, kind=kind, digest=str(digest))
        try:
            if kind == "blob":
                await upstream.client.head_blob(route.repo, digest)
            else:
                await upstream.client.head_manifest(route.repo, str(digest), DEFAULT_ACCEPT)
        except errors.PullcacheError as exc:
            unavailable = isinstance(exc, errors.UPSTREAM_FAILURES)
            self.metrics.link_checks.labels(kind, "unavailable" if unavailable
                                            else "refused").inc()
            log.info("link_refused", **fields, status=exc.status, error=str(exc))
            raise
        self.metrics.link_checks.labels(kind, "confirmed").inc()
        log.info("link_confirmed", **fields)

    async def record(self, route: Route, kind: str, digest: Digest) -> None:
        """Link cached ``kind:digest`` to ``route`` (confirmed by the caller's exchange with
        U). A link the index refuses costs a later HEAD, not the answer."""
        try:
            await self.store.link(kind, digest, (route.upstream, route.repo))
        except errors.StorageError as exc:
            log.warning("link_not_saved", kind=kind, digest=str(digest), error=str(exc))
