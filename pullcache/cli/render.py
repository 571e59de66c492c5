"""How the cache commands print: human tables (sizes and ages for people) by default,
JSON with ``--json``. Online (admin API) and offline results have the same shape."""

from __future__ import annotations

import json
import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..units import human_age, human_size


def console() -> Console:
    """A terminal's own width; a pipe or a file gets long lines rather than wrapped cells
    (rich assumes 80 columns there), so grep and logs see one row a line."""
    c = Console()
    return c if c.is_terminal or os.environ.get("COLUMNS") else Console(width=240)


def _json(data) -> int:
    print(json.dumps(data, indent=2))
    return 0


def _ratio(summary: dict) -> str:
    ratio = summary.get("hit_ratio")
    if not summary.get("daemon"):
        return "n/a (no daemon)"
    return "n/a (no requests yet)" if ratio is None else f"{ratio * 100:.1f}%"


def _usage(s: dict) -> str:
    share = s["bytes"] / s["max_size"] * 100 if s["max_size"] else 0
    return f"{human_size(s['bytes'])} of {human_size(s['max_size'])} ({share:.0f}%)"


def stats(s: dict, as_json: bool, console: Console) -> int:
    if as_json:
        return _json(s)
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [("cache dir", s["dir"]), ("used", _usage(s)), ("files", str(s["entries"])),
            ("pinned", human_size(s.get("pinned_bytes", 0))),
            ("hit ratio since start", _ratio(s))]
    if s.get("daemon"):
        rows += [("requests", f"{s['hits']:.0f} hits, {s['misses']:.0f} misses"),
                 ("served from cache", human_size(s["served_from_cache_bytes"])),
                 ("fetched from upstreams", human_size(s["fetched_upstream_bytes"])),
                 ("evicted", f"{s['evicted_files']:.0f} files, "
                             f"{human_size(s['evicted_bytes'])}"),
                 ("fills in flight", str(s["fills_in_flight"]))]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    return 0


def ls(data: dict, as_json: bool, console: Console) -> int:
    if as_json:
        return _json(data)
    now = time.time()
    table = Table()
    for name, justify in (("upstream", "left"), ("repository", "left"), ("tag", "left"),
                          ("digest", "left"), ("size", "right"), ("last used", "right"),
                          ("pinned", "center")):
        table.add_column(name, justify=justify)
    for row in data["images"]:
        used = now - row["last_used"] if row["last_used"] else None
        table.add_row(row["upstream"], row["repository"], row["tag"], row["digest"][:19],
                      human_size(row["size"]), human_age(used) + (" ago" if used else ""),
                      "yes" if row["pinned"] else "")
    console.print(table)
    t = data["totals"]
    line = f"{len(data['images'])} tags · used {_usage(t)} · hit ratio {_ratio(t)}"
    if t.get("daemon"):
        line += f" · evictions {t['evicted_files']:.0f} ({human_size(t['evicted_bytes'])})"
    console.print(line, highlight=False)
    return 0


def removed(result: dict, console: Console) -> None:
    console.print(f"removed {result['removed_files']} files "
                  f"({human_size(result['removed_bytes'])}), kept {result['kept_shared']} "
                  f"shared with other images, {result['tags_removed']} tag records",
                  highlight=False)
    for ref in result["not_cached"]:
        console.print(f"[yellow]not cached:[/] {ref}")


def gc(result: dict, as_json: bool, console: Console) -> int:
    if as_json:
        return _json(result)
    console.print(f"freed {human_size(result['freed_bytes'])}; "
                  f"used {_usage(result)}", highlight=False)
    return 0


class VerifyDisplay:
    """A progress bar on a terminal, a line every few seconds otherwise, nothing for JSON."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self._progress = None
        self._task = None
        self._last = 0.0

    def __enter__(self) -> "VerifyDisplay":
        if self.enabled and self.console.is_terminal:
            self._progress = Progress(TextColumn("verify"), BarColumn(),
                                      TextColumn("{task.fields[files]}"),
                                      DownloadColumn(binary_units=True), TimeRemainingColumn(),
                                      console=self.console)
            self._progress.__enter__()
            self._task = self._progress.add_task("verify", total=None, files="")
        return self

    def update(self, job: dict) -> None:
        files = f"{job['files_done']}/{job['files_total']} files, {len(job['bad'])} bad"
        if self._progress is not None:
            self._progress.update(self._task, total=job["bytes_total"] or None,
                                  completed=job["bytes_done"], files=files)
        elif self.enabled and (time.monotonic() - self._last >= 5 or job["state"] != "running"):
            self._last = time.monotonic()
            self.console.print(f"verify: {files}, {human_size(job['bytes_done'])} of "
                               f"{human_size(job['bytes_total'])}", highlight=False)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def verified(job: dict, as_json: bool, console: Console) -> int:
    """Exit 0 when every file was good or repaired; 1 when a bad file stays, or when the
    verify job itself did not finish (its error on stderr: an unfinished run proves
    nothing about the files it did not reach)."""
    if as_json:
        _json(job)
    else:
        for bad in job["bad"]:
            action = "removed" if bad["removed"] else (
                "BAD" if bad.get("repairable", True) else "UNCHECKED")
            console.print(f"[red]{action}[/] {bad['key']}: {bad['problem']}")
        console.print(f"verified {job['files_done']} files ({human_size(job['bytes_done'])}) "
                      f"in {job['seconds']:.1f}s: {len(job['bad'])} bad", highlight=False)
    if job.get("error") or job.get("state") not in (None, "done", "failed"):
        print(f"pullcache: cache verify did not finish ({job.get('state')}): "
              f"{job.get('error') or 'no reason given'}; checked {job['files_done']} of "
              f"{job['files_total']} files", file=sys.stderr)
        return 1
    return 1 if any(not b["removed"] for b in job["bad"]) else 0


def pins(data: dict, as_json: bool, console: Console) -> int:
    if as_json:
        return _json(data)
    table = Table()
    for name in ("image", "digest", "size", "checked", "state"):
        table.add_column(name)
    now = time.time()
    for p in data["pins"]:
        state = f"[red]{p['error']}[/]" if p["error"] else ("warming" if p.get("warming")
                                                            else "warm")
        checked = human_age(now - p["checked_at"]) + " ago" if p["checked_at"] else "-"
        table.add_row(p["ref"], (p["digest"] or "-")[:19], human_size(p["bytes"]), checked,
                      state)
    console.print(table)
    line = f"pinned {human_size(data['pinned_bytes'])} of {human_size(data['max_size'])}"
    console.print(line + (f" · [red]{data['over_budget']}[/]" if data.get("over_budget")
                          else ""), highlight=False)
    return 0
