"""deploy/prometheus and deploy/grafana against the real thing: ``promtool test rules`` on
the alert fixtures, and Debian's Prometheus scraping a live pullcache under a small load,
where every dashboard query and every metric selector of every alert must return series
(a renamed metric leaves a panel empty and an alert silent; this is where that fails)."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.support.binaries import require
from tests.support.prometheus import ALERTS, dashboard_queries, monitored
from tests.support.ports import wait_until

# A metric selector: a pullcache metric (or Prometheus's own ``up``) with its matchers.
SELECTOR = re.compile(r"\b(pullcache_[a-z_]+|up(?=\{))(\{[^}]*\})?")


def promtool() -> str:
    return require("promtool")   # Debian's prometheus package


def test_promtool_checks_the_rules_and_passes_every_alert_fixture():
    checked = subprocess.run([promtool(), "check", "rules", str(ALERTS)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"],
                            capture_output=True, text=True, timeout=120, cwd=ALERTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a fixture that fires it.
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
              for r in g["rules"]}
    fixtures = yaml.safe_load((ALERTS.parent / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for f in fixtures for t in f["alert_rule_test"] if t["exp_alerts"]}
    assert fired == alerts


def alert_selectors() -> list[tuple[str, str]]:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    return [(r["alert"], m.group(0)) for r in rules for m in SELECTOR.finditer(r["expr"])]


def test_every_dashboard_and_alert_query_returns_series_from_a_live_pullcache(tmp_path):
    queries = dashboard_queries("15s")
    selectors = alert_selectors()
    assert len(queries) >= 20 and len(selectors) >= 10   # the parsing found them
    with monitored(tmp_path) as world:
        prom = world.prometheus
        world.load()
        wait_until(lambda: prom.query('pullcache_upstream_ratelimit_remaining'), 30,
                   "Prometheus to scrape the load")
        world.load()   # a second round: rates see increases between scrapes
        empty: list[str] = []

        def all_answer() -> bool:
            empty[:] = [f"{what}: {expr}" for what, expr in queries + selectors
                        if not prom.query(expr)]
            return not empty
        try:
            wait_until(all_answer, 30, "every query to return series")
        except TimeoutError:
            raise AssertionError("queries without series:\n" + "\n".join(empty)) from None
        assert prom.query('pullcache_build_info{version!="unknown"} == 1')
        # Every alert rule evaluates without error (the conditions themselves are healthy:
        # nothing may fire here but the quota, which this load keeps above 10%).
        def evaluated() -> list[dict]:
            rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            return rules if all(r.get("lastEvaluation", "").startswith("20")
                                and r["health"] != "unknown" for r in rules) else []
        wait_until(evaluated, 30, "the alert rules to be evaluated")
        rules = evaluated()
        assert {r["name"] for r in rules} == {a for a, _ in selectors}
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
        assert [r["name"] for r in rules if r["state"] != "inactive"] == []
