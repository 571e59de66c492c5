"""The CLI's side of the admin API: JSON over HTTP to the daemon's ``server.admin_listen``.

Blocking (``urllib``): the commands are short-lived and poll, and need no event loop.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Callable

from .. import config as configuration

POLL = 0.1      # seconds between polls of a running admin job


class DaemonUnreachable(Exception):
    """No daemon answers on the admin address (or none is configured)."""


class AdminError(Exception):
    """The daemon answered with an error (its OCI error envelope's message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AdminClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0,
                 token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # server.admin_token, which the daemon asks of its state-changing calls.
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def for_config(cls, cfg) -> "AdminClient":
        if not cfg.server.admin_listen:
            raise DaemonUnreachable('server.admin_listen is "": the daemon has no admin API')
        host, port = configuration.split_listen(cfg.server.admin_listen)
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"   # a wildcard listener answers on loopback too
        host = f"[{host}]" if ":" in host else host
        return cls(f"http://{host}:{port}", token=cfg.server.admin_token)

    def get(self, path: str) -> dict:
        return self._call(urllib.request.Request(self.base_url + path, headers=self._auth))

    def follow(self, job: dict, show: Callable[[dict], None]) -> dict:
        """Poll an admin job (``/admin/jobs/<id>``) until it is no longer running, showing
        each state on the way. This process is a CLI waiting on a daemon, not an event loop:
        a short sleep between polls blocks nothing."""
        path = f"/admin/jobs/{job['id']}"
        while True:
            job = self.get(path)
            show(job)
            if job["state"] != "running":
                return job
            time.sleep(POLL)

    def post(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body or {}).encode()
        return self._call(urllib.request.Request(
            self.base_url + path, data=data, method="POST",
            headers={"Content-Type": "application/json", **self._auth}))

    def _call(self, request: urllib.request.Request) -> dict:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AdminError(exc.code, _message(exc.read())) from None
        except (urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DaemonUnreachable(f"no daemon at {self.base_url} ({reason})") from None


def _message(body: bytes) -> str:
    try:
        errs = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('message')}" + (f": {e['detail']}" if e.get("detail") else "")
                         for e in errs) or body.decode(errors="replace")
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:500]
