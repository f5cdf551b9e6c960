"""The UI's own endpoints under /api/celeriac/, against a real worker on Redis and RabbitMQ and
a celeriac keeping its history in SQLite: bulk re-run and revoke, export, the charts' numbers,
failure groups and queue purge. Every action is checked by its effect on the cluster.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from celeriac.queues import queue_lengths
from tests.fixtures import BrokerInfo, CeleryWorker, MonitorFactory, MonitorProcess, wait_for
from tests.fixtures.workers import WorkerFactory

pytestmark = pytest.mark.timeout(180)

QUEUE = "bulk-side"  # a queue no worker consumes until a test says so


@pytest.fixture(scope="module")
def w1(broker: BrokerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    factory = WorkerFactory(tmp_path_factory.mktemp(f"bulk-workers-{broker.kind}"))
    # One process and no prefetch beyond it: tasks sent behind a sleeping one wait in the queue.
    yield factory(broker, hostname="w1@%h", concurrency=1,
                  extra_args=["--prefetch-multiplier=1"])
    factory.close()


@pytest.fixture(scope="module")
def monitor(
    broker: BrokerInfo, w1: CeleryWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MonitorProcess]:
    where = tmp_path_factory.mktemp(f"bulk-monitor-{broker.kind}")
    factory = MonitorFactory(where)
    m = factory(broker, "--db", str(where / "tasks.db"))

    def online() -> bool:
        return m.client.get("/api/workers", params={"status": "true"}).json().get(w1.hostname)

    wait_for(online, 30, 0.1, f"{w1.hostname} online in celeriac")
    yield m
    factory.close()


def send(m: MonitorProcess, name: str, *args: Any, **options: Any) -> str:
    r = m.client.post(f"/api/task/send-task/{name}", json={"args": list(args), **options})
    assert r.status_code == 200, r.text
    return str(r.json()["task-id"])


def info(m: MonitorProcess, task_id: str) -> dict[str, Any] | None:
    r = m.client.get(f"/api/task/info/{task_id}")
    return r.json() if r.status_code == 200 else None


def wait_state(m: MonitorProcess, task_id: str, *states: str, timeout: float = 30) -> dict:
    def reached() -> dict[str, Any] | None:
        i = info(m, task_id)
        return i if i and i["state"] in states else None

    found: dict[str, Any] = wait_for(reached, timeout, 0.1, f"{task_id} in {states}")
    return found


def listed(m: MonitorProcess, **filters: str) -> dict[str, Any]:
    """/api/tasks with these filters, once the store has written what it holds."""
    r = m.client.get("/api/tasks", params=filters)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_bulk_rerun_dry_run_then_really_runs_the_failed_tasks(monitor: MonitorProcess) -> None:
    marker = f"rerun-{time.monotonic_ns()}"
    failed = [send(monitor, "tests.fail", f"{marker} {i}") for i in range(3)]
    for t in failed:
        wait_state(monitor, t, "FAILURE")
    filters = {"state": "FAILURE", "taskname": "tests.fail", "search": marker}
    wait_for(lambda: len(listed(monitor, **filters)) == 3, 10, 0.1, "the failures stored")

    dry = monitor.client.post("/api/celeriac/tasks/rerun", params=filters)
    assert dry.status_code == 200, dry.text
    body = dry.json()
    assert body["dry_run"] is True and body["matched"] == 3 and body["more"] is False
    assert sorted(t["uuid"] for t in body["tasks"]) == sorted(failed)
    assert all(t["outcome"] == "ok" and "task-id" not in t for t in body["tasks"])
    time.sleep(0.5)
    assert len(listed(monitor, search=marker)) == 3  # nothing was sent

    real = monitor.client.post("/api/celeriac/tasks/rerun", params={**filters, "dry_run": "false"})
    assert real.status_code == 200, real.text
    body = real.json()
    assert body["dry_run"] is False and body["summary"] == {"ok": 3, "skipped": 0, "error": 0}
    new_ids = [t["task-id"] for t in body["tasks"]]
    assert len(set(new_ids)) == 3 and not set(new_ids) & set(failed)
    for new in new_ids:  # each ran again, on the worker, with the same arguments
        again = wait_state(monitor, new, "FAILURE")
        assert again["worker"] and marker in again["args"]
        assert again["name"] == "tests.fail"
    wait_for(lambda: len(listed(monitor, search=marker)) == 6, 10, 0.1, "all six stored")


def test_bulk_rerun_keeps_the_queue_and_purge_empties_it(
    monitor: MonitorProcess, broker: BrokerInfo, w1: CeleryWorker
) -> None:
    marker = f"queued-{time.monotonic_ns()}"
    t = send(monitor, "tests.echo", marker, queue=QUEUE)
    wait_state(monitor, t, "PENDING")
    filters = {"search": marker}
    wait_for(lambda: len(listed(monitor, **filters)) == 1, 10, 0.1, "the task stored")
    dry = monitor.client.post("/api/celeriac/tasks/rerun", params=filters).json()
    assert dry["tasks"][0]["queue"] == QUEUE
    real = monitor.client.post("/api/celeriac/tasks/rerun",
                               params={**filters, "dry_run": "false"}).json()
    new = real["tasks"][0]["task-id"]
    wait_for(lambda: queue_lengths(broker.app, [QUEUE])[QUEUE] == 2, 10, 0.1,
             "both copies waiting in the side queue")
    purged = monitor.client.post(f"/api/celeriac/queues/{QUEUE}/purge")
    assert purged.status_code == 200, purged.text
    assert purged.json()["purged"] == 2
    assert queue_lengths(broker.app, [QUEUE])[QUEUE] == 0
    time.sleep(1)
    assert wait_state(monitor, new, "PENDING")["started"] is None  # never ran: it was purged


def test_bulk_rerun_reports_arguments_it_cannot_rebuild(
    monitor: MonitorProcess, broker: BrokerInfo
) -> None:
    marker = f"norebuild-{time.monotonic_ns()}"
    # Sent from Python: the events carry reprs that are not literals (a datetime), or cut
    # short (Celery shortens long reprs), next to one that is fine.
    odd = broker.tasks.echo.delay({"at": datetime(2026, 1, 2), "m": marker}).id
    long = broker.tasks.echo.delay([marker, "x" * 5000]).id
    fine = broker.tasks.echo.delay([marker, 1]).id
    for t in (odd, long, fine):
        wait_state(monitor, t, "SUCCESS")
    wait_for(lambda: len(listed(monitor, search=marker)) == 3, 10, 0.1, "the tasks stored")
    r = monitor.client.post("/api/celeriac/tasks/rerun",
                            params={"search": marker, "dry_run": "false"})
    assert r.status_code == 200, r.text
    by_uuid = {t["uuid"]: t for t in r.json()["tasks"]}
    assert by_uuid[odd]["outcome"] == by_uuid[long]["outcome"] == "error"
    assert "not Python literals" in by_uuid[odd]["reason"]
    assert by_uuid[fine]["outcome"] == "ok"
    again = wait_state(monitor, by_uuid[fine]["task-id"], "SUCCESS")
    assert marker in again["result"]
    assert r.json()["summary"] == {"ok": 1, "skipped": 0, "error": 2}


def test_bulk_revoke_really_revokes_a_queued_task(monitor: MonitorProcess) -> None:
    marker = f"revoke-{time.monotonic_ns()}"
    blocker = send(monitor, "tests.sleep", 3)
    wait_state(monitor, blocker, "STARTED")
    queued = [send(monitor, "tests.echo", f"{marker} {i}") for i in range(2)]
    for t in queued:
        wait_state(monitor, t, "PENDING", "RECEIVED")
    wait_for(lambda: len(listed(monitor, search=marker)) == 2, 10, 0.1, "the tasks stored")
    dry = monitor.client.post("/api/celeriac/tasks/revoke", params={"search": marker}).json()
    assert dry["dry_run"] is True and dry["summary"]["ok"] == 2
    real = monitor.client.post("/api/celeriac/tasks/revoke",
                               params={"search": marker, "dry_run": "false"}).json()
    assert real["summary"] == {"ok": 2, "skipped": 0, "error": 0}
    wait_state(monitor, blocker, "SUCCESS")
    for t in queued:  # the worker took them after the blocker, and discarded them
        state = wait_state(monitor, t, "REVOKED", timeout=20)
        assert state["started"] is None and state["result"] is None
    wait_for(lambda: len(listed(monitor, search=marker, state="REVOKED")) == 2, 10, 0.1,
             "the revoked tasks stored")
    again = monitor.client.post("/api/celeriac/tasks/revoke",
                                params={"search": marker, "dry_run": "false"}).json()
    assert again["summary"] == {"ok": 0, "skipped": 2, "error": 0}  # already finished


def test_bulk_revoke_with_terminate_stops_a_running_task(monitor: MonitorProcess) -> None:
    running = send(monitor, "tests.sleep", 30)
    started = wait_state(monitor, running, "STARTED")
    filters = {"taskname": "tests.sleep", "state": "STARTED"}
    wait_for(lambda: list(listed(monitor, **filters)) == [running], 10, 0.1,
             "the running task stored")
    r = monitor.client.post("/api/celeriac/tasks/revoke",
                            params={**filters, "terminate": "true", "dry_run": "false"})
    assert r.status_code == 200 and r.json()["terminate"] is True
    assert [t["uuid"] for t in r.json()["tasks"]] == [running]
    info = wait_state(monitor, running, "REVOKED", timeout=15)
    assert info["succeeded"] is None and info["started"] == started["started"]
    # The worker lives on and takes the next task at once.
    wait_state(monitor, send(monitor, "tests.add", 1, 1), "SUCCESS", timeout=15)


def test_bulk_actions_check_their_arguments_and_cap(monitor: MonitorProcess) -> None:
    post = monitor.client.post
    assert post("/api/celeriac/tasks/rerun", params={"cap": "0"}).status_code == 400
    assert post("/api/celeriac/tasks/rerun", params={"cap": "x"}).status_code == 400
    assert post("/api/celeriac/tasks/rerun", params={"dry_run": "maybe"}).status_code == 400
    assert post("/api/celeriac/tasks/revoke", params={"signal": "SIGNOPE"}).status_code == 400
    bad = post("/api/celeriac/tasks/rerun", params={"search": "(unclosed"})
    assert bad.status_code == 400 and "missing ')'" in bad.text
    assert monitor.client.get("/api/celeriac/tasks/rerun").status_code == 405
    for i in range(3):
        wait_state(monitor, send(monitor, "tests.add", i, 100), "SUCCESS")
    wait_for(lambda: len(listed(monitor, taskname="tests.add")) >= 3, 10, 0.1, "adds stored")
    capped = post("/api/celeriac/tasks/rerun",
                  params={"taskname": "tests.add", "cap": "2"}).json()
    assert capped["matched"] == 2 and capped["more"] is True and len(capped["tasks"]) == 2


def test_export_streams_the_filtered_rows(monitor: MonitorProcess) -> None:
    marker = f"export-{time.monotonic_ns()}"
    ids = [send(monitor, "tests.echo", f"{marker} {i}, \"quoted\"\nline") for i in range(5)]
    for t in ids:
        wait_state(monitor, t, "SUCCESS")
    other = send(monitor, "tests.add", 1, 2)
    wait_state(monitor, other, "SUCCESS")
    wait_for(lambda: len(listed(monitor, search=marker)) == 5, 10, 0.1, "rows stored")
    r = monitor.client.get("/api/celeriac/tasks/export",
                           params={"format": "csv", "search": marker})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "content-length" not in r.headers  # streamed, page by page
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(row["uuid"] for row in rows) == sorted(ids)
    assert all(row["state"] == "SUCCESS" and row["name"] == "tests.echo" for row in rows)
    assert all(marker in row["args"] and "\n" in row["args"] for row in rows)
    assert [row["uuid"] for row in rows] == list(listed(monitor, search=marker))  # same order
    r = monitor.client.get("/api/celeriac/tasks/export",
                           params={"format": "jsonl", "search": marker, "limit": "2"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == 2 and {x["uuid"] for x in lines} <= set(ids)
    assert r.headers["content-type"].startswith("application/x-ndjson")

    def everything() -> set[str]:
        r = monitor.client.get("/api/celeriac/tasks/export", params={"format": "jsonl"})
        return {json.loads(x)["uuid"] for x in r.text.splitlines()}

    wait_for(lambda: {other, *ids} <= everything(), 10, 0.2, "an unfiltered export of all")
    assert monitor.client.get("/api/celeriac/tasks/export",
                              params={"format": "xml"}).status_code == 400
    assert monitor.client.get("/api/celeriac/tasks/export",
                              params={"search": '"open'}).status_code == 400


def test_failure_groups_and_charts_count_real_tasks(monitor: MonitorProcess) -> None:
    before = monitor.client.get("/api/celeriac/failures").json()
    group = next((g for g in before["groups"] if g["name"] == "tests.fail"
                  and g["exception_type"] == "TaskError"), {"count": 0})
    t = send(monitor, "tests.fail", "grouped")
    wait_state(monitor, t, "FAILURE")

    def grown() -> dict[str, Any] | None:
        groups = monitor.client.get("/api/celeriac/failures").json()["groups"]
        g = next((g for g in groups if g["name"] == "tests.fail"
                  and g["exception_type"] == "TaskError"), None)
        return g if g and g["count"] == group["count"] + 1 else None

    g: dict[str, Any] = wait_for(grown, 10, 0.2, "the failure counted in its group")
    assert g["last"] >= g["first"] and sum(g["series"]) >= 1 and "TaskError(" in g["example"]
    linked = listed(monitor, **g["filters"])  # the group's link lists its tasks
    assert t in linked and all(v["state"] == "FAILURE" for v in linked.values())
    for window in ("15m", "1h", "24h"):
        tp = monitor.client.get("/api/celeriac/stats/throughput", params={"window": window})
        body = tp.json()
        assert body["failed"] >= 1 and body["succeeded"] >= 1
        assert sum(s[2] for s in body["series"]) == body["failed"]
    types = monitor.client.get("/api/celeriac/stats/task-types").json()["types"]
    assert types["tests.fail"]["failed"] >= 1 and types["tests.fail"]["failure_rate"] == 1.0
    add = types["tests.add"]
    assert add["succeeded"] >= 1 and add["p50"] is not None and add["p50"] <= add["p99"]
    assert monitor.client.get("/api/celeriac/failures",
                              params={"window": "2d"}).status_code == 400


def test_purge_needs_a_known_queue(monitor: MonitorProcess) -> None:
    r = monitor.client.post("/api/celeriac/queues/no-such-queue-anywhere/purge")
    assert r.status_code == 404 and "Unknown queue" in r.text
    r = monitor.client.post("/api/celeriac/queues/celery/purge")  # consumed, empty
    assert r.status_code == 200 and r.json()["purged"] == 0


def test_read_only_users_cannot_act_but_can_export_and_the_cap_is_configured(
    broker: BrokerInfo, celeriac_server: MonitorFactory
) -> None:
    m = celeriac_server(broker, "--basic-auth", "ann:pw1", "--basic-auth-read-only", "bob:pw2",
                        env={"CELERIAC_BULK_MAX": "2"})
    bob, ann = httpx.BasicAuth("bob", "pw2"), httpx.BasicAuth("ann", "pw1")
    for path in ("/api/celeriac/tasks/rerun", "/api/celeriac/tasks/revoke",
                 "/api/celeriac/queues/celery/purge"):
        r = m.client.post(path, params={"dry_run": "false"}, auth=bob)
        assert r.status_code == 403, path
        assert m.client.post(path, auth=httpx.BasicAuth("x", "y")).status_code == 401
    reply = m.client.post("/api/celeriac/tasks/rerun", auth=ann)
    assert reply.status_code == 200 and reply.json()["cap"] == 2  # --bulk-max
    over = m.client.post("/api/celeriac/tasks/rerun", params={"cap": "3"}, auth=ann)
    assert over.status_code == 400 and "--bulk-max" in over.text
    for path in ("/api/celeriac/tasks/export", "/api/celeriac/failures",
                 "/api/celeriac/stats/throughput", "/api/celeriac/stats/task-types"):
        assert m.client.get(path, auth=bob).status_code == 200, path
