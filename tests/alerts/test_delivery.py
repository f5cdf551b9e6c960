"""Delivery for real: retries until a failing receiver takes the notification, failures on
record (API, page, log) without the webhook's secret, and a bad file refused at start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.alerts.live import api
from tests.alerts.receiver import Receiver, of
from tests.fixtures import BrokerInfo, MonitorFactory, free_port, wait_for
from tests.fixtures.monitors import clean_environ

pytestmark = pytest.mark.timeout(90)

SILENCE = """
[[rule]]
name = "silence"
kind = "no_events"
for = "1s"
"""


def test_a_failing_receiver_gets_the_notification_after_retries(
    redis_broker: BrokerInfo, celeriac_server: MonitorFactory,
    receiver: Callable[..., Receiver], tmp_path: Path,
) -> None:
    r = receiver(fail_first=2, fail_status=503)
    path = tmp_path / "alerts.toml"
    path.write_text(f"""interval = "0.3s"
[[webhook]]
name = "flaky"
url = "{r.url('/json')}"
retries = 4
backoff = "0.2s"
headers = {{ Authorization = "Bearer xyz" }}
{SILENCE}""")
    monitor = celeriac_server(redis_broker, "--alerts", str(path))  # no workers: silence
    fired = r.wait(lambda r: of(r.accepted(), "firing"), 20, "the firing, after retries")
    attempts = [p for p in r.posts if p["body"]["alert_id"] == fired[0]["alert_id"]]
    assert [p["refused"] for p in attempts] == [True, True, False]
    assert attempts[2]["at"] - attempts[0]["at"] >= 0.2 + 0.4  # backoff doubled
    assert attempts[0]["body"] == attempts[2]["body"]  # the same body, every attempt
    assert attempts[2]["headers"]["Authorization"] == "Bearer xyz"
    assert attempts[2]["headers"]["Content-Type"] == "application/json"
    (hook,) = api(monitor)["webhooks"]
    assert (hook["delivered"], hook["retries"], hook["failed"]) == (1, 2, 0)
    assert hook["last_result"] == "delivered"
    assert api(monitor)["failures"] == []


def test_delivery_failures_are_visible_and_keep_the_secret(
    redis_broker: BrokerInfo, celeriac_server: MonitorFactory,
    receiver: Callable[..., Receiver], tmp_path: Path,
) -> None:
    live = receiver()
    refusing = receiver(fail_first=100, fail_status=400)
    dead_port = free_port()  # nobody listens there
    secret = "T0001/B0002/SECRET-TOKEN"
    path = tmp_path / "alerts.toml"
    path.write_text(f"""interval = "0.3s"
[[webhook]]
name = "dead"
url = "http://127.0.0.1:{dead_port}/services/{secret}"
format = "slack"
retries = 2
backoff = "0.1s"
timeout = "1s"

[[webhook]]
name = "refusing"
url = "{refusing.url('/hook?token=' + secret)}"
retries = 3
backoff = "0.1s"

[[webhook]]
name = "live"
url = "{live.url('/json')}"
{SILENCE}""")
    monitor = celeriac_server(redis_broker, "--alerts", str(path))
    live.wait(lambda r: of(r.accepted(), "firing"), 20, "the live webhook's notification")

    def both_failed() -> dict | None:
        state = api(monitor)
        hooks = {w["webhook"]: w for w in state["webhooks"]}
        return state if hooks["dead"]["failed"] and hooks["refusing"]["failed"] else None

    state = wait_for(both_failed, 20, 0.1, "both bad webhooks to give up")
    hooks = {w["webhook"]: w for w in state["webhooks"]}
    assert hooks["dead"]["url"] == f"http://127.0.0.1:{dead_port}/***"
    assert (hooks["dead"]["retries"], hooks["dead"]["last_result"]) == (2, "failed")
    assert "ConnectError" in hooks["dead"]["last_error"]
    assert (hooks["refusing"]["retries"], hooks["refusing"]["last_error"]) == (0, "HTTP 400")
    assert len(refusing.posts) == 1  # a 4xx is not retried
    assert (hooks["live"]["delivered"], hooks["live"]["failed"]) == (1, 0)
    failures = {f["webhook"]: f for f in state["failures"]}
    assert failures["dead"]["attempts"] == 3 and failures["dead"]["rule"] == "silence"
    assert failures["dead"]["status"] == "firing"
    assert failures["refusing"]["attempts"] == 1

    page = monitor.client.get("/alerts")
    assert page.status_code == 200
    assert 'id="n-delivery-failures">2<' in page.text
    assert "ConnectError" in page.text and "HTTP 400" in page.text
    assert "no events for" in page.text  # the firing alert
    for text in (page.text, monitor.client.get("/api/celeriac/alerts").text,
                 monitor.log_text()):
        assert "SECRET-TOKEN" not in text and "T0001" not in text
    log = monitor.log_text()
    assert "webhook 'dead'" in log and "gave up on the firing of silence" in log


def test_a_bad_file_stops_celeriac_at_start(redis_broker: BrokerInfo, tmp_path: Path) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text('[[webhook]]\nname = "x"\nurl = "http://h/tok"\n'
                    '[[rule]]\nname = "r"\nkind = "queue_length"\nabove = "many"\n')
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "--broker", redis_broker.url, "--port",
         str(free_port()), "--alerts", str(path)],
        capture_output=True, text=True, timeout=30, env=clean_environ(), check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"celeriac: invalid setting: alerts: {path}: rule 1 ('r'): above must be a number")
    missing = subprocess.run(
        [sys.executable, "-m", "celeriac", "--broker", redis_broker.url],
        capture_output=True, text=True, timeout=30, check=False,
        env={**clean_environ(), "CELERIAC_ALERTS": str(tmp_path / "none.toml")},
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("celeriac: invalid setting: alerts: cannot read")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_without_a_file(redis_broker: BrokerInfo, celeriac_server: MonitorFactory) -> None:
    monitor = celeriac_server(redis_broker)
    state = api(monitor)
    assert (state["enabled"], state["rules"], state["webhooks"]) == (False, [], [])
    page = monitor.client.get("/alerts")
    assert page.status_code == 200 and "--alerts FILE" in page.text
    assert 'href="/alerts"' in monitor.client.get("/").text
    spec = monitor.client.get("/api/openapi.json").json()
    assert "/api/celeriac/alerts" in spec["paths"]
