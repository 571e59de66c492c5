"""``pullcache warm IMAGE… [--platform os/arch[/variant]]… [--all-platforms] [--file LIST]``

Starts a warm job on the daemon and renders its progress: a ``rich`` progress display on a
terminal (per image: layers done/total, bytes, rate, ETA), plain log lines otherwise, one
JSON document with ``--json``. Ends with a summary table. Exit 0 when every image warmed,
1 when any failed (the reason is in the table and on stderr). A platform an index names but
the upstream does not have (404) is skipped: the other platforms warm, the image counts as
warmed, and the gap is in ``missing``, in the table and on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from ..units import human_size
from . import render
from .client import AdminClient

LOG_EVERY = 5.0


def read_images(images: list[str], files: list[Path]) -> list[str]:
    """Images from the command line and from list files (one a line; ``#`` comments)."""
    out = list(images)
    for path in files:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(line)
    return list(dict.fromkeys(out))


def warm(client: AdminClient, images: list[str], *, platforms: list[str],
         all_platforms: bool, as_json: bool, console: Console | None = None) -> int:
    console = console or render.console()
    job = client.post("/admin/warm", {"images": images, "platforms": platforms,
                                      "all_platforms": all_platforms})
    if as_json:
        job = client.follow(job, lambda j: None)
        print(json.dumps(job, indent=2))
    elif console.is_terminal:
        job = _live(client, job, console)
    else:
        job = _plain(client, job, console)
    if not as_json:
        console.print(summary_table(job["images"]))
    failed = [i for i in job["images"] if i["state"] != "done"]
    for image in failed:
        print(f"pullcache: warm {image['ref']}: {image['error'] or image['state']}",
              file=sys.stderr)
    for image in job["images"]:
        for gap in image.get("missing") or ():
            print(f"pullcache: warm {image['ref']}: {gap['platform']} ({gap['digest']}) is "
                  f"missing upstream, skipped: {gap['error']}", file=sys.stderr)
    return 1 if failed or job["state"] != "done" else 0



def _live(client: AdminClient, job: dict, console: Console) -> dict:
    # Rate and ETA from the daemon's own figures (bytes done over the image's time), not
    # from rich's estimate over our polls, which says nothing sensible for a 1 s warm.
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[layers]}"), DownloadColumn(binary_units=True),
               TextColumn("{task.fields[rate]:>11}"), TextColumn("{task.fields[eta]:>9}"))
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, int] = {}

        def show(job: dict) -> None:
            for image in job["images"]:
                if image["ref"] not in tasks:
                    tasks[image["ref"]] = progress.add_task(image["ref"], total=None,
                                                            layers="", rate="", eta="")
                total = image["bytes_total"] or None
                progress.update(tasks[image["ref"]], total=total,
                                completed=image["bytes_done"], layers=_layers(image),
                                description=_label(image), **_rate_eta(image))
        return client.follow(job, show)


def _plain(client: AdminClient, job: dict, console: Console) -> dict:
    said: dict[str, tuple[str, float]] = {}

    def show(job: dict) -> None:
        now = time.monotonic()
        for image in job["images"]:
            state, last = said.get(image["ref"], ("", 0.0))
            if image["state"] != state or (state == "fetching" and now - last >= LOG_EVERY):
                said[image["ref"]] = (image["state"], now)
                line = f"warm {image['ref']}: {image['state']}"
                if image["layers_total"]:
                    line += (f", {_layers(image)}, {human_size(image['bytes_done'])}"
                             f" of {human_size(image['bytes_total'])}")
                if image["error"]:
                    line += f": {image['error']}"
                console.print(line, highlight=False, soft_wrap=True)
    return client.follow(job, show)


def _rate_eta(image: dict) -> dict[str, str]:
    seconds = image["seconds"]
    moving = image["bytes_done"] - image["cached_bytes"]   # bytes that came over the wire
    rate = moving / seconds if seconds > 0 and moving > 0 else 0.0
    if image["state"] in ("done", "failed"):
        return {"rate": f"{human_size(rate)}/s" if rate else "", "eta": "done"
                if image["state"] == "done" else "failed"}
    left = image["bytes_total"] - image["bytes_done"]
    eta = f"eta {int(left / rate)}s" if rate and left > 0 else ""
    return {"rate": f"{human_size(rate)}/s" if rate else "", "eta": eta}


def _layers(image: dict) -> str:
    return f"{image['layers_done']}/{image['layers_total']} layers"


def _label(image: dict) -> str:
    mark = {"done": "[green]✓[/]", "failed": "[red]✗[/]"}.get(image["state"], "…")
    return f"{mark} {image['ref']}"


def summary_table(images: list[dict]) -> Table:
    table = Table(title="warmed", title_justify="left")
    for name, justify in (("image", "left"), ("digest", "left"), ("size", "right"),
                          ("cached", "right"), ("fetched", "right"), ("time", "right"),
                          ("result", "left")):
        # Names and digests whole (people copy them); a long failure reason wraps instead.
        table.add_column(name, justify=justify, no_wrap=name != "result")
    for i in images:
        digest = (i["digest"] or "-")[:19]
        result = "[green]ok[/]" if i["state"] == "done" else f"[red]{i['error'] or i['state']}[/]"
        if i.get("missing"):
            gaps = len(i["missing"])
            result += f" [yellow]({gaps} platform{'s' if gaps > 1 else ''} missing)[/]"
        table.add_row(i["ref"], digest, human_size(i["bytes_total"]),
                      human_size(i["cached_bytes"]), human_size(i["fetched_bytes"]),
                      f"{i['seconds']:.1f}s", result)
    return table
