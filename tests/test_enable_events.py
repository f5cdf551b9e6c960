"""Flower's --enable_events: a real worker started without -E, on Redis and RabbitMQ.

Without the ``enable_events`` broadcast such a worker sends heartbeats but no task events, so
celeriac lists the worker and never sees its tasks finish; with it (the default) the tasks show
with their final state.
"""

from __future__ import annotations

import time
from typing import Any

from tests.fixtures import BrokerInfo, MonitorFactory, WorkerFactory
from tests.fixtures.monitors import MonitorProcess
from tests.fixtures.processes import wait_for


def task_state(m: MonitorProcess, task_id: str) -> str | None:
    r = m.client.get("/api/tasks")
    assert r.status_code == 200, r.text
    task: dict[str, Any] | None = r.json().get(task_id)
    return None if task is None else task.get("state")


def worker_listed(m: MonitorProcess, hostname: str) -> bool:
    r = m.client.get("/api/workers", params={"status": "true"})
    return r.status_code == 200 and r.json().get(hostname) is True


def test_worker_without_events(
    broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory
) -> None:
    worker = celery_worker(broker, hostname="quiet@%h", events=False, concurrency=1)

    # --no-enable-events: the worker's heartbeats arrive, its task events never do.
    off = celeriac_server(broker, "--no-enable-events")
    wait_for(lambda: worker_listed(off, worker.hostname), 20, 0.1, "the worker's heartbeat")
    quiet = broker.tasks.add.delay(1, 2)
    assert quiet.get(timeout=20) == 3  # it ran
    time.sleep(1.5)  # long enough for a task-succeeded event to be ingested, had one been sent
    assert task_state(off, quiet.id) != "SUCCESS"
    assert "enabled by remote" not in worker.log_text()
    off.stop()

    # The default, as Flower: the broadcast turns the worker's task events on.
    on = celeriac_server(broker)
    wait_for(lambda: "enabled by remote" in worker.log_text(), 20, 0.1,
             "the worker to log that its events were enabled")
    seen = broker.tasks.add.delay(2, 3)
    assert seen.get(timeout=20) == 5
    wait_for(lambda: task_state(on, seen.id) == "SUCCESS", 20, 0.1,
             "the task's final state in /api/tasks")
    task = on.client.get(f"/api/task/info/{seen.id}").json()
    assert task["worker"] == worker.hostname
    assert task["result"] == "5"
