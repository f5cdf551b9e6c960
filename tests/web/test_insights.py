"""Acting on many tasks, exports, failure groups, history charts and queue purge, driven in a
real headless Chromium against a real celeriac and real workers, and checked by their effects
on the cluster."""

from __future__ import annotations

import csv
import io
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from celeriac.queues import queue_lengths
from tests.fixtures import BrokerInfo, CeleryWorker, WorkerFactory, wait_for
from tests.web.conftest import UI

pytestmark = pytest.mark.timeout(150)

PURGE_QUEUE = "ui-purge"


@pytest.fixture(scope="module")
def w3(redis_broker: BrokerInfo, module_celery_worker: WorkerFactory, ui: UI) -> CeleryWorker:
    """A worker of its own queue, one task at a time: what it cannot take waits in the queue."""
    worker = module_celery_worker(redis_broker, hostname="w3@%h", concurrency=1,
                                  queues=[PURGE_QUEUE], extra_args=["--prefetch-multiplier=1"])

    def online() -> bool:
        with ui.api() as c:
            return bool(c.get("/api/workers", params={"status": "true"}).json().get(
                worker.hostname))

    wait_for(online, 20, 0.1, "celeriac to see w3")
    return worker


def stored(ui: UI, n: int, **filters: str) -> dict[str, Any]:
    """Wait until /api/tasks lists ``n`` tasks for these filters (the store writes in batches)."""
    def found() -> dict[str, Any] | None:
        with ui.api() as c:
            tasks: dict[str, Any] = c.get("/api/tasks", params=filters).json()
        return tasks if len(tasks) == n else None

    result: dict[str, Any] = wait_for(found, 15, 0.1, f"{n} tasks stored for {filters}")
    return result


def test_re_run_all_matching_dry_run_first_then_really(ui: UI, page: Any) -> None:
    marker = f"uirerun{time.monotonic_ns()}"
    failed = [ui.send("tests.fail", f"{marker} {i}") for i in range(2)]
    for t in failed:
        ui.wait_state(t, "FAILURE")
    stored(ui, 2, search=marker)
    page.goto(f"{ui.url}/tasks?state=FAILURE&search={marker}")
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{failed[0]}"]')
    page.click("#bulk-rerun")
    page.wait_for_selector("#bulk-summary:has-text('Dry run: 2 tasks match')")
    outcomes = page.locator("#bulk-tasks tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.uuid, r.dataset.outcome])")
    assert sorted(outcomes) == sorted([t, "ok"] for t in failed)
    assert page.locator("#bulk-confirm").inner_text() == "Re-run 2 tasks"
    time.sleep(0.5)
    stored(ui, 2, search=marker)  # the dry run sent nothing
    page.click("#bulk-confirm")  # window.confirm is accepted by the fixture
    page.wait_for_selector("#bulk-summary.ok:has-text('Done: 2 sent again')")
    new_ids = page.locator("#bulk-tasks a.new-task").all_inner_texts()
    assert len(new_ids) == 2 and not set(new_ids) & set(failed)
    for new in new_ids:  # they really ran again, on a worker, with the same arguments
        info = ui.wait_state(new, "FAILURE")
        assert info["worker"] and marker in info["args"]
    stored(ui, 4, search=marker)


def test_revoke_all_matching_really_revokes_queued_tasks(
    ui: UI, page: Any, w3: CeleryWorker
) -> None:
    marker = f"uirevoke{time.monotonic_ns()}"
    with ui.api() as c:
        blocker = c.post("/api/task/send-task/tests.sleep",
                         json={"args": [4], "queue": PURGE_QUEUE}).json()["task-id"]
        ui.wait_state(blocker, "STARTED")
        queued = [c.post("/api/task/send-task/tests.echo",
                         json={"args": [f"{marker} {i}"], "queue": PURGE_QUEUE}).json()["task-id"]
                  for i in range(2)]
    stored(ui, 2, search=marker)
    page.goto(f"{ui.url}/tasks?search={marker}")
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{queued[0]}"]')
    page.click("#bulk-revoke")
    page.wait_for_selector("#bulk-summary:has-text('Dry run: 2 tasks match')")
    page.click("#bulk-confirm")
    page.wait_for_selector("#bulk-summary.ok:has-text('Done: 2 revoked')")
    ui.wait_state(blocker, "SUCCESS", timeout=20)
    for t in queued:  # the worker got to them after the blocker and never ran them
        info = ui.wait_state(t, "REVOKED", timeout=20)
        assert info["started"] is None and info["result"] is None


def test_export_links_follow_the_filter(ui: UI, page: Any) -> None:
    marker = f"uiexport{time.monotonic_ns()}"
    ids = [ui.send("tests.echo", f"{marker} {i}") for i in range(3)]
    for t in ids:
        ui.wait_state(t, "SUCCESS")
    stored(ui, 3, search=marker)
    page.goto(f"{ui.url}/tasks")
    page.fill("#filters input[name=search]", marker)
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{ids[0]}"]')
    page.wait_for_function(
        "m => document.getElementById('export-csv').href.includes(m)", arg=marker)
    href = page.locator("#export-csv").get_attribute("href")
    assert parse_qs(urlsplit(href).query) == {"format": ["csv"], "search": [marker]}
    response = page.request.get(ui.monitor.url + href)
    assert response.ok and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text())))
    assert sorted(r["uuid"] for r in rows) == sorted(ids)
    assert {r["state"] for r in rows} == {"SUCCESS"}
    jsonl = page.locator("#export-jsonl").get_attribute("href")
    assert "format=jsonl" in jsonl and marker in jsonl


def test_failures_page_groups_real_failures_and_links_to_them(ui: UI, page: Any) -> None:
    bad_add = ui.send("tests.add", "text", 1)  # TypeError in the worker
    fails = [ui.send("tests.fail", f"grouped {i}") for i in range(2)]
    ui.wait_state(bad_add, "FAILURE")
    for t in fails:
        ui.wait_state(t, "FAILURE")
    stored(ui, 1, state="FAILURE", taskname="tests.add")
    page.goto(f"{ui.url}/failures")
    typeerror = page.locator('#failures tr[data-group="tests.add|TypeError"]')
    taskerror = page.locator('#failures tr[data-group="tests.fail|TaskError"]')
    typeerror.wait_for()
    assert typeerror.locator("td.num").inner_text() == "1"
    assert int(taskerror.locator("td.num").inner_text()) >= 2
    assert typeerror.locator("svg.spark rect.col").count() == 1
    assert "can only concatenate" in typeerror.inner_text()
    typeerror.locator("a.tasks-link").click()
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{bad_add}"]')
    uuids = page.locator("#tasks tbody tr").evaluate_all("rows => rows.map(r => r.dataset.uuid)")
    assert uuids == [bad_add]
    assert page.locator("#filters select[name=state]").input_value() == "FAILURE"


def test_purge_empties_the_queue_and_says_how_many(ui: UI, page: Any, w3: CeleryWorker) -> None:
    app = ui.broker.app
    with ui.api() as c:
        blocker = c.post("/api/task/send-task/tests.sleep",
                         json={"args": [3], "queue": PURGE_QUEUE}).json()["task-id"]
        ui.wait_state(blocker, "STARTED")
        waiting = [c.post("/api/task/send-task/tests.echo",
                          json={"args": [i], "queue": PURGE_QUEUE}).json()["task-id"]
                   for i in range(5)]
    # One may be held by the worker already (prefetch); the rest wait in the queue.
    wait_for(lambda: queue_lengths(app, [PURGE_QUEUE])[PURGE_QUEUE] >= 4, 10, 0.1,
             "tasks waiting in the queue")
    before = queue_lengths(app, [PURGE_QUEUE])[PURGE_QUEUE]
    page.goto(f"{ui.url}/broker")
    page.click(f'button[data-post$="/api/celeriac/queues/{PURGE_QUEUE}/purge"]')
    page.wait_for_selector("#out-purge.ok")
    assert page.locator("#out-purge").inner_text() == (
        f"Purged {before} messages from '{PURGE_QUEUE}'")
    assert queue_lengths(app, [PURGE_QUEUE])[PURGE_QUEUE] == 0
    ui.wait_state(blocker, "SUCCESS", timeout=20)
    time.sleep(1.5)
    never = [t for t in waiting if (ui.task(t) or {}).get("state") == "PENDING"]
    assert len(never) == before  # the purged ones never ran
    page.wait_for_selector(f'[data-queue="{PURGE_QUEUE}"]:text-is("0")')


def test_history_and_task_type_charts_draw_the_stored_tasks(ui: UI, page: Any) -> None:
    for i in range(3):
        ui.wait_state(ui.send("tests.add", i, 1), "SUCCESS")
    ui.wait_state(ui.send("tests.fail", "chart"), "FAILURE")
    stored(ui, 1, search="chart", state="FAILURE")
    page.goto(ui.url + "/")
    history = page.locator("#history")
    assert history.get_attribute("data-window") == "1h"
    assert history.locator("svg.chart.bars rect.col.ok").count() >= 1
    assert history.locator("svg.chart.bars rect.col.fail").count() >= 1
    assert history.locator("svg.chart.lines .fail").count() >= 1  # the failure rate
    page.click("#history a:text-is('15m')")
    page.wait_for_selector('#history[data-window="15m"] svg.chart.bars rect.col.ok')
    page.click("#history a:has-text('per task type')")
    card = page.locator('.type-card[data-type="tests.add"]')
    card.wait_for()
    assert card.locator("svg.chart.bars rect.col.ok").count() >= 1
    assert card.locator("svg.chart.lines").nth(1).locator(".p50, .p90, .p99").count() >= 3
    assert "runtime p50" in card.inner_text()
    assert page.locator('.type-card[data-type="tests.fail"] .fail').count() >= 1


def test_the_dashboard_history_follows_the_store(ui: UI, page: Any) -> None:
    page.goto(ui.url + "/?window=15m")
    legend = page.locator("#history .legend").first
    before = int(legend.inner_text().split("succeeded ")[1].split()[0])
    for i in range(2):
        ui.wait_state(ui.send("tests.add", i, 2), "SUCCESS")
    # Redrawn from the store every 15 s, without a reload.
    page.evaluate("window.__same_document = true")
    page.wait_for_function(
        "n => Number(document.querySelector('#history .legend').textContent"
        ".split('succeeded ')[1].split(' ')[0]) >= n", arg=before + 2, timeout=40_000)
    assert page.evaluate("window.__same_document") is True
    assert page.locator("#history").get_attribute("data-window") == "15m"


def test_the_dashboard_draws_queue_lengths_over_time(ui: UI, page: Any) -> None:
    idle = "ui-nobody-consumes"
    page.goto(ui.url + "/?window=15m")
    page.evaluate("window.__same_document = true")
    with ui.api() as c:
        for i in range(5):
            r = c.post("/api/task/send-task/tests.add", json={"args": [i, 1], "queue": idle})
            assert r.status_code == 200, r.text
    # Sampled every 10 s, the section redrawn every 15 s, without a reload.
    page.wait_for_function(
        "q => Number(document.querySelector(`#queue-history [data-queue-peak='${q}']`)"
        "?.dataset.peak) >= 5", arg=idle, timeout=45_000)
    assert page.evaluate("window.__same_document") is True
    section = page.locator("#queue-history")
    assert section.get_attribute("data-window") == "15m"
    n = int(section.locator(f'[data-queue-peak="{idle}"]').get_attribute("data-peak") or 0)
    assert n == 5
    # The queue has a colour of its own and its line (or a lone dot) is drawn in it.
    key = section.locator(f'[data-queue-peak="{idle}"]').evaluate(
        "el => el.previousElementSibling.className")
    cls = key.split()[-1]
    assert cls.startswith("q")
    assert section.locator(f"svg.chart.lines polyline.{cls}, svg.chart.lines circle.{cls}"
                           ).count() >= 1
    page.click("#history a:text-is('24h')")
    page.wait_for_selector('#queue-history[data-window="24h"]')
    assert page.locator(f'#queue-history [data-queue-peak="{idle}"]').get_attribute(
        "data-peak") == "5"
