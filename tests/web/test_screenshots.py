"""A screenshot of every page, from a cluster doing some work.

They go to a temporary directory, or to the directory in ``CELERIAC_SCREENSHOTS`` (the README's
come from ``CELERIAC_SCREENSHOTS=docs/screenshots pytest tests/web/test_screenshots.py``).
Every page is also checked to draw without a script error at a phone's width.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.web.conftest import UI

pytestmark = pytest.mark.timeout(170)

DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def workload(ui: UI, seconds: float, stop: threading.Event) -> None:
    """A few tasks a second: quick ones, slow ones, failures, and some for a queue no worker
    consumes yet, as a real cluster has."""
    deadline = time.monotonic() + seconds
    rng = random.Random(7)
    i = 0
    while time.monotonic() < deadline and not stop.is_set():
        i += 1
        roll = rng.random()
        if roll < 0.55:
            ui.send("tests.add", i, rng.randint(1, 99))
        elif roll < 0.7:
            ui.send("tests.fail", f"invoice {1000 + i} has no customer")
        elif roll < 0.85:
            ui.send("tests.sleep", round(rng.uniform(0.1, 1.5), 2))
        elif roll < 0.95:
            ui.send("tests.echo", {"user": i, "plan": rng.choice(["free", "pro"])})
        else:  # a queue nobody consumes: its length grows on the dashboard's queue chart
            with ui.api() as c:
                c.post("/api/task/send-task/tests.add", json={"args": [i, 1], "queue": "reports"})
        time.sleep(rng.uniform(0.05, 0.35))


def test_screenshots(ui: UI, browser: Any, tmp_path: Path) -> None:
    out = Path(os.environ.get("CELERIAC_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    long_run = "CELERIAC_SCREENSHOTS" in os.environ
    errors: list[str] = []
    contexts: list[Any] = []

    def new_page(viewport: dict[str, int], scheme: str = "light") -> Any:
        ctx = browser.new_context(viewport=viewport, color_scheme=scheme)
        contexts.append(ctx)
        p = ctx.new_page()
        p.on("pageerror", lambda exc: errors.append(str(exc)))
        return p

    def shot(p: Any, path: str, name: str, settle: float = 1.5) -> None:
        p.goto(ui.url + path)
        p.wait_for_timeout(settle * 1000)
        p.screenshot(path=str(out / name), full_page=True)

    stop = threading.Event()
    load = threading.Thread(target=workload, args=(ui, 40 if long_run else 6, stop))
    load.start()
    try:
        dash = new_page(DESKTOP)
        dark = new_page(DESKTOP, "dark")
        dash.goto(ui.url + "/")
        dark.goto(ui.url + "/")
        load.join()  # both dashboards watch the whole run, so their charts have a history
        dash.wait_for_timeout(2500)
        dash.screenshot(path=str(out / "dashboard.png"), full_page=True)
        dark.screenshot(path=str(out / "dashboard-dark.png"), full_page=True)
        with ui.api() as c:
            failed = next(iter(c.get("/api/tasks", params={"state": "FAILURE"}).json()))
        p = new_page(DESKTOP)
        shot(p, "/tasks", "tasks.png")
        shot(p, f"/task/{failed}", "task-failed.png")
        shot(p, "/workers", "workers.png")
        shot(p, f"/worker/{ui.workers[0].hostname}", "worker.png")
        shot(p, "/broker", "broker.png")
        shot(p, "/failures", "failures.png")
        shot(p, "/types", "task-types.png")
        p.goto(ui.url + "/tasks?state=FAILURE")  # a dry run of "re-run all matching"
        p.click("#bulk-rerun")
        p.wait_for_selector("#bulk-summary:has-text('Dry run')")
        p.wait_for_timeout(500)
        p.screenshot(path=str(out / "tasks-bulk-rerun.png"), full_page=True)
        phone = new_page(PHONE)
        shot(phone, "/tasks", "tasks-phone.png")
        shot(phone, "/", "dashboard-phone.png")
        shot(dark, f"/task/{failed}", "task-failed-dark.png")
    finally:
        stop.set()
        load.join()
        for ctx in contexts:
            ctx.close()
    names = sorted(f.name for f in out.glob("*.png"))
    assert len(names) >= 13, names
    assert not errors, errors
