"""``pullcache node-setup containerd|docker|podman``: point a node's container runtime at
the mirror.

Each runtime's change is a set of whole-file edits (``runtimes.py`` says what each file
becomes). Applying one is idempotent (a file already as wanted is left alone), keeps the
file as it was before the first change next to it (``<file>.pullcache-orig``, or a
``<file>.pullcache-new`` marker when node-setup created it), and prints what it changed.
``--undo`` puts every file back as it was before the first change; ``--dry-run`` prints the
same report and writes nothing.

No runtime is restarted: containerd reads ``hosts.toml`` on every pull and podman its
drop-ins on every command; dockerd reads ``daemon.json`` again on SIGHUP (the printed next
step).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .runtimes import RUNTIMES, Edit, Plan

ORIG, NEW = ".pullcache-orig", ".pullcache-new"


def add_parser(sub) -> None:
    p = sub.add_parser("node-setup", help="point this node's container runtime at the mirror")
    p.add_argument("runtime", choices=sorted(RUNTIMES))
    p.add_argument("--mirror", default="http://127.0.0.1:5000",
                   help="the mirror's URL as the runtime reaches it (default: %(default)s)")
    p.add_argument("--registries", default=None, metavar="HOST,…",
                   help="registries to mirror (default: containerd every registry "
                        "(_default), docker and podman docker.io)")
    p.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                   help="the node's filesystem root (a host mount in a container)")
    p.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    p.add_argument("--undo", action="store_true",
                   help="put back what node-setup changed")


@dataclass
class Outcome:
    path: Path
    action: str   # created | changed | unchanged | restored | removed | untouched


def node_setup(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    mirror = args.mirror.rstrip("/")
    parts = urlsplit(mirror)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(f"pullcache: node-setup: --mirror {args.mirror!r}: want http(s)://host:port",
              file=err)
        return 2
    registries = [r.strip() for r in (args.registries or "").split(",") if r.strip()] or None
    plan: Plan = RUNTIMES[args.runtime](args.root, mirror, registries)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=err)
    if args.undo:
        outcomes = [undo(path, args.dry_run) for path in plan.touched]
    else:
        outcomes = [apply(edit, args.dry_run, out) for edit in plan.edits]
    verb = "would be " if args.dry_run else ""
    for o in outcomes:
        print(f"{o.path}: {verb}{o.action}", file=out)
    if not args.undo and not args.dry_run and any(o.action != "unchanged" for o in outcomes):
        for step in plan.then:
            print(f"then: {step}", file=out)
    return 0


def apply(edit: Edit, dry_run: bool, out) -> Outcome:
    """Write ``edit``'s content unless the file already has it; keep the original once."""
    path = edit.path
    before = path.read_text() if path.exists() else None
    after = edit.render(before)
    if before == after:
        return Outcome(path, "unchanged")
    diff = difflib.unified_diff((before or "").splitlines(True), after.splitlines(True),
                                str(path) + (ORIG if before is not None else ""), str(path))
    out.write("".join(diff))
    if dry_run:
        return Outcome(path, "changed" if before is not None else "created")
    path.parent.mkdir(parents=True, exist_ok=True)
    orig, new = _beside(path, ORIG), _beside(path, NEW)
    if not orig.exists() and not new.exists():
        if before is None:
            new.touch()
        else:
            _write(orig, before, path)
    _write(path, after, path)
    return Outcome(path, "changed" if before is not None else "created")


def undo(path: Path, dry_run: bool) -> Outcome:
    """The file as it was before node-setup first changed it."""
    orig, new = _beside(path, ORIG), _beside(path, NEW)
    if orig.exists():
        if not dry_run:
            os.replace(orig, path)
        return Outcome(path, "restored")
    if new.exists():
        if not dry_run:
            path.unlink(missing_ok=True)
            new.unlink()
            _prune(path.parent)
        return Outcome(path, "removed")
    return Outcome(path, "untouched")


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _write(path: Path, text: str, like: Path) -> None:
    """Atomically, with the mode of ``like`` when it exists (daemon.json may be 0600)."""
    tmp = path.with_name(path.name + ".pullcache-tmp")
    tmp.write_text(text)
    if like.exists():
        os.chmod(tmp, like.stat().st_mode & 0o7777)
    os.replace(tmp, path)


def _prune(directory: Path) -> None:
    """A per-registry ``certs.d/<host>/`` node-setup made and emptied goes too."""
    try:
        directory.rmdir()
    except OSError:
        pass
