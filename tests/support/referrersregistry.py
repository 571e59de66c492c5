"""A small in-memory registry that HAS the referrers API (distribution-spec v1.1 end-12a/b),
on 127.0.0.1 in a background thread: the upstream Distribution 2.8 cannot be.

Read-only over HTTP; the test fills it from Python (``put``), then pulls through pullcache::

    with ReferrersRegistry() as up:
        up.put("app", image, tag="v1")          # manifest, its blobs, an optional tag
        up.put("app", signature)                # by digest; its ``subject`` makes it a referrer

Serves ``/v2/``, manifests and blobs (GET/HEAD), ``tags/list`` and
``/v2/<name>/referrers/<digest>[?artifactType=]``, computed from the stored manifests'
``subject`` fields, ``page_size`` entries a page with an RFC 8288 ``Link`` to the next.
``down = True`` answers 503 to everything; ``requests`` records ``(method, path_qs)``.
"""

from __future__ import annotations

import json
import re
import threading

from aiohttp import web

from tests.support._aiothread import ThreadedApp
from tests.support.images import OCI_INDEX, Image, Index, referrer_descriptor

_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?:(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)"
                   r"|(?P<tags>tags/list))$")


class ReferrersRegistry(ThreadedApp):
    thread_name = "referrers-registry"
    shutdown_timeout = 1.0

    def __init__(self, *, port: int = 0, page_size: int | None = None) -> None:
        super().__init__(port=port)
        self.page_size = page_size
        self.down = False
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        self._manifests: dict[str, dict[str, tuple[bytes, str]]] = {}   # repo → digest → body
        self._tags: dict[str, dict[str, str]] = {}                       # repo → tag → digest
        self._blobs: dict[str, bytes] = {}
        self._referrers: dict[str, dict[str, list]] = {}   # repo → subject → [(digest, desc)]

    # -- filling and counting (test thread) ----------------------------------------------
    def put(self, repo: str, obj: Image | Index, *, tag: str | None = None) -> None:
        """Store ``obj`` (and, for an index, its children) with every blob it names."""
        with self._lock:
            for child in obj.children if isinstance(obj, Index) else ():
                self._put_manifest(repo, child)
            self._put_manifest(repo, obj)
            if tag is not None:
                self._tags.setdefault(repo, {})[tag] = obj.digest

    def _put_manifest(self, repo: str, obj: Image | Index) -> None:
        for blob in obj.blobs() if isinstance(obj, Image) else ():
            self._blobs[blob.digest] = blob.data
        self._manifests.setdefault(repo, {})[obj.digest] = (obj.manifest, obj.media_type)
        subject = (json.loads(obj.manifest).get("subject") or {}).get("digest")
        if subject:
            listed = self._referrers.setdefault(repo, {}).setdefault(subject, [])
            if obj.digest not in [d["digest"] for d in listed]:
                listed.append(referrer_descriptor(obj))

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._requests)

    def count(self, substring: str = "") -> int:
        return sum(1 for _, path in self.requests if substring in path)

    # -- serving (server thread) ------------------------------------------------------------
    async def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._requests.append((request.method, request.path_qs))
        if self.down:
            return _error(503, "UNAVAILABLE", "test upstream is down")
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "read-only")
        if request.path in ("/v2", "/v2/"):
            return web.json_response({})
        m = _PATH.match(request.path)
        if m is None:
            return _error(404, "NOT_FOUND", "no such endpoint")
        repo = m["name"]
        with self._lock:
            if m["tags"]:
                return web.json_response({"name": repo,
                                          "tags": sorted(self._tags.get(repo, {}))})
            if m["kind"] == "blobs":
                data = self._blobs.get(m["ref"])
                if data is None:
                    return _error(404, "BLOB_UNKNOWN", m["ref"])
                return web.Response(body=data, headers={"Docker-Content-Digest": m["ref"],
                                                        "Content-Type": "application/octet-stream"})
            if m["kind"] == "manifests":
                digest = self._tags.get(repo, {}).get(m["ref"], m["ref"])
                found = self._manifests.get(repo, {}).get(digest)
                if found is None:
                    return _error(404, "MANIFEST_UNKNOWN", m["ref"])
                return web.Response(body=found[0], headers={"Docker-Content-Digest": digest,
                                                            "Content-Type": found[1]})
            listed = list(self._referrers.get(repo, {}).get(m["ref"], []))
        return self._referrers_page(request, listed)

    def _referrers_page(self, request: web.Request, listed: list[dict]) -> web.Response:
        headers = {"Content-Type": OCI_INDEX}
        wanted = request.query.get("artifactType")
        if wanted:
            listed = [d for d in listed if d.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        start = int(request.query.get("page", "0"))
        if self.page_size:
            end = start + self.page_size
            if end < len(listed):
                headers["Link"] = f'<{request.path}?page={end}>; rel="next"'
            listed = listed[start:end]
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}
        return web.Response(body=json.dumps(body).encode(), headers=headers)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status)


__all__ = ["ReferrersRegistry"]
