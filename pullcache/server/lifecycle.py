"""The daemon's life under a service manager: TLS, systemd notify, reload, drain.

- **TLS**: one ``ssl.SSLContext`` for the public site, TLS 1.2 and later; with
  ``tls_client_ca`` a client certificate is required (mTLS). SIGHUP builds a new context
  from the files as they are now and hands it to the listener: new handshakes use it, open
  connections keep theirs. A new context, not the old one loaded again: loading a CA into a
  context adds to what it trusts and never removes, and its verify mode would stay as it was.
- **systemd** ``Type=notify`` (sd_notify(3)): ``READY=1`` once the cache is reconciled and the
  sockets listen, ``RELOADING=1``/``READY=1`` around a reload, ``STOPPING=1`` on shutdown,
  and ``WATCHDOG=1`` from the event loop itself when ``$WATCHDOG_USEC`` asks for it, so a
  wedged loop is restarted. The protocol is one datagram on ``$NOTIFY_SOCKET`` (``@`` = an
  abstract socket); a dozen lines, so no library.
- **SIGHUP**: the config file is read again; TLS certificates and client CAs (mTLS turned on,
  rotated or off), ``[access]`` (and its htpasswd file), the admin token, the upstreams' pull
  policy and credentials are replaced; the ``reloaded`` line names what changed. Everything is read and
  checked before anything changes: a reload that fails is logged and changes nothing. Other
  keys need a restart.
- **SIGTERM/SIGINT**: drain. ``/readyz`` answers 503 at once, the public listening sockets
  close (new connections are refused), responses in flight get ``server.drain_timeout`` to
  finish; then the app's cleanup runs (fills still running are cancelled, the write-behind
  queue gets its own drain).
- **A lost accept loop** (``pullcache.tasks``: a vital loop ended): the same drain, then the
  process exits non-zero (``ServingLost``) so the service manager starts a new one; the cache
  lock is released with the rest of the cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Mapping, Protocol

import structlog
from aiohttp import web

from .. import config as configuration
from ..config import Config, ServerConfig
from ..errors import ConfigError
from ..gate.policy import Policy
from ..tasks import Loops
from .keys import ACCESS, ADMIN_TOKEN, CREDENTIALS, DRAINING, LOOPS, POLICY

log = structlog.get_logger("pullcache.lifecycle")


class ServingLost(Exception):
    """A vital loop (a listener's accept loop) ended: the process serves nothing any more."""


class TlsSite(Protocol):
    def use_tls(self, context: ssl.SSLContext | None) -> None: ...


# -- TLS ---------------------------------------------------------------------------------------

def tls_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The public site's context, or None for plain HTTP. Raises ConfigError naming the key
    whose file does not load."""
    if server.tls_cert is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:   # ssl.SSLError: e.g. the key is not the cert's
        raise ConfigError(f"server.tls_cert/tls_key: cannot load {server.tls_cert} and "
                          f"{server.tls_key}: {exc}") from None
    if server.tls_client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=server.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.tls_client_ca: cannot load {server.tls_client_ca}: "
                              f"{exc}") from None
    return ctx


def tls_files(server: ServerConfig) -> dict[str, str | None]:
    """What identifies the TLS setup, for the reload's log line: a SHA-256 of the
    certificate chain and of the client CAs (never of the key), or None where unset."""
    def digest(path: Path | None) -> str | None:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None
    return {"certificate": digest(server.tls_cert), "client_ca": digest(server.tls_client_ca)}


def tls_changes(before: dict[str, str | None], after: dict[str, str | None]) -> list[str]:
    """``reloaded``'s ``tls`` field: e.g. ``["certificate replaced", "client_ca added"]``."""
    changes = []
    for part in ("certificate", "client_ca"):
        old, new = before.get(part), after.get(part)
        if old != new:
            changes.append(f"{part} " + ("added" if old is None else
                                         "removed" if new is None else "replaced"))
    return changes


class PublicTls:
    """The public listener's TLS: the site whose context a reload replaces, and digests of
    the files that context was built from (what the next reload compares with)."""

    def __init__(self, site: TlsSite, server: ServerConfig) -> None:
        self.site = site
        self.files = tls_files(server)

    def replace(self, context: ssl.SSLContext, files: dict[str, str | None]) -> list[str]:
        """Hand ``context`` to the site; return what changed (``tls_changes``)."""
        changes = tls_changes(self.files, files)
        self.site.use_tls(context)
        self.files = files
        return changes


# -- systemd notify ----------------------------------------------------------------------------

class Notifier:
    """sd_notify(3) without libsystemd: datagrams to ``$NOTIFY_SOCKET``; a no-op without it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else None

    def send(self, *states: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(states).encode(), self._address)
        except OSError as exc:   # the manager went away: nothing to tell
            log.warning("notify_failed", error=str(exc))

    def watchdog(self, loops: Loops) -> asyncio.Task | None:
        """``WATCHDOG=1`` at half the manager's interval, from the loop (a wedged loop
        stops sending, and the manager restarts us); None when the manager asks for none."""
        if not self.watchdog_interval:
            return None
        return loops.every("watchdog", self.watchdog_interval,
                           lambda: self.send("WATCHDOG=1"))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


# -- reload ------------------------------------------------------------------------------------

def reload(app: web.Application, path: Path | None, current: Config,
           tls: PublicTls | None) -> Config:
    """Apply the config file's reloadable parts; return the config now in force. ``tls``:
    the public listener's (a new context replaces its own), or None without TLS."""
    try:
        cfg = configuration.load(path)
        hosts = [u.host for u in cfg.upstreams]
        if hosts != [u.host for u in current.upstreams]:
            raise ConfigError("upstream: upstreams were added, removed or reordered; "
                              "that needs a restart")
        if cfg.cluster != current.cluster:   # the members, their proof and listener
            raise ConfigError("cluster: changes to [cluster] need a restart")
        if (current.server.tls_cert is None) != (cfg.server.tls_cert is None):
            raise ConfigError("server.tls_cert: turning TLS on or off needs a restart")
        context = tls_context(cfg.server)   # the new files load (the cert matches the key)
        files = tls_files(cfg.server)
        verifier = app[ACCESS].prepare(cfg.access)
        policy = Policy.from_config(cfg.upstreams)
    except (ConfigError, OSError, ssl.SSLError) as exc:
        log.error("reload_failed", error=str(exc))
        return current
    changes = tls.replace(context, files) if tls is not None and context is not None else []
    app[ACCESS].configure(cfg.access, verifier)
    app[ADMIN_TOKEN].replace(cfg.server.admin_token)
    app[POLICY].replace(policy)
    for u in cfg.upstreams:
        if (credentials := app[CREDENTIALS].get(u.host)) is not None:
            credentials.replace(u.username, u.password)
    log.info("reloaded", path=str(path) if path else None, tls=changes,
             mtls=cfg.server.tls_client_ca is not None)
    return cfg


# -- the run -----------------------------------------------------------------------------------

async def run_until_stopped(app: web.Application, public: web.AppRunner, cfg: Config,
                            path: Path | None, tls: PublicTls | None,
                            notifier: Notifier | None = None) -> None:
    """Serve until SIGTERM/SIGINT, reloading on SIGHUP; then drain ``public`` (its sites
    stop listening, requests in flight finish). The caller's cleanup tears down the rest.
    Raises ``ServingLost`` (after the drain) when a vital loop ended."""
    notifier = notifier or Notifier()
    loop = asyncio.get_running_loop()
    loops: Loops = app[LOOPS]
    stop = asyncio.Event()
    hup = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    watchdog = notifier.watchdog(loops)
    notifier.send("READY=1", "STATUS=serving")
    log.info("ready")
    try:
        while not stop.is_set() and not loops.lost.is_set():
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(hup.wait()),
                     asyncio.ensure_future(loops.lost.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if hup.is_set() and not stop.is_set() and not loops.lost.is_set():
                hup.clear()
                now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                notifier.send("RELOADING=1", f"MONOTONIC_USEC={now}")
                cfg = reload(app, path, cfg, tls)
                notifier.send("READY=1")
        lost = loops.lost_reason if loops.lost.is_set() else None
        notifier.send("STOPPING=1", "STATUS=" + ("serving lost" if lost else "draining"))
        app[DRAINING].set()
        log.info("draining", timeout=cfg.server.drain_timeout)
        await drain(public, cfg.server.drain_timeout)
        log.info("stopping")
        if lost is not None:
            raise ServingLost(lost)
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def drain(runner: web.AppRunner, timeout: float) -> None:
    """Close the listening sockets, then wait (up to ``timeout``) for the requests in
    flight; aiohttp cancels what is left (a send waiting on a stalled client included: it
    waits in the loop, ``server/sendfile.py``). ``runner.cleanup()`` later finds nothing to
    wait for and only runs the app's cleanup."""
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    if server is None:
        return
    await asyncio.sleep(0)   # let requests accepted just now start (as aiohttp does)
    server.pre_shutdown()    # idle keep-alive connections close now
    await server.shutdown(timeout)


__all__ = ["Notifier", "PublicTls", "ServingLost", "drain", "reload", "run_until_stopped", "tls_context"]
