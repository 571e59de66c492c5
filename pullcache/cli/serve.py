"""``pullcache serve``: the public site and the admin site, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
import uvloop
from aiohttp import web

from .. import config as configuration
from ..cache.lock import CacheLocked
from ..server.admin import build_admin_app
from ..server.app import build_app
from ..server.middleware import AccessLogger

log = structlog.get_logger("pullcache")


def serve(cfg) -> int:
    try:
        uvloop.run(_run_sites(cfg))
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


async def _run_sites(cfg) -> None:
    """The public site on ``server.listen`` and, if set, the admin site on
    ``server.admin_listen``; both stop on SIGINT/SIGTERM."""
    app = build_app(cfg)
    # access_log=None switches the access line off (server.access_log = false).
    access = structlog.get_logger("pullcache.access") if cfg.server.access_log else None
    runner = web.AppRunner(app, access_log_class=AccessLogger, handle_signals=False,
                           access_log=access)
    await runner.setup()   # runs the cleanup_ctx: every object the admin app reports on
    runners = [runner]
    try:
        await _start(runner, cfg.server.listen, "listening")
        if cfg.server.admin_listen:
            admin_runner = web.AppRunner(build_admin_app(app), handle_signals=False,
                                         access_log=None)
            await admin_runner.setup()
            runners.insert(0, admin_runner)
            await _start(admin_runner, cfg.server.admin_listen, "admin_listening")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
    finally:
        for r in runners:
            await r.cleanup()


async def _start(runner: web.AppRunner, listen: str, event: str) -> None:
    host, port = configuration.split_listen(listen)
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        raise OSError(exc.errno, f"{listen}: {exc.strerror}") from exc
    log.info(event, host=host, port=port)
