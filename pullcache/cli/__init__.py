"""Command line: ``pullcache serve | check-config | cache stats | cache gc``.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .. import config as configuration
from .. import logs
from ..errors import ConfigError
from .cache import cache_command
from .serve import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pullcache", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_ = sub.add_parser("serve", help="run the mirror daemon")
    serve_.add_argument("--config", type=Path, help="TOML config (default: built-in)")
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
        return serve(cfg)
    return asyncio.run(cache_command(cfg, args.action))
