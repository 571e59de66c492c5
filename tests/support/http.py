"""A tiny synchronous HTTP client for tests: never raises on 4xx/5xx."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: dict[str, str]   # lower-cased names; repeated headers joined with ", "
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def error_codes(self) -> list[str]:
        return [e["code"] for e in self.json()["errors"]]

    @property
    def sha256(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization: Basic`` value (RFC 7617), built by the tests, not by pullcache."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(base: str, path: str, *, method: str = "GET", headers=None,
            timeout: float = 60.0, context: ssl.SSLContext | None = None,
            body: bytes | None = None) -> Reply:
    """``headers`` may be a dict or a list of (name, value) pairs (repeated Accept lines);
    an ``https`` base is spoken with ``context`` (e.g. ``CA.client_context()``); ``body`` is
    sent as is (the caller sets its Content-Length)."""
    parts = urlsplit(base)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                           context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for name, value in items:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        body = resp.read()
        merged: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return Reply(resp.status, merged, body)
    finally:
        conn.close()
