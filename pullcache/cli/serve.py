"""``pullcache serve``: the public site and the admin site; SIGHUP reloads, SIGINT/SIGTERM
drain and stop (``server.lifecycle``)."""

from __future__ import annotations

import ssl
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
from ..server.app import build_app
from ..server.middleware import AccessLogger

log = structlog.get_logger("pullcache")


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
    except OSError as exc:   # the listen address is taken or not ours
        log.error("listen_failed", error=str(exc))
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
                           access_log=access, shutdown_timeout=cfg.server.drain_timeout)
    await runner.setup()   # runs the cleanup_ctx: every object the admin app reports on
    runners = [runner]
    try:
        await _start(runner, cfg.server.listen, "listening", tls)
        if cfg.server.admin_listen:
            admin_runner = web.AppRunner(build_admin_app(app), handle_signals=False,
                                         access_log=None)
            await admin_runner.setup()
            runners.insert(0, admin_runner)
            await _start(admin_runner, cfg.server.admin_listen, "admin_listening")
        await lifecycle.run_until_stopped(app, runner, cfg, path, tls)
    finally:
        for r in runners:
            await r.cleanup()


async def _start(runner: web.AppRunner, listen: str, event: str,
                 tls: ssl.SSLContext | None = None) -> None:
    host, port = configuration.split_listen(listen)
    try:
        await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls).start()
    except OSError as exc:
        raise OSError(exc.errno, f"{listen}: {exc.strerror}") from exc
    log.info(event, host=host, port=port, tls=tls is not None)
