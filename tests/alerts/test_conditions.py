"""Conditions of tasks and queues for real: a celeriac process with an alerts file, one real
worker shared by the module, and an HTTP receiver started here that must get exactly one
firing and one resolution."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.alerts.live import api, episode, settle_then_count, start
from tests.alerts.receiver import Receiver, of
from tests.fixtures import BrokerInfo, CeleryWorker, MonitorFactory, WorkerFactory, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def shared(redis_broker: BrokerInfo, module_celery_worker: WorkerFactory) -> CeleryWorker:
    return module_celery_worker(redis_broker, hostname="shared@%h", concurrency=4)


def test_failure_rate(
    redis_broker: BrokerInfo, shared: CeleryWorker, celeriac_server: MonitorFactory,
    receiver: Callable[..., Receiver], tmp_path: Path,
) -> None:
    r = receiver()
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
    # It fires as soon as min_tasks have failed: the fourth may or may not have finished yet.
    assert fired["value"] == 1.0
    assert re.match(r"([34]) of \1 tests\.fail tasks failed in the last 3s", fired["summary"])
    assert resolved["alert_id"] == fired["alert_id"]
    assert resolved["resolved_at"] >= fired["fired_at"] + 2.0  # once failures left the window
    assert settle_then_count(r, "task tests.fail") == (1, 1)
    assert not [b for b in r.accepted("/json") if b["subject"] == "task tests.add"]
    slack = r.accepted("/slack")
    assert [list(b) for b in slack] == [["text"], ["text"]]
    assert slack[0]["text"].startswith(f"[FIRING] failing: {fired['summary']}")
    assert slack[1]["text"].startswith("[RESOLVED] failing:")
    state = api(monitor)
    assert (state["fired"], state["resolved"], state["firing"]) == (1, 1, [])
    assert [(w["webhook"], w["delivered"], w["failed"]) for w in state["webhooks"]] == [
        ("json", 2, 0), ("slack", 2, 0)]


def test_queue_length(
    redis_broker: BrokerInfo, shared: CeleryWorker, celeriac_server: MonitorFactory,
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

[[rule]]
name = "any backlog"
kind = "queue_length"
above = 1000
""")
    for i in range(3):
        redis_broker.tasks.add.apply_async((i, i), queue="nobody-consumes")
    fired = r.wait(lambda r: of(r.accepted("/json"), "firing", "queue nobody-consumes"), 15,
                   "the backlog to fire")
    assert fired[0]["value"] == 3 and fired[0]["fired_at"] - fired[0]["since"] >= 1.0
    state = api(monitor)
    assert [a["subject"] for a in state["firing"]] == ["queue nobody-consumes"]
    # the rule without queues watches those the workers consume (asked of them)
    assert state["queue_lengths"] == {"celery": 0, "nobody-consumes": 3}
    # the worker starts consuming the queue (remote control) and drains it
    control = redis_broker.app.control
    replies = control.add_consumer("nobody-consumes", destination=[shared.hostname],
                                   reply=True, timeout=5)
    assert replies and "ok" in replies[0][shared.hostname]
    try:
        (_,), (resolved,) = episode(r, "queue nobody-consumes", timeout=20)
        assert resolved["value"] <= 2
        assert settle_then_count(r, "queue nobody-consumes") == (1, 1)
    finally:
        control.cancel_consumer("nobody-consumes", destination=[shared.hostname], reply=True,
                                timeout=5)


def test_long_running_task(
    redis_broker: BrokerInfo, shared: CeleryWorker, celeriac_server: MonitorFactory,
    receiver: Callable[..., Receiver], tmp_path: Path,
) -> None:
    r = receiver()
    monitor = start(celeriac_server, redis_broker, tmp_path, r, rules="""
[[rule]]
name = "stuck"
kind = "long_running_task"
task = "tests.sleep"
above = "1.5s"
""")
    wait_for(lambda: monitor.client.get("/api/workers?status=true").json().get(
        shared.hostname), 15, 0.1, "the worker to be seen")
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
