"""Queue lengths over time: the sampler's ring, and GET /api/celeriac/stats/queues on a real
celeriac with a real worker on Redis, while tasks pile up in a queue nobody consumes."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from celeriac.queue_history import QueueHistory, watched_queues
from tests.apps.proj import create_app
from tests.fixtures import BrokerInfo, MonitorFactory, WorkerFactory, wait_for

pytestmark = pytest.mark.timeout(120)


def test_the_ring_keeps_the_last_slots_and_at_most_max_queues() -> None:
    h = QueueHistory(slots=5, max_queues=2)
    for t in range(8):
        h.add(100.0 + 10 * t, {"a": t, "b": 2 * t, "c": 1})
    assert h.latest() == (170.0, {"a": 7, "b": 14})
    assert h.dropped == {"c"}
    # The oldest three samples (100, 110, 120) were overwritten.
    assert h.buckets(100.0, 20.0, 4) == {"a": [None, 3, 5, 7], "b": [None, 6, 10, 14]}


def test_buckets_hold_the_peak_and_leave_gaps_where_nothing_was_read() -> None:
    h = QueueHistory(slots=10)
    h.add(0.0, {"q": 4})
    h.add(5.0, {"q": 9})
    h.add(10.0, {"q": 2})
    h.add(15.0, {})  # the read failed for q this round
    h.add(31.0, {"q": 1})
    assert h.buckets(0.0, 10.0, 4) == {"q": [9, 2, None, 1]}
    assert h.latest() == (31.0, {"q": 1})
    assert QueueHistory().latest() == (None, {})
    assert QueueHistory().buckets(0.0, 10.0, 2) == {}


def test_the_queues_watched_keep_their_order_and_include_what_nobody_consumes() -> None:
    app = create_app("memory://")
    app.amqp.queues.select_add("reports")  # as sending a task to it does
    worker_info = {"w1": {"active_queues": [{"name": "fast"}, {"name": "celery"}, "junk"]}}
    cluster: Any = SimpleNamespace(worker_info=worker_info, app=app)
    assert watched_queues(cluster, []) == ["celery", "fast", "reports"]
    # Queues sampled before keep their place (within the cap), even once nobody consumes them.
    assert watched_queues(cluster, ["old", "reports"]) == ["old", "reports", "celery", "fast"]


def test_the_endpoint_shows_an_unconsumed_queue_growing(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory,
) -> None:
    worker = celery_worker(redis_broker, hostname="qh@%h", concurrency=1)
    monitor = celeriac_server(redis_broker)
    client = monitor.client
    wait_for(lambda: client.get("/api/workers", params={"status": "true"}).json().get(
        worker.hostname) is True, 30, 0.1, "celeriac to see the worker")
    idle = f"nobody-{uuid.uuid4().hex[:8]}"

    def send(n: int) -> None:
        for i in range(n):
            r = client.post("/api/task/send-task/tests.add",
                            json={"args": [i, 1], "queue": idle})
            assert r.status_code == 200, r.text

    def sampled(n: int) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get("/api/celeriac/stats/queues").json()
            return body if body["latest"].get(idle) == n else None

        found: dict[str, Any] = wait_for(seen, 40, 0.5, f"a sample of {n} in {idle}")
        return found

    send(3)
    first = sampled(3)
    send(4)
    second = sampled(7)
    assert second["sampled_at"] > first["sampled_at"]
    assert second["window"] == "1h" and second["bucket"] == 60 and second["interval"] == 10
    assert second["error"] is None
    # The worker's own queue is sampled too, and nothing waits in it.
    assert second["latest"].get("celery") == 0
    # Per bucket, the peak: the last bucket read holds the 7 now waiting, none holds more.
    for window in ("15m", "1h", "24h"):
        body = client.get("/api/celeriac/stats/queues", params={"window": window}).json()
        series = [v for v in body["queues"][idle] if v is not None]
        assert series[-1] == 7 and max(series) == 7 and series == sorted(series), (window, series)
    bad = client.get("/api/celeriac/stats/queues", params={"window": "2d"})
    assert bad.status_code == 400 and "Invalid window" in bad.text
