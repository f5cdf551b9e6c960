"""The files shipped for Prometheus and Grafana (deploy/): the alert rules pass promtool's check
and its unit tests (deploy/prometheus/alerts.test.yml), the dashboard is valid Grafana JSON, and
both ask only for metrics that celeriac exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from celeriac.server import create_app
from celeriac.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "celeriac-dashboard.json"
#: Metric names in PromQL that are not celeriac's: Prometheus' own.
NOT_OURS = {"up"}
_NAME = re.compile(r"\b((?:flower|celeriac|process|python)_[a-zA-Z0-9_:]*|up)\b")


def exported(tmp_path: Path) -> set[str]:
    """Every sample name a celeriac with a SQLite store can put on /metrics."""
    app = create_app(Settings(broker="redis://127.0.0.1:1/0", unauthenticated_api=True,
                              db=str(tmp_path / "tasks.sqlite3")))
    cluster = app.state.cluster
    cluster.store.start()
    try:
        now = time.time()
        cluster.state.apply([
            {"type": "worker-heartbeat", "hostname": "w@h", "active": 1, "freq": 2.0},
            {"type": "task-received", "uuid": "u", "name": "t", "hostname": "w@h",
             "timestamp": now},
            {"type": "task-started", "uuid": "u", "hostname": "w@h", "timestamp": now},
            {"type": "task-succeeded", "uuid": "u", "hostname": "w@h", "runtime": 0.1,
             "timestamp": now},
        ])
        body, _ = app.state.metrics.render(None)
    finally:
        cluster.store.close()
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                    "gauge": ("",), "info": ("_info",)}.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
        names.update(s.name for s in family.samples)
    return names


def promql_of_rules() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def promql_of_dashboard(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    for v in dashboard["templating"]["list"]:
        query = v.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_rules_are_well_formed() -> None:
    rules = yaml.safe_load(RULES.read_text())
    names = []
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
            assert rule["annotations"]["summary"], rule
            names.append(rule["alert"])
    assert len(names) == len(set(names)), "an alert name used twice"
    assert {"CeleryWorkerOffline", "CeleryTaskFailureRateHigh", "CeleryQueueBacklog",
            "CeleriacEventStreamDisconnected", "CeleriacNoEvents"} <= set(names)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian: apt-get install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for argv in (["promtool", "check", "rules", str(RULES)],
                 ["promtool", "test", "rules", str(RULE_TESTS)]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              cwd=RULES.parent)
        assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in promql_of_dashboard(dashboard):
        for used in re.findall(r"\$(\w+)", expr):
            assert used in variables or used.startswith("__"), (used, expr)


def test_rules_and_dashboard_use_only_metrics_celeriac_exports(tmp_path: Path) -> None:
    names = exported(tmp_path)
    exprs = promql_of_rules() + promql_of_dashboard(json.loads(DASHBOARD.read_text()))
    used = {n for e in exprs for n in _NAME.findall(e)} - NOT_OURS
    assert used, "no metric found in the expressions"
    assert used - names == set(), f"not exported: {sorted(used - names)}"
    # Flower's six are on the dashboard, so its users find what they had.
    for flower in ("flower_events_total", "flower_task_runtime_seconds_bucket",
                   "flower_task_prefetch_time_seconds", "flower_worker_prefetched_tasks",
                   "flower_worker_online", "flower_worker_number_of_currently_executing_tasks"):
        assert flower in used, flower
