"""Command line: ``pullcache serve | check-config | warm | cache ls|rm|gc|verify|stats|pins |
tier status | cluster status | node-setup``.

Commands that need the daemon talk to it through its admin API (``client.py``).
Exit codes: 0 success, 1 runtime failure (``serve``: another process holds the cache dir,
or a listen address is taken), 2 bad configuration or usage, 3 ``serve`` could not start on
its cache dir (an OSError opening the dir, its lock or its index; the cause on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import config as configuration
from .. import logs
from ..build import version_line
from ..errors import ConfigError
from .cache import cache_command
from .cluster import cluster_command
from .client import AdminClient, AdminError, DaemonUnreachable
from .node_setup import add_parser as node_setup_parser, node_setup
from .runtimes import NodeSetupError
from .tier import tier_command
from .warm import read_images, warm


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pullcache", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    serve_ = sub.add_parser("serve", help="run the mirror daemon")
    serve_.add_argument("--config", type=Path, help="TOML config (default: built-in)")
    check = sub.add_parser("check-config", help="validate a config; print the effective one")
    check.add_argument("file", type=Path, nargs="?")

    w = sub.add_parser("warm", help="fetch images into the running daemon's cache")
    w.add_argument("images", nargs="*", metavar="IMAGE",
                   help="e.g. python:3.12-slim, ghcr.io/org/app@sha256:…")
    w.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                   help="platform of a multi-platform image (repeatable; default: the "
                        "daemon host's)")
    w.add_argument("--all-platforms", action="store_true", help="every platform of an index")
    w.add_argument("--file", action="append", default=[], type=Path, metavar="LIST",
                   help="read images from LIST, one a line ('-': stdin)")
    w.add_argument("--json", action="store_true", help="print the result as JSON")
    w.add_argument("--config", type=Path)

    cache = sub.add_parser("cache", help="inspect, trim or check the cache")
    actions = cache.add_subparsers(dest="action", required=True)
    for name, help_ in (("ls", "list cached images"), ("rm", "remove cached images"),
                        ("gc", "evict down to the budget now"),
                        ("verify", "re-hash every cached file"),
                        ("stats", "usage, budget, hit ratio"), ("pins", "pinned images")):
        a = actions.add_parser(name, help=help_)
        a.add_argument("--config", type=Path)
        a.add_argument("--json", action="store_true",
                       help="print JSON (the same shape with or without a running daemon)")
        if name == "ls":
            a.add_argument("--repo", metavar="GLOB", help="only repositories matching GLOB")
        if name == "rm":
            a.add_argument("refs", nargs="+", metavar="REF")
        if name == "verify":
            a.add_argument("--repair", action="store_true", help="remove the bad files")
            a.add_argument("--rate", type=float, metavar="BYTES_PER_S",
                           help="read at most this fast (default: unthrottled, one file "
                                "at a time)")
    node_setup_parser(sub)
    tier = sub.add_parser("tier", help="the shared tier (ECR or S3): write-behind queue, "
                                       "repositories, bucket set-up")
    tier.add_argument("action", choices=("status", "sync", "init"))
    tier.add_argument("--config", type=Path)
    cluster = sub.add_parser("cluster", help="cluster mode: members, peers' health, sources")
    cluster.add_argument("action", choices=("status",))
    cluster.add_argument("--config", type=Path)
    cluster.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "node-setup":   # the node's files only: no pullcache config
        try:
            return node_setup(args)
        except (NodeSetupError, OSError) as exc:
            print(f"pullcache: node-setup: {exc}", file=sys.stderr)
            return 1
    path = getattr(args, "config", None) or getattr(args, "file", None)
    if args.command == "warm":
        path = args.config
    try:
        cfg = configuration.load(path)
    except (ConfigError, OSError) as exc:
        print(f"pullcache: config: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(configuration.render(cfg), end="")
        return 0
    if args.command == "serve":
        from .serve import serve   # the server stack: not loaded by the client commands
        logs.setup(cfg.log.level, cfg.log.format)
        return serve(cfg, path)
    # The other commands print their own results; only their problems are logged.
    logs.setup("warning", cfg.log.format)
    if args.command == "warm":
        return _warm(cfg, args)
    if args.command == "tier":
        return tier_command(cfg, args.action)
    if args.command == "cluster":
        return cluster_command(cfg, args.json)
    return cache_command(cfg, args)


def _warm(cfg, args) -> int:
    try:
        images = read_images(args.images, args.file)
    except OSError as exc:
        print(f"pullcache: warm: {exc}", file=sys.stderr)
        return 2
    if not images:
        print("pullcache: warm: name at least one image (or --file LIST)", file=sys.stderr)
        return 2
    try:
        return warm(AdminClient.for_config(cfg), images, platforms=args.platform,
                    all_platforms=args.all_platforms, as_json=args.json)
    except (DaemonUnreachable, AdminError) as exc:
        print(f"pullcache: warm: {exc}", file=sys.stderr)
        return 1
