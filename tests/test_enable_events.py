"""Flower's --enable_events: a real worker started without -E, on Redis and RabbitMQ.

Without the ``enable_events`` broadcast such a worker sends heartbeats but no task events, so
celeriac lists the worker and never sees its tasks finish; with it (the default) the tasks show
with their final state.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery

from celeriac.enable_events import EventsSwitch
from tests.fixtures import BrokerInfo, MonitorFactory, RedisServer, WorkerFactory
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


# The switch itself, on a real Redis ----------------------------------------------------------


def pidbox_messages(url: str) -> Any:
    """A subscription to the broadcasts of the control mailbox (a fanout over PUBLISH)."""
    client = redis.Redis.from_url(url)
    sub = client.pubsub()
    sub.psubscribe("*")
    confirmed = sub.get_message(timeout=5)  # subscribed before anything is sent
    assert confirmed is not None and confirmed["type"] == "psubscribe"
    return sub


def broadcasts(sub: Any, wait: float = 2.0) -> list[str]:
    """The methods of the control messages published while waiting."""
    got = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        message = sub.get_message(timeout=0.1)
        if (message is not None and message["type"] == "pmessage"
                and message["channel"].endswith(b"celery.pidbox")):
            envelope = json.loads(message["data"])
            body = json.loads(base64.b64decode(envelope["body"]))
            got.append(body["method"])
        elif got:
            break
    return got


def test_only_while_wanted_as_a_follower_does_not(redis_url: str) -> None:
    """A follower (``wanted`` false) sends nothing; once it leads, it broadcasts."""
    app = Celery("t", broker=redis_url, set_as_current=False)
    sub = pidbox_messages(redis_url)
    leading = False
    switch = EventsSwitch(app, wanted=lambda: leading, interval=0.05)
    switch.start()
    try:
        time.sleep(0.3)
        assert switch.sent == 0 and broadcasts(sub, 0.2) == []
        leading = True
        wait_for(lambda: switch.sent >= 2, 5, 0.02, "two broadcasts")
        assert "enable_events" in broadcasts(sub)
    finally:
        switch.close()
        sub.close()


def test_an_unreachable_broker_is_retried_and_reached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path)  # its port chosen, not started yet
    app = Celery("t", broker=server.url, set_as_current=False)
    switch = EventsSwitch(app, interval=60, label="later")
    caplog.set_level(logging.INFO, "celeriac")
    try:
        assert not switch.send()
        assert not switch.send()
        complaints = [r.getMessage() for r in caplog.records
                      if "cannot broadcast enable_events" in r.getMessage()]
        assert len(complaints) == 1, complaints  # once while it lasts
        assert "(cluster later)" in complaints[0]
        server.start()
        sub = pidbox_messages(server.url)
        # The next broadcasts get through (the first after an outage may be lost in the
        # app's producer pool: a later one arrives, as the thread sends every few seconds).
        wait_for(lambda: switch.send() and "enable_events" in broadcasts(sub, 0.5), 10, 0.1,
                 "a broadcast once the broker is up")
        assert "broker reached again" in caplog.text
        sub.close()
    finally:
        switch.close()
        server.stop()


@pytest.mark.parametrize("enabled", [True, False])
def test_every_watched_cluster_has_its_own(enabled: bool) -> None:
    from celeriac.clusters import Clusters
    from celeriac.settings import Settings

    flags: dict[str, Any] = {"broker": "redis://127.0.0.1:1/0", "db": "memory",
                             "clusters": ["other=amqp://guest@127.0.0.1:1//"]}
    if not enabled:
        flags["no_enable_events"] = True
    clusters = Clusters.build(Settings.build(flags, environ={}))
    try:
        switches = [m.cluster.events_switch for m in clusters]
        if not enabled:
            assert switches == [None, None]
            return
        assert [s.label for s in switches if s is not None] == ["default", "other"]
        assert [s.app for s in switches if s is not None] == [m.cluster.app for m in clusters]
        assert all(s is not None and s.wanted() for s in switches)  # no shared store: ingests
        # On a shared store, a follower leaves the broadcast to the leader.
        first = clusters.default.cluster
        for role, wanted in (("follower", False), ("leader", True)):
            first.leadership = SimpleNamespace(role=role)  # type: ignore[assignment]
            assert switches[0] is not None and switches[0].wanted() is wanted
        first.leadership = None
    finally:
        clusters.close()


def test_a_refused_login_is_logged_without_the_password(
    amqp_broker: BrokerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    url = amqp_broker.url.replace("guest:guest@", "guest:Wr0ng-pa55@")
    assert url != amqp_broker.url
    switch = EventsSwitch(Celery("t", broker=url, set_as_current=False), interval=60)
    caplog.set_level(logging.INFO, "celeriac")
    assert not switch.send()
    assert "cannot broadcast enable_events" in caplog.text
    assert "Wr0ng-pa55" not in caplog.text
    switch.close()
