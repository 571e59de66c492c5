"""``pullcache serve``: the public site and the admin site; SIGHUP reloads, SIGINT/SIGTERM
drain and stop (``server.lifecycle``)."""

from __future__ import annotations

import errno
import ipaddress
import sys
from pathlib import Path

import structlog
import uvloop
from aiohttp import web

from .. import config as configuration
from ..cache.lock import CacheLocked
from ..errors import ConfigError
from ..server import lifecycle
from ..server.admin import build_admin_app
from ..server.listener import Listener, connection_cap, raise_open_files_limit
from ..server.app import build_app
from ..server.peers import build_peer_app
from ..cluster.tls import server_context
from ..server.keys import LOOPS
from ..server.middleware import AccessLogger

log = structlog.get_logger("pullcache")
# The operator's listener serves a handful of people and scripts.
ADMIN_CONNECTIONS = 256
START_FAILED = 3   # exit status: the cache dir (or its lock) cannot be used


def serve(cfg, path: Path | None = None) -> int:
    try:
        uvloop.run(_run_sites(cfg, path))
    except ConfigError as exc:   # a TLS file that does not load
        log.error("config_failed", error=str(exc))
        return 2
    except CacheLocked as exc:   # another daemon, or an offline `pullcache cache …`
        log.error("cache_locked", error=str(exc))
        print(f"pullcache: refusing to start: {exc}", file=sys.stderr)
        return 1
    except lifecycle.ServingLost as exc:   # the service manager starts a fresh process
        log.error("serving_lost", error=str(exc))
        return 1
    except ListenFailed as exc:   # the listen address is taken or not ours
        log.error("listen_failed", error=str(exc))
        print(f"pullcache: cannot listen on {exc.strerror}", file=sys.stderr)
        return 1
    except StartFailed as exc:   # the cache dir, its lock or its index: unusable
        log.error("start_failed", error=str(exc), errno=exc.errno)
        print(f"pullcache: cannot start: {_cause(exc)}", file=sys.stderr)
        return START_FAILED
    except OSError as exc:   # after the start: nothing was meant to raise it this far
        log.error("serve_failed", error=str(exc), errno=exc.errno)
        print(f"pullcache: stopped: {_cause(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _run_sites(cfg, path: Path | None = None) -> None:
    """The public site on ``server.listen`` (HTTPS with ``tls_cert``) and, if set, the admin
    site on ``server.admin_listen``; SIGHUP reloads, SIGINT/SIGTERM drain and stop
    (``lifecycle``)."""
    tls = lifecycle.tls_context(cfg.server)
    app = build_app(cfg)
    # access_log=None switches the access line off (server.access_log = false).
    access = structlog.get_logger("pullcache.access") if cfg.server.access_log else None
    runner = web.AppRunner(app, access_log_class=AccessLogger, handle_signals=False,
                           access_log=access, shutdown_timeout=cfg.server.drain_timeout,
                           keepalive_timeout=cfg.server.keepalive_timeout)
    try:
        await runner.setup()   # runs the cleanup_ctx: every object the admin app reports on
    except OSError as exc:   # the cache dir's lock, tree or index
        raise StartFailed(exc.errno, exc.strerror or str(exc), exc.filename) from exc
    runners = [runner]
    try:
        server = cfg.server
        cap = connection_cap(server.max_connections, raise_open_files_limit())
        host, port = configuration.split_listen(server.listen)
        # The public site bounds what clients may hold: connections, header and handshake
        # time (listener).
        public = Listener(runner, host, port, max_connections=cap,
                          header_timeout=server.header_timeout,
                          handshake_timeout=server.handshake_timeout, ssl_context=tls,
                          loops=app[LOOPS])
        await _start(public, server.listen, "listening", tls=tls is not None)
        if cfg.server.admin_listen:
            admin_runner = web.AppRunner(build_admin_app(app), handle_signals=False,
                                         access_log=None)
            await admin_runner.setup()
            runners.insert(0, admin_runner)
            host, port = configuration.split_listen(cfg.server.admin_listen)
            # The same bounds: idle sockets on the admin port neither pile up nor lock out.
            await _start(Listener(admin_runner, host, port,
                                  max_connections=min(cap, ADMIN_CONNECTIONS),
                                  header_timeout=server.header_timeout, loops=app[LOOPS]),
                         cfg.server.admin_listen, "admin_listening")
            if not server.admin_token and not _loopback(host):
                log.warning("admin_unprotected", listen=cfg.server.admin_listen,
                            hint="set server.admin_token for an admin listener off loopback")
        if cfg.cluster.enabled and cfg.cluster.listen:
            await _peer_site(app, cfg, cap, runners)
        await lifecycle.run_until_stopped(
            app, runner, cfg, path,
            lifecycle.PublicTls(public, server) if tls is not None else None)
    finally:
        for r in runners:
            await r.cleanup()


class ListenFailed(OSError):
    """A listener could not bind: told apart from the cache dir's start-up errors."""


class StartFailed(OSError):
    """The app could not be set up: the cache dir, its lock or its index refused."""


def _cause(exc: OSError) -> str:
    """``Permission denied: '/var/cache/pullcache/lock'``, with the errno's name."""
    name = errno.errorcode.get(exc.errno or 0)
    where = f": {exc.filename!r}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}" + (f" ({name})" if name else "")


async def _peer_site(app: web.Application, cfg, cap: int, runners: list) -> None:
    """``[cluster] listen``: the peer routes alone (``server/peers.py``), with mTLS when
    ``tls_cert`` is set, under the public site's bounds; its runner joins ``runners``."""
    c = cfg.cluster
    tls = server_context(c.tls_cert, c.tls_key, c.tls_ca) if c.mtls else None
    runner = web.AppRunner(build_peer_app(app, tls), handle_signals=False, access_log=None)
    await runner.setup()
    runners.insert(0, runner)
    host, port = configuration.split_listen(c.listen)
    await _start(Listener(runner, host, port, max_connections=cap,
                          header_timeout=cfg.server.header_timeout,
                          handshake_timeout=cfg.server.handshake_timeout, ssl_context=tls,
                          loops=app[LOOPS]),
                 c.listen, "peer_listening", tls=tls is not None)


async def _start(site: web.BaseSite, listen: str, event: str, *, tls: bool = False) -> None:
    try:
        await site.start()
    except OSError as exc:
        raise ListenFailed(exc.errno, f"{listen}: {exc.strerror}") from exc
    log.info(event, listen=listen, tls=tls)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
