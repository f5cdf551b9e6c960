"""The cluster switcher and the overview in a real Chromium: one celeriac under a prefix
watching two real Redis brokers (two databases of the session's redis-server)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures import BrokerInfo, MonitorProcess, wait_for
from tests.fixtures.brokers import RedisServer
from tests.fixtures.monitors import MonitorFactory
from tests.web.conftest import PREFIX


@pytest.fixture(scope="module")
def two(
    redis_broker: BrokerInfo, redis_server: RedisServer, module_celeriac_server: MonitorFactory
) -> MonitorProcess:
    monitor = module_celeriac_server(
        redis_broker, "--url-prefix", PREFIX, "--default-cluster", "main",
        "--cluster", f"second={redis_server.new_url()}", wait=False,
    )

    def healthy() -> bool:
        if not monitor.alive():
            pytest.fail(monitor.process.describe_death())
        return monitor.client.get(f"{PREFIX}/healthcheck", timeout=2).text == "OK"

    wait_for(healthy, 30, 0.05, "celeriac to answer", ignore=(httpx.TransportError,))
    return monitor


def test_switching_clusters_keeps_the_page_and_the_prefix(two: MonitorProcess, page: Any) -> None:
    page.goto(f"{two.url}{PREFIX}/tasks")
    switcher = page.locator("#cluster-switcher")
    assert switcher.locator("summary b").inner_text() == "main"
    switcher.locator("summary").click()
    switcher.get_by_role("link", name="second").click()
    page.wait_for_url(f"{two.url}{PREFIX}/clusters/second/tasks")
    assert page.locator("#cluster-switcher summary b").inner_text() == "second"
    # The navigation stays within the cluster; the live stream is its own.
    page.locator("header nav").get_by_role("link", name="Dashboard").click()
    page.wait_for_url(f"{two.url}{PREFIX}/clusters/second/")
    page.wait_for_selector("#live.on")
    rows = page.locator("#clusters table.clusters tbody tr")
    assert rows.count() == 2
    assert "(this one)" in rows.nth(1).inner_text()
    rows.nth(0).get_by_role("link", name="main").click()
    page.wait_for_url(f"{two.url}{PREFIX}/")


def test_one_cluster_has_no_switcher(celeriac_server: MonitorFactory, redis_broker: BrokerInfo,
                                     page: Any) -> None:
    # (page last: it closes, with its live stream, before the server stops)
    single = celeriac_server(redis_broker)
    page.goto(f"{single.url}/")
    page.wait_for_selector("#live.on")
    assert page.locator("#cluster-switcher").count() == 0
    assert page.locator("#clusters").count() == 0
