"""An in-memory registry with Docker Hub's pull quota: every manifest GET spends one pull,
every manifest answer carries ``ratelimit-limit: N;w=WINDOW`` and ``ratelimit-remaining``
(plus ``ratelimit-reset`` when ``reset`` is set), and once the pulls are spent manifest GETs
are answered ``429 TOOMANYREQUESTS`` as Docker Hub answers them.

    with QuotaRegistry(limit=20, remaining=2, window=3600) as up:
        up.put("lib/app", image, tag="v1")
"""

from __future__ import annotations

from aiohttp import web

from tests.support.referrersregistry import ReferrersRegistry, _error


class QuotaRegistry(ReferrersRegistry):
    thread_name = "quota-registry"

    def __init__(self, *, limit: int, remaining: int, window: int = 21600,
                 reset: int | None = None) -> None:
        super().__init__()
        self.limit, self.remaining, self.window, self.reset = limit, remaining, window, reset

    def manifest_requests(self) -> int:
        return sum(1 for _, path in self.requests if "/manifests/" in path)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if "/manifests/" not in request.path:
            return await super()._handle(request)
        with self._lock:
            spent = request.method == "GET" and self.remaining <= 0
            if request.method == "GET" and not spent:
                self.remaining -= 1
            headers = {"ratelimit-limit": f"{self.limit};w={self.window}",
                       "ratelimit-remaining": f"{max(self.remaining, 0)};w={self.window}"}
            if self.reset is not None:
                headers["ratelimit-reset"] = str(self.reset)
        if spent:
            with self._lock:
                self._requests.append((request.method, request.path_qs))
            answer = _error(429, "TOOMANYREQUESTS", "You have reached your pull rate limit.")
        else:
            answer = await super()._handle(request)
        answer.headers.update(headers)
        return answer
