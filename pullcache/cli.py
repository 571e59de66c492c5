"""Command line: ``pullcache serve | check-config | cache stats | cache gc``.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from pathlib import Path

import structlog
import uvloop
from aiohttp import web

from . import config as configuration
from . import logs
from .cache.store import BlobStore, Budget
from .errors import ConfigError
from .server import lifecycle
from .server.admin import build_admin_app
from .server.app import build_app
from .server.middleware import AccessLogger

log = structlog.get_logger("pullcache")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pullcache", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the mirror daemon")
    serve.add_argument("--config", type=Path, help="TOML config (default: built-in)")
    check = sub.add_parser("check-config", help="validate a config; print the effective one")
    check.add_argument("file", type=Path, nargs="?")
    cache = sub.add_parser("cache", help="inspect or trim the cache (safe while serving)")
    cache.add_argument("action", choices=("stats", "gc"))
    cache.add_argument("--config", type=Path)
    args = parser.parse_args(argv)

    path = getattr(args, "config", None) or getattr(args, "file", None)
    try:
        cfg = configuration.load(path)
    except (ConfigError, OSError) as exc:
        print(f"pullcache: config: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(configuration.render(cfg), end="")
        return 0
    logs.setup(cfg.log.level, cfg.log.format)
    if args.command == "serve":
        return _serve(cfg, path)
    return asyncio.run(_cache_command(cfg, args.action))


def _serve(cfg, path: Path | None = None) -> int:
    try:
        uvloop.run(_run_sites(cfg, path))
    except ConfigError as exc:   # a TLS file that does not load
        log.error("config_failed", error=str(exc))
        return 2
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


async def _cache_command(cfg, action: str) -> int:
    store = BlobStore(cfg.cache.dir, Budget(cfg.cache.max_size, cfg.cache.high_watermark,
                                            cfg.cache.low_watermark))
    # No reconcile here: the daemon may be mid-fill, and its temp files are not orphans.
    await store.open(reconcile=False)
    try:
        if action == "gc":
            freed = await store.make_room()
            await store.release()
            print(json.dumps({"freed_bytes": freed, **await store.usage()}))
        else:
            print(json.dumps({"dir": str(cfg.cache.dir), **await store.usage()}, indent=2))
    finally:
        await store.close()
    return 0
