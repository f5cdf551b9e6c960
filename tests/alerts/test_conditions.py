"""Each condition for real: a celeriac process with an alerts file, real workers driven into the
condition, and an HTTP receiver started here that must get one firing and one resolution."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.alerts.receiver import Receiver, of
from tests.fixtures import BrokerInfo, MonitorFactory, MonitorProcess, WorkerFactory, wait_for

INTERVAL = "0.3s"


def start(
    celeriac_server: MonitorFactory, broker: BrokerInfo, tmp_path: Path, receiver: Receiver,
    rules: str, slack: bool = False,
) -> MonitorProcess:
    hooks = f'[[webhook]]\nname = "json"\nurl = "{receiver.url("/json")}"\n'
    if slack:
        hooks += f'[[webhook]]\nname = "slack"\nurl = "{receiver.url("/slack")}"\n'
        hooks += 'format = "slack"\n'
    path = tmp_path / "alerts.toml"
    path.write_text(f'interval = "{INTERVAL}"\n{hooks}{rules}')
    return celeriac_server(broker, "--alerts", str(path))


def api(monitor: MonitorProcess) -> dict[str, Any]:
    response = monitor.client.get("/api/celeriac/alerts")
    assert response.status_code == 200
    return response.json()


def episode(receiver: Receiver, subject: str, timeout: float) -> tuple[dict, dict]:
    """Wait for the firing and then the resolution of ``subject``; exactly one of each."""
    fired = receiver.wait(lambda r: of(r.accepted("/json"), "firing", subject), timeout,
                          f"a firing for {subject}")
    resolved = receiver.wait(lambda r: of(r.accepted("/json"), "resolved", subject), timeout,
                             f"the resolution of {subject}")
    return fired, resolved


def settle_then_count(receiver: Receiver, subject: str) -> tuple[int, int]:
    time.sleep(1.0)  # a few more rounds: nothing more may arrive
    bodies = receiver.accepted("/json")
    return len(of(bodies, "firing", subject)), len(of(bodies, "resolved", subject))


def test_failure_rate(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    receiver: Callable[..., Receiver], tmp_path: Path,
) -> None:
    r = receiver()
    celery_worker(redis_broker, hostname="rate@%h", concurrency=4)
    monitor = start(celeriac_server, redis_broker, tmp_path, r, slack=True, rules="""
[[rule]]
name = "failing"
kind = "failure_rate"
task = "tests.*"
above = 0.5
window = "3s"
min_tasks = 3
""")
    tasks = redis_broker.tasks
    results = [tasks.fail.delay("rate test") for _ in range(4)]
    results += [tasks.add.delay(1, 2) for _ in range(4)]
    for result in results:
        result.get(timeout=20, propagate=False)
    (fired,), (resolved,) = episode(r, "task tests.fail", timeout=20)
    assert fired["rule"] == "failing" and fired["kind"] == "failure_rate"
    assert fired["value"] == 1.0 and "4 of 4 tests.fail tasks failed" in fired["summary"]
    assert resolved["alert_id"] == fired["alert_id"]
    assert resolved["resolved_at"] >= fired["fired_at"] + 2.0  # once failures left the window
    assert settle_then_count(r, "task tests.fail") == (1, 1)
    assert not [b for b in r.accepted("/json") if b["subject"] == "task tests.add"]
    slack = r.accepted("/slack")
    assert [list(b) for b in slack] == [["text"], ["text"]]
    assert slack[0]["text"].startswith("[FIRING] failing: 4 of 4 tests.fail tasks failed")
    assert slack[1]["text"].startswith("[RESOLVED] failing:")
    state = api(monitor)
    assert (state["fired"], state["resolved"], state["firing"]) == (1, 1, [])
    assert [(w["webhook"], w["delivered"], w["failed"]) for w in state["webhooks"]] == [
        ("json", 2, 0), ("slack", 2, 0)]


def test_queue_length(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    receiver: Callable[..., Receiver], tmp_path: Path,
) -> None:
    r = receiver()
    monitor = start(celeriac_server, redis_broker, tmp_path, r, rules="""
[[rule]]
name = "backlog"
kind = "queue_length"
queue = "nobody-consumes"
above = 2
for = "1s"
""")
    for i in range(3):
        redis_broker.tasks.add.apply_async((i, i), queue="nobody-consumes")
    fired = r.wait(lambda r: of(r.accepted("/json"), "firing", "queue nobody-consumes"), 15,
                   "the backlog to fire")
    assert fired[0]["value"] == 3 and fired[0]["fired_at"] - fired[0]["since"] >= 1.0
    assert api(monitor)["firing"][0]["subject"] == "queue nobody-consumes"
    celery_worker(redis_broker, hostname="drain@%h", queues=["nobody-consumes"])
    (_,), (resolved,) = episode(r, "queue nobody-consumes", timeout=20)
    assert resolved["value"] <= 2
    assert settle_then_count(r, "queue nobody-consumes") == (1, 1)


def test_worker_offline(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    receiver: Callable[..., Receiver], tmp_path: Path,
) -> None:
    r = receiver()
    monitor = start(celeriac_server, redis_broker, tmp_path, r, rules="""
[[rule]]
name = "worker down"
kind = "worker_offline"
worker = "flaky@*"
for = "1s"
""")
    worker = celery_worker(redis_broker, hostname="flaky@%h")
    other = celery_worker(redis_broker, hostname="steady@%h")
    subject = f"worker {worker.hostname}"
    wait_for(lambda: api(monitor)["evaluations"] > 2 and monitor.client.get(
        "/api/workers?status=true").json().get(worker.hostname), 15, 0.1, "flaky to be seen")
    stopped_at = time.time()
    worker.stop()
    fired = r.wait(lambda r: of(r.accepted("/json"), "firing", subject), 20, "worker down")
    assert fired[0]["fired_at"] >= stopped_at + 1.0
    celery_worker(redis_broker, hostname="flaky@%h")
    (_,), (resolved,) = episode(r, subject, timeout=20)
    assert "is online" in resolved["summary"]
    assert settle_then_count(r, subject) == (1, 1)
    assert not of(r.accepted("/json"), "firing", f"worker {other.hostname}")


def test_long_running_task(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    receiver: Callable[..., Receiver], tmp_path: Path,
) -> None:
    r = receiver()
    celery_worker(redis_broker, hostname="sleepy@%h", concurrency=2)
    start(celeriac_server, redis_broker, tmp_path, r, rules="""
[[rule]]
name = "stuck"
kind = "long_running_task"
task = "tests.sleep"
above = "1.5s"
""")
    quick = redis_broker.tasks.sleep.delay(0.2)
    slow = redis_broker.tasks.sleep.delay(4)
    subject = f"task tests.sleep [{slow.id}]"
    (fired,), (resolved,) = episode(r, subject, timeout=20)
    assert fired["key"] == slow.id and fired["value"] >= 1.5
    assert slow.get(timeout=10) == 4
    assert resolved["resolved_at"] - fired["since"] >= 3.5  # resolved once it finished
    assert settle_then_count(r, subject) == (1, 1)
    assert quick.get(timeout=5) == 0.2
    assert {b["key"] for b in r.accepted("/json")} == {slow.id}


def test_no_events(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
    receiver: Callable[..., Receiver], tmp_path: Path,
) -> None:
    r = receiver()
    worker = celery_worker(redis_broker, hostname="only@%h")
    monitor = start(celeriac_server, redis_broker, tmp_path, r, rules="""
[[rule]]
name = "silence"
kind = "no_events"
for = "3s"
""")
    wait_for(lambda: api(monitor)["evaluations"] > 5, 10, 0.1, "a few evaluations")
    time.sleep(1.0)
    assert r.accepted() == []  # heartbeats every 2 s keep it quiet
    stopped_at = time.time()  # its last events (worker-offline) come after this
    worker.stop()
    fired = r.wait(lambda r: of(r.accepted("/json"), "firing", "event stream"), 20, "silence")
    assert fired[0]["fired_at"] >= stopped_at + 2.5
    assert fired[0]["summary"].startswith("no events for")
    celery_worker(redis_broker, hostname="only@%h")
    (_,), (resolved,) = episode(r, "event stream", timeout=20)
    assert resolved["summary"] == "events are arriving"
    assert settle_then_count(r, "event stream") == (1, 1)


@pytest.fixture(autouse=True)
def _quick(request: pytest.FixtureRequest) -> None:
    request.node.add_marker(pytest.mark.timeout(90))
