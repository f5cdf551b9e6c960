"""The pages in a real headless Chromium against a real celeriac and real workers."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.fixtures import wait_for
from tests.web.conftest import PREFIX, UI

pytestmark = pytest.mark.timeout(120)


def test_dashboard_shows_both_workers_and_every_url_has_the_prefix(ui: UI, page: Any) -> None:
    page.goto(ui.url + "/")
    rows = page.locator("#workers tbody tr[data-worker]")
    rows.first.wait_for()
    names = sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.worker)"))
    assert names == sorted(w.hostname for w in ui.workers)
    for row in rows.all():
        assert row.locator(".badge").inner_text() == "online"
    assert page.locator("#n-online").inner_text() == "2"
    # The stream connected (the dot turns green on its first message).
    page.wait_for_selector("#live.on")
    urls = page.evaluate(
        """() => [...document.querySelectorAll("a[href], script[src], link[href]")]
             .map(e => e.getAttribute("href") || e.getAttribute("src"))"""
    )
    own = [u for u in urls if not u.startswith("data:")]
    assert own and all(u.startswith(PREFIX + "/") for u in own), own


def test_a_task_sent_through_the_api_appears_without_a_reload(ui: UI, page: Any) -> None:
    page.goto(ui.url + "/tasks")
    page.wait_for_selector("#tasks tbody tr")
    page.evaluate("window.__same_document = true")
    task_id = ui.send("tests.add", 20, 22)
    row = page.locator(f'#tasks tbody tr[data-uuid="{task_id}"]')
    row.wait_for()
    # The row follows the task to its end state, live.
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{task_id}"][data-state="SUCCESS"]')
    assert "tests.add" in row.inner_text()
    assert page.evaluate("window.__same_document") is True


def test_the_state_filter_narrows_the_table(ui: UI, page: Any) -> None:
    ok = ui.send("tests.add", 1, 1)
    bad = ui.send("tests.fail", "filter me")
    ui.wait_state(ok, "SUCCESS")
    ui.wait_state(bad, "FAILURE")
    page.goto(ui.url + "/tasks")
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{ok}"]')
    page.select_option("#filters select[name=state]", "FAILURE")
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{ok}"]', state="detached")
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{bad}"]')
    states = page.locator("#tasks tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.state)"
    )
    assert states and set(states) == {"FAILURE"}
    assert "state=FAILURE" in page.url  # a filtered view is a bookmark
    page.reload()
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{bad}"]')
    assert page.locator("#filters select[name=state]").input_value() == "FAILURE"


def test_the_search_box_narrows_the_table(ui: UI, page: Any) -> None:
    marker = "needle7731"
    hit = ui.send("tests.echo", f"{marker} in a haystack")
    other = ui.send("tests.echo", "just hay")
    ui.wait_state(hit, "SUCCESS")
    ui.wait_state(other, "SUCCESS")
    with ui.api() as c:
        found = c.get("/api/tasks", params={"search": marker}).json()
    if other in found:
        pytest.skip("the store does not search yet (issue 3): nothing for the box to narrow")
    page.goto(ui.url + "/tasks")
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{other}"]')
    page.fill("#filters input[name=search]", marker)
    page.wait_for_selector(f'#tasks tbody tr[data-uuid="{other}"]', state="detached")
    uuids = page.locator("#tasks tbody tr").evaluate_all("rows => rows.map(r => r.dataset.uuid)")
    assert uuids == [hit]


def test_columns_can_be_hidden_and_the_time_range_filters(ui: UI, page: Any) -> None:
    ui.wait_state(ui.send("tests.add", 5, 5), "SUCCESS")
    page.goto(ui.url + "/tasks")
    page.wait_for_selector("#tasks tbody tr[data-uuid]")
    page.click("details.columns summary")
    page.uncheck("#columns input[value=args]")
    assert page.locator('#tasks th[data-col="args"]').is_hidden()
    assert page.locator("#tasks tbody tr[data-uuid] td:nth-child(4)").first.is_hidden()
    page.reload()  # the choice is remembered
    page.wait_for_selector("#tasks tbody tr[data-uuid]")
    assert page.locator('#tasks th[data-col="args"]').is_hidden()
    page.fill("#filters input[name=received_end]", "2001-01-01T00:00")
    page.click("#filters button[type=submit]")
    page.wait_for_selector("#tasks tbody tr.empty")
    assert "received_end=2001-01-01+00%3A00" in page.url


def test_sorting_by_a_column_header(ui: UI, page: Any) -> None:
    for name in ("tests.mul", "tests.add"):
        ui.wait_state(ui.send(name, 2, 3), "SUCCESS")
    page.goto(ui.url + "/tasks?limit=100")
    page.wait_for_selector("#tasks tbody tr[data-uuid]")
    ordered = """(desc) => {
        const n = [...document.querySelectorAll("#tasks tbody tr td:first-child")]
            .map(td => td.textContent);
        return n.length > 1 && n.every((v, i) => i === 0 || (desc ? n[i - 1] >= v : n[i - 1] <= v))
            && n[0] !== n[n.length - 1];
    }"""
    page.click('#tasks th[data-col="name"]')
    page.wait_for_selector('#tasks th[data-col="name"][data-dir="asc"]')
    assert "sort_by=name" in page.url
    page.wait_for_function(ordered, arg=False)
    page.click('#tasks th[data-col="name"]')
    page.wait_for_selector('#tasks th[data-col="name"][data-dir="desc"]')
    assert "sort_by=-name" in page.url
    page.wait_for_function(ordered, arg=True)


def test_the_page_of_a_failed_task_shows_its_traceback(ui: UI, page: Any) -> None:
    message = "<b>not bold</b> & broken"
    task_id = ui.send("tests.fail", message)
    ui.wait_state(task_id, "FAILURE")
    page.goto(f"{ui.url}/task/{task_id}")
    traceback = page.locator("pre.traceback").inner_text()
    assert "Traceback (most recent call last)" in traceback
    assert "TaskError" in traceback
    assert message in traceback  # shown as text, never as markup
    assert page.locator("main b").count() == 0
    events = page.locator(".timeline .ev-name").all_inner_texts()
    assert events[0] in ("sent", "received") and events[-1] == "failed"
    assert page.locator(".title .badge").inner_text() == "FAILURE"


def test_re_run_sends_the_same_arguments_again(ui: UI, page: Any) -> None:
    task_id = ui.send("tests.add", 40, 2)
    ui.wait_state(task_id, "SUCCESS")
    page.goto(f"{ui.url}/task/{task_id}")
    page.click("button:has-text('Re-run')")  # confirm() is accepted by the fixture
    link = page.locator("#out-task a")
    link.wait_for()
    new_id = link.inner_text()
    assert new_id != task_id
    info = ui.wait_state(new_id, "SUCCESS")
    assert info["result"] == "42"
    link.click()
    page.wait_for_url(re.compile(re.escape(new_id)))
    assert page.locator(".title .badge").inner_text() == "SUCCESS"


def test_the_task_page_follows_its_task_live(ui: UI, page: Any) -> None:
    task_id = ui.send("tests.sleep", 2)
    page.goto(f"{ui.url}/task/{task_id}")
    page.wait_for_selector(".title .badge.state-SUCCESS", timeout=20_000)
    assert "succeeded" in page.locator(".timeline").inner_text()


def _processes(ui: UI, name: str) -> int:
    with ui.api() as c:
        r = c.get("/api/workers", params={"refresh": "true", "workername": name})
    return len(r.json()[name]["stats"]["pool"]["processes"])


def test_the_grow_button_grows_the_pool(ui: UI, page: Any) -> None:
    name = ui.workers[0].hostname
    before = _processes(ui, name)
    page.goto(f"{ui.url}/worker/{name}")
    assert int(page.locator("#processes").get_attribute("data-count")) == before
    page.evaluate(
        "window.__redraws = 0;"
        "document.addEventListener('celeriac:reloaded', () => window.__redraws++)"
    )
    page.click("form[data-post*='/pool/grow/'] button")
    page.wait_for_selector("#out-pool.ok")
    assert "Growing" in page.locator("#out-pool").inner_text()
    wait_for(lambda: _processes(ui, name) == before + 1, 30, 0.2, "the pool to grow",
             ignore=(httpx.TimeoutException,))
    # The page redraws itself after the reply, keeping the reply visible; the new process
    # may start after the last redraw on a busy machine, so look again to see it.
    page.wait_for_function("() => window.__redraws >= 2")
    assert "Growing" in page.locator("#out-pool").inner_text()
    page.reload()
    assert page.locator("#processes").get_attribute("data-count") == str(before + 1)
    page.click("form[data-post*='/pool/shrink/'] button")
    page.wait_for_selector("#out-pool.ok >> text=Shrinking")
    wait_for(lambda: _processes(ui, name) == before, 30, 0.2, "the pool to shrink back",
             ignore=(httpx.TimeoutException,))


def test_worker_controls_show_the_workers_reply(ui: UI, page: Any) -> None:
    name = ui.workers[1].hostname
    page.goto(f"{ui.url}/worker/{name}")
    page.select_option("form.limits select[name=task]", "tests.add")
    page.fill("form.limits input[name=ratelimit]", "100/m")
    page.click("form.limits button[value=rate]")
    page.wait_for_selector("#out-limits.ok >> text=rate limit set")
    page.fill("form.limits input[name=ratelimit]", "")
    page.click("form.limits button[value=rate]")  # an empty rate limit is refused by the API
    page.wait_for_selector("#out-limits.err")
    page.fill("form[data-post*='add-consumer'] input[name=queue]", "ui-extra")
    page.click("form[data-post*='add-consumer'] button")
    page.wait_for_selector("#out-queue.ok")
    page.wait_for_selector("td:text-is('ui-extra')")  # the page redrew with the new queue
    page.click("button[data-form='queue=ui-extra']")
    page.wait_for_selector("td:text-is('ui-extra')", state="detached")


def test_workers_and_broker_pages(ui: UI, page: Any) -> None:
    page.goto(ui.url + "/workers")
    for w in ui.workers:
        assert page.locator(f'a:text-is("{w.hostname}")').count() == 1
    # A client that sends task-sent events (as tests.apps.proj does) gives the time in queue.
    result = ui.broker.tasks.add.delay(2, 3)
    assert result.get(timeout=20) == 5
    ui.wait_state(result.id, "SUCCESS")
    page.goto(ui.url + "/broker")
    assert page.locator('[data-queue="celery"]').count() == 1
    row = page.locator("table.queues tr", has=page.locator('[data-queue="celery"]'))
    wait = row.locator(".wait").inner_text()
    assert re.fullmatch(r"p50 \d+(\.\d)? m?s, p95 \d+(\.\d)? m?s", wait), wait


def test_unknown_task_and_worker_pages_are_404(ui: UI) -> None:
    with ui.api() as c:
        assert c.get("/task/no-such-task").status_code == 404
        assert c.get("/worker/nobody@nowhere").status_code == 404
        r = c.get("/tasks")
        assert r.status_code == 200
        assert "default-src 'self'" in r.headers["content-security-policy"]
    with httpx.Client(base_url=ui.monitor.url) as c:
        assert c.get("/tasks").status_code == 404  # everything lives under the prefix
