"""Command line: ``pullcache serve | check-config | cache stats | cache gc``.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import structlog
import uvloop
from aiohttp import web

from . import config as configuration
from . import logs
from .cache.store import BlobStore, Budget
from .errors import ConfigError
from .server.app import build_app
from .server.listener import BatchAcceptSite
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
        return _serve(cfg)
    return asyncio.run(_cache_command(cfg, args.action))


def _serve(cfg) -> int:
    host, port = configuration.split_listen(cfg.server.listen)
    try:
        uvloop.run(_run_site(build_app(cfg), host, port, cfg.server.access_log))
    except OSError as exc:   # the listen address is taken or not ours
        log.error("listen_failed", host=host, port=port, error=str(exc))
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _run_site(app: web.Application, host: str, port: int, access_log: bool) -> None:
    # access_log=None switches the access line off (server.access_log = false).
    runner = web.AppRunner(app, access_log_class=AccessLogger, handle_signals=False,
                           access_log=structlog.get_logger("pullcache.access")
                           if access_log else None)
    await runner.setup()
    try:
        # Accepted in batches, with a deep backlog: a rollout's 1,000 clients connect at once.
        site = BatchAcceptSite(runner, host, port)
        await site.start()
        log.info("listening", host=host, port=port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()


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
