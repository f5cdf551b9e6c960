"""The UI under test: a real celeriac (under a URL prefix) with two real workers, driven by a
real headless Chromium through Playwright.

Chromium is Debian's (``/usr/bin/chromium``); Playwright only drives it, so nothing is
downloaded. The browser tests are skipped, saying why, when that browser is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.fixtures import BrokerInfo, CeleryWorker, MonitorProcess, WorkerFactory, wait_for
from tests.fixtures.monitors import MonitorFactory

CHROMIUM = os.environ.get("CELERIAC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PREFIX = "/monitor"


@dataclass
class UI:
    """celeriac under ``PREFIX`` with workers ``w1`` and ``w2`` on one Redis broker."""

    monitor: MonitorProcess
    broker: BrokerInfo
    workers: list[CeleryWorker]

    @property
    def url(self) -> str:
        return self.monitor.url + PREFIX

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def send(self, name: str, *args: Any, **kwargs: Any) -> str:
        """Send a task through celeriac's own API; returns its id."""
        with self.api() as c:
            r = c.post(f"/api/task/send-task/{name}", json={"args": list(args), "kwargs": kwargs})
        r.raise_for_status()
        return str(r.json()["task-id"])

    def task(self, task_id: str) -> dict[str, Any] | None:
        with self.api() as c:
            r = c.get(f"/api/task/info/{task_id}")
        return r.json() if r.status_code == 200 else None

    def wait_state(self, task_id: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            info = self.task(task_id)
            return info if info and info["state"] == state else None

        result: dict[str, Any] = wait_for(reached, timeout, 0.1, f"task {task_id} in {state}")
        return result


@pytest.fixture(scope="module")
def ui(
    redis_broker: BrokerInfo,
    module_celery_worker: WorkerFactory,
    module_celeriac_server: MonitorFactory,
) -> UI:
    workers = [
        module_celery_worker(redis_broker, hostname="w1@%h", concurrency=1),
        module_celery_worker(redis_broker, hostname="w2@%h", concurrency=1),
    ]
    monitor = module_celeriac_server(redis_broker, "--url-prefix", PREFIX, wait=False)

    def healthy() -> bool:
        if not monitor.alive():
            pytest.fail(monitor.process.describe_death())
        return monitor.client.get(f"{PREFIX}/healthcheck", timeout=2).text == "OK"

    wait_for(healthy, 30, 0.05, "celeriac to answer under its prefix",
             ignore=(httpx.TransportError,))
    ui = UI(monitor, redis_broker, workers)

    def both_online() -> bool:
        with ui.api() as c:
            status = c.get("/api/workers", params={"status": "true"}).json()
        return all(status.get(w.hostname) for w in workers)

    wait_for(both_online, 20, 0.1, "celeriac to see both workers online")
    return ui


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Per module, not per session: Playwright's sync API marks an asyncio loop as running on
    # the main thread for as long as it is open, and a later test of another directory that
    # calls asyncio.run() (tests/alerts, run after tests/web) would fail.
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium): no browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def bad_console(message: Any) -> bool:
    """An error in the console, except an API refusal the page itself shows to the user."""
    if message.type != "error":
        return False
    return not re.search(r"Failed to load resource: .* status of (400|403|504)", message.text)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page that accepts every confirm() and fails the test on any script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    p = context.new_page()
    p.set_default_timeout(15_000)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda m: errors.append(m.text) if bad_console(m) else None)
    p.on("dialog", lambda d: d.accept())
    yield p
    context.close()
    assert not errors, f"errors in the page: {errors}"
