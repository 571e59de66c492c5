"""One peer, as this node asks it: its address, its breaker, and the two questions.

A peer is asked on the dedicated ``/_cluster/`` routes (``server/peers.py``):

- ``GET /_cluster/blobs/<digest>?upstream=U&repo=R``: the blob's bytes (a fill's source);
- ``GET /_cluster/manifests/<digest>?upstream=U&repo=R``: the manifest's bytes.

The owner fetches for (U, R) with U's credentials, under its own link rule, so an answer
is content linked to (U, R). Every request carries the proof (the token, or this node's
client certificate under mTLS). The breaker opens after one failure: a peer that is down,
slow to answer, or that served wrong bytes is skipped for ``cooldown`` seconds, and the
next in rendezvous order (else the origin) is asked instead.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from .. import errors
from ..oci import MAX_MANIFEST_SIZE, Digest
from ..upstream.breaker import Breaker
from ..upstream.client import Manifest
from ..upstream.failures import error_for, read_limited
from ..upstream.headers import range_start
from ..upstream.receiver import BlobStream

PEER_HEADER = "Pullcache-Peer-Token"
COOLDOWN = 10.0        # seconds a failed peer is skipped
MAX_ERROR_BODY = 16 * 1024
# Misses are the owner's honest answers; anything else says the peer is unfit to ask.
MISSES = (errors.BlobUnknown, errors.ManifestUnknown, errors.NameUnknown)


class PeerSkipped(errors.UpstreamUnavailable):
    """The peer was not asked: its breaker is open (it failed us lately)."""


class Peer:
    def __init__(self, address: str, session: aiohttp.ClientSession, *, token: str | None,
                 ssl_context: ssl.SSLContext | None, timeout: float, read_timeout: float,
                 on_bytes=lambda n: None) -> None:
        self.address = address
        self._session = session
        self._base = f"{'https' if ssl_context else 'http'}://{address}/_cluster"
        self._headers = {PEER_HEADER: token} if token else {}
        self._ssl = ssl_context if ssl_context is not None else False
        self._timeout = timeout
        self._read_timeout = read_timeout
        self._on_bytes = on_bytes
        self.breaker = Breaker(1, COOLDOWN, name=f"peer {address}")
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"Peer({self.address})"

    async def open_blob(self, upstream: str, repo: str, digest: Digest, *,
                        start: int = 0) -> BlobStream:
        headers = {"Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        resp = await self._get("blobs", upstream, repo, digest, headers, errors.BlobUnknown)
        if start and (resp.status != 206 or range_start(resp) != start):
            resp.release()   # the whole blob: not joinable where a fill was cut
            raise errors.UpstreamError(f"peer {self.address}: no range from byte {start} "
                                       f"(answered {resp.status})")
        return BlobStream(resp, self._on_bytes, self._read_timeout)

    async def get_manifest(self, upstream: str, repo: str, digest: Digest) -> Manifest:
        resp = await self._get("manifests", upstream, repo, digest, {},
                               errors.ManifestUnknown)
        try:
            try:
                body = await asyncio.wait_for(read_limited(resp, MAX_MANIFEST_SIZE),
                                              self._read_timeout)
            except (errors.PullcacheError, TimeoutError) as exc:
                self.failed(exc)
                raise errors.UpstreamError(f"{self.address}: manifest body: {exc}") from exc
        finally:
            resp.release()
        return Manifest(body, resp.headers.get("Content-Type"),
                        resp.headers.get("Docker-Content-Digest"))

    async def _get(self, kind: str, upstream: str, repo: str, digest: Digest,
                   headers: dict[str, str], not_found) -> aiohttp.ClientResponse:
        try:
            ticket = self.breaker.check()
        except errors.UpstreamUnavailable as exc:   # open: skipped at once
            raise PeerSkipped(str(exc)) from None
        url = f"{self._base}/{kind}/{digest}"
        try:
            async with asyncio.timeout(self._timeout):   # connect and headers
                resp = await self._session.get(
                    url, params={"upstream": upstream, "repo": repo},
                    headers={**self._headers, **headers}, ssl=self._ssl,
                    allow_redirects=False, timeout=aiohttp.ClientTimeout(
                        total=None, sock_read=self._read_timeout))
        except asyncio.CancelledError:
            self.breaker.release(ticket)
            raise
        except TimeoutError as exc:
            self.failed(exc)
            raise errors.UpstreamTimeout(f"{self.address}: no answer within "
                                         f"{self._timeout:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            self.failed(exc)
            raise errors.UpstreamUnavailable(f"{self.address}: {exc}") from exc
        if resp.status in (200, 206):
            self.breaker.success()
            self.last_error = None
            return resp
        try:
            body = await read_limited(resp, MAX_ERROR_BODY, truncate=True)
        except errors.PullcacheError:
            body = b""
        finally:
            resp.release()
        exc = error_for(resp.status, resp.headers, body, not_found, f"peer {self.address}")
        if isinstance(exc, MISSES):
            self.breaker.success()
        else:
            self.failed(exc)
        raise exc

    def failed(self, exc: BaseException) -> None:
        """This peer failed us (no answer, an error, a cut body, wrong bytes): skip it."""
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        self.breaker.trip()

    def status(self) -> dict:
        return {"address": self.address,
                "breaker": self.breaker.state.name.lower().replace("_", "-"),
                "last_error": self.last_error}


def source_failed(peer: Peer):
    """A fill's ``on_failure`` for this peer: a miss is an answer; anything else (a cut
    body, wrong bytes) makes the peer unfit to ask for a while."""
    def failed(exc: errors.PullcacheError) -> None:
        if not isinstance(exc, (*MISSES, PeerSkipped)):
            peer.failed(exc)
    return failed
