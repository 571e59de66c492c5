"""Client authentication and network policy: who is asking, or 401/403/429.

Knows nothing of repositories (``gate/policy.py`` decides what an identity
may pull). For each request, in order:

1. The client's address must be in ``allow_networks``, else ``403 DENIED`` before any work.
2. Without an htpasswd file, everyone is ``anonymous``.
3. ``Authorization: Basic`` credentials (RFC 7617) that verify give the user. Clients in
   ``anonymous_networks`` without them, or with credentials that do not verify, are
   ``anonymous``: dockerd forwards its Docker Hub login to mirrors (moby#42022;
   docs/protocol.md §4.3) and skips a mirror that answers 401, so there those credentials
   are ignored, never logged and never forwarded.
4. Anyone else gets ``401 UNAUTHORIZED`` with ``WWW-Authenticate: Basic realm="pullcache"``
   (distribution-spec "Authentication").

bcrypt costs ~100 ms on purpose. A verified pair is remembered for ``credentials_ttl``,
keyed by an HMAC-SHA256 of the pair under a per-process random key (the password is never
kept), so the hot path is one HMAC and a dict lookup. A check runs once for concurrent
requests with the same pair, in bcrypt's own small thread pool: not the default executor,
which carries the file opens and index reads of every pull, so a flood of guesses queues
behind itself and never in front of a cache hit. At most ``MAX_CHECKS_QUEUED`` checks wait;
beyond that a new one is answered 429 at once.

Failed checks, and checks in flight, are counted per client (``gate/limiter.py``: an IPv4
address or an IPv6 /64); past ``max_failures`` within ``failure_window`` the client gets
``429 TOOMANYREQUESTS`` with ``Retry-After`` and no password is checked. A 429 rather than a
delayed 401: a delay would hold a connection and a task per attempt (cheap for an attacker,
costly for us), while a 429 costs nothing and tells a legitimate client clearly to back off.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import os
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import structlog

from ..config import AccessConfig
from ..errors import ConfigError, Denied, TooManyRequests, Unauthorized
from .limiter import FailureLimiter, client_key
from .policy import ANONYMOUS
from ..singleflight import SingleFlight

log = structlog.get_logger("pullcache.access")
CHALLENGE = {"WWW-Authenticate": 'Basic realm="pullcache"'}
MAX_REMEMBERED = 10_000   # verified pairs, and clients whose failures are counted, at most
MAX_ADDRESSES = 10_000    # client addresses whose network verdict is remembered
# bcrypt threads: one check saturates a core for ~100 ms; more threads than half the cores
# would take CPU from the event loop that serves the pulls.
BCRYPT_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
# And they yield the CPU to it: at nice 10 a thread gets about a tenth of a contended core
# (the kernel's CFS weights), so a flood of guesses slows logins, never the pulls.
BCRYPT_NICE = 10
MAX_CHECKS_QUEUED = 256   # checks waiting for a bcrypt thread; beyond, 429 at once


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    authenticated: bool = False   # True: verified credentials; False: anonymous


ANYONE = Identity(ANONYMOUS)


def read_htpasswd(path: Path) -> dict[str, bytes]:
    """``user:$2y$…`` lines → {user: bcrypt hash}. Raises ConfigError (naming the line,
    never its hash) for anything but bcrypt entries."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"access.htpasswd: cannot read {path}: {e}") from None
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, hashed = line.strip().partition(":")
        if not sep or not user or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            raise ConfigError(f"access.htpasswd: {path} line {number}: not a bcrypt entry "
                              "(make it with `htpasswd -B`)")
        # Apache writes $2y$; it is the same algorithm as $2b$, which every bcrypt accepts.
        users[user] = b"$2b$" + hashed[4:].encode()
    return users


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` → (user, password); None if absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep and user else None


class Verifier:
    """htpasswd users, checked with bcrypt; verdicts remembered by HMAC of the pair."""

    def __init__(self, users: dict[str, bytes], ttl: float,
                 checks: Executor | None = None) -> None:
        self._users = users
        self._ttl = ttl
        # AccessControl's pool (shared by the verifiers that SIGHUP swaps in), else one
        # thread of this verifier's own.
        self._checks = checks or ThreadPoolExecutor(1, thread_name_prefix="bcrypt")
        self.queued = 0   # checks waiting for, or running in, a bcrypt thread
        self._key = os.urandom(32)
        self._verdicts: dict[bytes, tuple[float, bool]] = {}   # hmac -> (expiry, ok)
        self._flights: SingleFlight[bool] = SingleFlight()
        # Unknown users cost a bcrypt too, so timing does not tell which names exist.
        cost = next((h[4:6] for h in users.values()), b"10")
        self._dummy = b"$2b$" + cost + b"$" + b"." * 53

    def remembered(self, user: str, password: str) -> bool | None:
        """The verdict for this pair if it is still remembered: the hot path, no bcrypt."""
        entry = self._verdicts.get(self.mac(user, password))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    async def verify(self, user: str, password: str) -> bool:
        mac = self.mac(user, password)
        ok, _ = await self._flights.do(mac, lambda: self._run_check(user, password))
        if len(self._verdicts) >= MAX_REMEMBERED:
            now = time.monotonic()
            self._verdicts = {k: v for k, v in self._verdicts.items() if v[0] >= now}
            if len(self._verdicts) >= MAX_REMEMBERED:
                self._verdicts.clear()
        self._verdicts[mac] = (time.monotonic() + self._ttl, ok)
        return ok

    async def _run_check(self, user: str, password: str) -> bool:
        self.queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._checks, self._check, user, password)
        finally:
            self.queued -= 1

    def mac(self, user: str, password: str) -> bytes:
        """The pair's key: an HMAC under this process's random key (never the password)."""
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    def _check(self, user: str, password: str) -> bool:
        hashed = self._users.get(user)
        try:
            ok = bcrypt.checkpw(password.encode(), hashed or self._dummy)
        except ValueError:   # the dummy hash is not a valid one: same cost, always False
            ok = False
        return ok and hashed is not None


class AccessControl:
    """The current ``[access]`` policy; ``configure`` swaps it whole (SIGHUP)."""

    def __init__(self, config: AccessConfig) -> None:
        # bcrypt's own threads, for the life of the daemon (``close``), across reloads.
        self._checks = ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt",
                                          initializer=_lower_priority)
        self.configure(config, self.prepare(config))

    def prepare(self, config: AccessConfig) -> Verifier | None:
        """What ``configure`` needs, read and checked first (raises ConfigError) so a bad
        reload changes nothing."""
        if config.htpasswd is None:
            return None
        return Verifier(read_htpasswd(config.htpasswd), config.credentials_ttl, self._checks)

    def close(self) -> None:
        """Checks still queued are dropped (their requests are being cancelled too)."""
        self._checks.shutdown(wait=False, cancel_futures=True)

    def configure(self, config: AccessConfig, verifier: Verifier | None) -> None:
        # One assignment: a request sees the old policy or the new one, never a mix. The
        # networks' verdict per client address is remembered with the policy it came from.
        self._state = (config, verifier, FailureLimiter(
            config.max_failures, config.failure_window, MAX_REMEMBERED), {})

    def known(self, address: str | None, authorization: str | None) -> Identity | None:
        """Who is asking, when that needs no password check (the hot path: no await, no
        thread); None when one must run (``identify``). Raises Denied/Unauthorized/429."""
        identity, _ = self._decide(address, authorization)
        return identity

    async def identify(self, address: str | None, authorization: str | None) -> Identity:
        """Who is asking; checks a password with bcrypt (in a thread) when it must."""
        identity, pair = self._decide(address, authorization)
        if identity is not None:
            return identity
        _cfg, verifier, limiter, _networks = self._state
        ip, _allowed, anonymous_ok = self._network(address)
        client, attempt = client_key(ip), verifier.mac(*pair)
        if verifier.queued >= MAX_CHECKS_QUEUED or not limiter.begin(client, attempt):
            return self._limited(limiter, client, anonymous_ok)
        ok: bool | None = None
        try:
            ok = await verifier.verify(*pair)
        finally:   # a cancelled check counts as no failure
            limiter.end(client, attempt, failed=ok is False)
        return self._verdict(ok, pair, ip, anonymous_ok)

    def _decide(self, address: str | None,
                authorization: str | None) -> tuple[Identity | None, tuple[str, str] | None]:
        _cfg, verifier, _limiter, _networks = self._state
        ip, allowed, anonymous_ok = self._network(address)
        if not allowed:
            raise Denied(message="this address may not use this registry")
        if verifier is None:
            return ANYONE, None
        pair = parse_basic(authorization)
        if pair is None:
            if anonymous_ok:
                return ANYONE, None
            raise Unauthorized(headers=CHALLENGE)
        ok = verifier.remembered(*pair)
        if ok is None:
            return None, pair     # a check is due, if the client's failures allow (identify)
        return self._verdict(ok, pair, ip, anonymous_ok), None

    @staticmethod
    def _limited(limiter: FailureLimiter, client: str, anonymous_ok: bool) -> Identity:
        """No password check for this client now: anonymous where that is allowed, else 429."""
        if anonymous_ok:
            return ANYONE
        wait = limiter.retry_after(client) or 1.0
        raise TooManyRequests(message="too many failed logins from this address",
                              headers={"Retry-After": str(math.ceil(wait))})

    def _network(self, address: str | None) -> tuple[object, bool, bool]:
        _cfg, _verifier, _limiter, networks = self._state
        gate = networks.get(address)
        if gate is None:   # parsing and matching an address costs more than the rest
            gate = _gate(self._state[0], address)
            if len(networks) >= MAX_ADDRESSES:
                networks.clear()
            networks[address] = gate
        return gate

    @staticmethod
    def _verdict(ok: bool, pair: tuple[str, str], ip: object, anonymous_ok: bool) -> Identity:
        if ok:
            return Identity(pair[0], authenticated=True)
        if anonymous_ok:
            return ANYONE
        log.warning("login_failed", client=str(ip))   # no user name: it may be a secret
        raise Unauthorized(message="invalid username or password", headers=CHALLENGE)


def _lower_priority() -> None:
    """In a bcrypt thread: this thread's nice value (Linux: per thread, by its id)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BCRYPT_NICE)
    except (OSError, AttributeError) as exc:   # not Linux, or not allowed: full priority
        log.warning("bcrypt_priority_kept", error=str(exc))


def _gate(cfg: AccessConfig, address: str | None) -> tuple[object, bool, bool]:
    """(the address, whether it may connect, whether it may pull anonymously)."""
    ip = _address(address)
    if ip is None:
        return None, False, False
    return (ip, any(ip in net for net in cfg.allow_networks),
            any(ip in net for net in cfg.anonymous_networks))


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text or "")
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped   # a dual-stack socket's view of an IPv4 client
    return ip


__all__ = ["ANYONE", "AccessControl", "Identity",
           "parse_basic", "read_htpasswd"]
