"""Conditions of absence for real: a worker that stops, and a cluster that falls silent. A
module of its own, so no other test's worker sends events on its broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.alerts.live import api, episode, settle_then_count, start
from tests.alerts.receiver import Receiver, of
from tests.fixtures import BrokerInfo, MonitorFactory, WorkerFactory, wait_for

pytestmark = pytest.mark.timeout(90)


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
    started = time.time()
    wait_for(lambda: api(monitor)["evaluations"] > 3, 10, 0.1, "a few evaluations")
    time.sleep(max(0.0, started + 3.5 - time.time()))
    assert r.accepted() == []  # heartbeats every 2 s keep it quiet
    stopped_at = time.time()  # its last events (worker-offline) come after this
    worker.stop()
    fired = r.wait(lambda r: of(r.accepted("/json"), "firing", "event stream"), 20, "silence")
    assert fired[0]["fired_at"] >= stopped_at + 2.5
    assert fired[0]["summary"].startswith("no events for")
    redis_broker.tasks.add.delay(1, 1)  # a client's task-sent event breaks the silence
    (_,), (resolved,) = episode(r, "event stream", timeout=20)
    assert resolved["summary"] == "events are arriving"
    assert settle_then_count(r, "event stream") == (1, 1)
