"""Render deploy/grafana/pullcache.json's panels as one PNG (docs/monitoring.png), from the
queries' answers of a real Prometheus scraping a live pullcache under a few minutes of
load: the dashboard as Grafana would draw it, where Grafana itself cannot run.

    .venv/bin/pip install -e '.[docs]'
    PYTHONPATH=. .venv/bin/python deploy/grafana/render.py [--minutes 3] [--out docs/monitoring.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tests.support.prometheus import DASHBOARD, monitored, scratch  # noqa: E402

RATE = "15s"


def legend(template: str, labels: dict) -> str:
    out = template
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/monitoring.png")
    args = parser.parse_args()
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] == "timeseries"]
    workdir = scratch()
    try:
        with monitored(workdir) as world:
            prom = world.prometheus
            start = time.time()
            while time.time() - start < args.minutes * 60:
                # Bursts of new images between quiet spells: misses, then hits.
                world.load(images=1 + int(time.time() - start) // 40 % 3)
                time.sleep(6)
            end = time.time()
            info = prom.query("pullcache_build_info")[0]["metric"]
            cols = 3
            rows = -(-len(panels) // cols)
            fig, axes = plt.subplots(rows, cols, figsize=(cols * 6, rows * 3.1))
            for ax, panel in zip(axes.flat, panels):
                for target in panel["targets"]:
                    expr = target["expr"].replace("$__rate_interval", RATE)
                    for series in prom.query_range(expr, start, end, 2):
                        xs = [float(t) - start for t, _ in series["values"]]
                        ys = [float(v) for _, v in series["values"]]
                        ax.plot(xs, ys, label=legend(target["legendFormat"],
                                                     series["metric"])[:40])
                ax.set_title(panel["title"], fontsize=10)
                ax.set_xlabel(f"seconds ({panel['fieldConfig']['defaults']['unit']})",
                              fontsize=7)
                ax.tick_params(labelsize=7)
                ax.legend(fontsize=6, loc="upper left")
                ax.grid(alpha=0.3)
            for ax in list(axes.flat)[len(panels):]:
                ax.axis("off")
            fig.suptitle(f"pullcache {info['version']} (python {info['python']}, aiohttp "
                         f"{info['aiohttp']}): deploy/grafana/pullcache.json, from a live "
                         f"Prometheus, {args.minutes:g} min of load", fontsize=12)
            fig.tight_layout()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(args.out, dpi=80)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
