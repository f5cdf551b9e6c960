"""/metrics: Flower's six metrics under their names and labels, celeriac's own, bounded labels,
offline workers leaving their series; first from events applied in-process, then moved by real
tasks on a real worker.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from celeriac.metrics import OTHER, EventTally, Metrics
from celeriac.server import create_app
from celeriac.settings import Settings
from celeriac.state import State
from celeriac.store.memory import MemoryStore
from tests.fixtures import BrokerInfo, MonitorFactory, WorkerFactory, wait_for

BROKER = "redis://127.0.0.1:1/0"  # never connected to in-process
TOKEN = "metr1cs-T0ken-5b2d"
PASSWORD = "Adm1n-pa55-e4f0"
FLOWER_METRICS = {
    "flower_events_total": ("counter", {"worker", "type", "task"}),
    "flower_task_runtime_seconds": ("histogram", {"worker", "task"}),
    "flower_task_prefetch_time_seconds": ("gauge", {"worker", "task"}),
    "flower_worker_prefetched_tasks": ("gauge", {"worker", "task"}),
    "flower_worker_online": ("gauge", {"worker"}),
    "flower_worker_number_of_currently_executing_tasks": ("gauge", {"worker"}),
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    samples: Samples = {}
    kinds = {}
    for family in text_string_to_metric_families(text):
        kinds[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, kinds


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    want = set(labels.items())
    return [dict(ls) for (n, ls) in samples if n == name and want <= set(ls)]


def in_process() -> tuple[Metrics, State]:
    app = create_app(Settings(broker=BROKER, unauthenticated_api=True, db=":memory:"))
    return app.state.metrics, app.state.cluster.state


def render(m: Metrics) -> Samples:
    body, _ = m.render(None)
    return parse(body.decode())[0]


def task_events(uuid: str, name: str, worker: str, start: float,
                runtime: float = 0.1) -> list[dict[str, Any]]:
    return [
        {"type": "task-sent", "uuid": uuid, "name": name, "hostname": "client@h",
         "timestamp": start - 1, "clock": 1},
        {"type": "task-received", "uuid": uuid, "name": name, "hostname": worker,
         "timestamp": start, "clock": 2},
        {"type": "task-started", "uuid": uuid, "hostname": worker, "timestamp": start + 0.5,
         "clock": 3},
        {"type": "task-succeeded", "uuid": uuid, "hostname": worker, "runtime": runtime,
         "timestamp": start + 0.5 + runtime, "clock": 4},
    ]


# In-process -----------------------------------------------------------------------------------


def test_flower_names_labels_and_values() -> None:
    m, state = in_process()
    now = time.time()
    state.apply([{"type": "worker-heartbeat", "hostname": "w1@h", "active": 2, "freq": 2.0}])
    state.apply(task_events("u1", "tests.add", "w1@h", now, runtime=0.3))
    state.apply(task_events("u2", "tests.add", "w1@h", now, runtime=3.0)[:3])  # still running
    body, content_type = m.render(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    samples, kinds = parse(body.decode())
    for name, (kind, labels) in FLOWER_METRICS.items():
        family = name.removesuffix("_total")
        assert kinds.get(family) == kind, name
        found = series(samples, name if kind != "histogram" else f"{name}_count")
        assert found and all(set(s) == labels for s in found), (name, found)
    assert value(samples, "flower_events_total", worker="w1@h", type="task-started",
                 task="tests.add") == 2
    assert value(samples, "flower_events_total", worker="client@h", type="task-sent",
                 task="tests.add") == 2
    assert value(samples, "flower_task_runtime_seconds_count", worker="w1@h",
                 task="tests.add") == 1
    assert value(samples, "flower_task_runtime_seconds_bucket", worker="w1@h",
                 task="tests.add", le="0.25") == 0
    assert value(samples, "flower_task_runtime_seconds_bucket", worker="w1@h",
                 task="tests.add", le="0.5") == 1
    assert value(samples, "flower_task_prefetch_time_seconds", worker="w1@h",
                 task="tests.add") == 0.5
    assert value(samples, "flower_worker_prefetched_tasks", worker="w1@h", task="tests.add") == 0
    assert value(samples, "flower_worker_online", worker="w1@h") == 1
    assert value(samples, "flower_worker_number_of_currently_executing_tasks",
                 worker="w1@h") == 2
    # celeriac's own
    assert value(samples, "celeriac_events_total", type="task-started") == 2
    assert value(samples, "celeriac_events_total", type="worker-heartbeat") == 1
    assert value(samples, "celeriac_task_queue_wait_seconds_count", task="tests.add") == 2
    assert value(samples, "celeriac_task_queue_wait_seconds_bucket", task="tests.add",
                 le="1.0") == 0  # sent 1 s before received, started 0.5 s after
    assert value(samples, "celeriac_task_queue_wait_seconds_bucket", task="tests.add",
                 le="2.5") == 2
    assert value(samples, "celeriac_ingest_events_applied_total") == 8
    assert value(samples, "celeriac_store_tasks") == 2
    assert value(samples, "celeriac_tasks", state="SUCCESS") == 1
    assert value(samples, "celeriac_tasks", state="STARTED") == 1
    assert value(samples, "celeriac_workers", status="online") == 1
    assert value(samples, "celeriac_worker_active_tasks", worker="w1@h") == 2
    assert value(samples, "celeriac_role", role="single") == 1
    # Never an id in a label.
    assert not [k for k in samples if any(v in ("u1", "u2") for _, v in k[1])]


def test_openmetrics_when_asked() -> None:
    m, _ = in_process()
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_offline_workers_leave_their_series_and_forgotten_ones_all() -> None:
    m, state = in_process()
    now = time.time()
    state.apply([{"type": "worker-heartbeat", "hostname": h, "active": 1, "freq": 2.0}
                 for h in ("w1@h", "w2@h")])
    state.apply(task_events("u1", "tests.add", "w1@h", now))
    state.apply(task_events("u2", "tests.add", "w2@h", now))
    state.apply([{"type": "worker-offline", "hostname": "w2@h"}])
    samples = render(m)
    assert value(samples, "flower_worker_online", worker="w2@h") == 0
    assert value(samples, "flower_worker_online", worker="w1@h") == 1
    for name in ("flower_events_total", "flower_task_runtime_seconds_count",
                 "flower_task_prefetch_time_seconds", "flower_worker_prefetched_tasks",
                 "flower_worker_number_of_currently_executing_tasks",
                 "celeriac_worker_active_tasks"):
        assert series(samples, name, worker="w1@h"), name
        assert not series(samples, name, worker="w2@h"), name
    assert value(samples, "celeriac_workers", status="offline") == 1
    # The worker comes back: its counters carry on where they were.
    state.apply([{"type": "worker-online", "hostname": "w2@h", "freq": 2.0}])
    assert value(render(m), "flower_events_total", worker="w2@h", type="task-received",
                 task="tests.add") == 1
    # Purged workers are forgotten by the tally too.
    state.forget_worker("w2@h")
    samples = render(m)
    assert not series(samples, "flower_worker_online", worker="w2@h")
    assert "w2@h" not in m.tally.worker_hosts
    assert not [k for k in m.tally.events if k[0] == "w2@h"]


def test_label_values_are_capped() -> None:
    tally = EventTally(max_names=3, max_hosts=2)
    state = State(MemoryStore(100))
    state.observe(tally)
    now = time.time()
    for i in range(10):
        state.apply(task_events(f"u{i}", f"tests.t{i}", f"w{i}@h", now))
    names = {k[2] for k in tally.events}
    hosts = {k[0] for k in tally.events}
    assert names == {"tests.t0", "tests.t1", "tests.t2", OTHER}
    assert hosts == {"client@h", "w0@h", OTHER}
    assert sum(n for k, n in tally.events.items() if k[1] == "task-succeeded") == 10


def test_worker_and_task_pairs_are_capped() -> None:
    tally = EventTally(max_names=100, max_hosts=100, max_pairs=4)
    state = State(MemoryStore(1000))
    state.observe(tally)
    now = time.time()
    for w in range(3):
        for t in range(3):
            state.apply(task_events(f"u{w}-{t}", f"tests.t{t}", f"w{w}@h", now))
    pairs = {(k[0], k[2]) for k in tally.events if k[0] != "client@h"}
    named = {p for p in pairs if p[1] != OTHER}
    # The client's task-sent events took two of the four pairs.
    assert named == {("w0@h", "tests.t0"), ("w0@h", "tests.t1")}
    assert {p for p in pairs if p[1] == OTHER} == {("w0@h", OTHER), ("w1@h", OTHER),
                                                   ("w2@h", OTHER)}
    assert sum(n for k, n in tally.events.items() if k[1] == "task-succeeded") == 9
    assert len({(w, t) for w, t in tally.runtime}) <= 4 + 3


def test_a_bad_event_does_not_break_the_tally() -> None:
    m, state = in_process()
    state.apply([
        {"type": "task-started", "uuid": "x", "hostname": None, "timestamp": "soon"},
        {"type": "task-succeeded", "uuid": "x", "hostname": 5, "runtime": "slow"},
        {"type": "task-received", "uuid": "y", "name": 5, "hostname": ["w@h"],
         "timestamp": 1.0, "eta": "2030-01-01"},
        {"type": "worker-heartbeat", "hostname": "w@h", "active": "many"},
        {"type": "task-received", "uuid": "z", "name": "tests.add", "hostname": "w@h",
         "timestamp": 1.0},
        {"type": "task-started", "uuid": "z", "hostname": "w@h", "timestamp": float("nan")},
        {"type": "task-succeeded", "uuid": "z", "hostname": "w@h", "runtime": float("nan")},
        {"type": "task-succeeded", "uuid": "z", "hostname": "w@h", "runtime": -5.0},
        {"type": "task-succeeded", "uuid": "z", "hostname": "w@h", "runtime": 1e300},
    ])
    samples = render(m)
    assert (value(samples, "celeriac_ingest_events_applied_total") or 0) >= 4
    # Nothing absurd was observed: the sums stay finite numbers.
    for (n, _), v in samples.items():
        if n.endswith("_sum"):
            assert v == v and v not in (float("inf"), float("-inf")) and v >= 0, (n, v)
    assert not series(samples, "flower_worker_number_of_currently_executing_tasks")
    # A hostname that is not text (a list: not even a dict key) still counts, under "".
    assert value(samples, "flower_events_total", worker="", type="task-received", task="") == 1


def test_the_tally_cache_stays_bounded_past_the_caps() -> None:
    """Every new task name past the caps counts under __other__ without growing the cache of
    raw values for ever, and the counts stay exact whether an event hits the cache or not."""
    tally = EventTally(max_names=2, max_hosts=2, max_pairs=3)
    state = State(MemoryStore(100))
    state.observe(tally)
    now = time.time()
    for i in range(500):
        state.apply(task_events(f"u{i}", f"tests.t{i % 250}", f"w{i % 3}@h", now))
    assert tally._seen_count <= 4 * tally.max_pairs
    events = tally.events
    assert sum(n for k, n in events.items() if k[1] == "task-succeeded") == 500
    assert sum(events.values()) == 4 * 500
    assert tally.types == {"task-sent": 500, "task-received": 500, "task-started": 500,
                           "task-succeeded": 500}
    assert {k[2] for k in events} <= {"tests.t0", "tests.t1", OTHER}
    assert {k[0] for k in events} == {"client@h", "w0@h", OTHER}


def test_store_health_of_a_sqlite_store(tmp_path: Path) -> None:
    app = create_app(Settings(broker=BROKER, unauthenticated_api=True,
                              db=str(tmp_path / "tasks.sqlite3")))
    cluster = app.state.cluster
    cluster.store.start()
    try:
        cluster.state.apply(task_events("u1", "tests.add", "w1@h", time.time()))
        cluster.state.apply(task_events("u2", "tests.add", "w1@h", time.time())[:3])
        assert cluster.store.flush(10)
        samples = render(app.state.metrics)
    finally:
        cluster.store.close()
    assert value(samples, "celeriac_store_tasks") == 2
    assert value(samples, "celeriac_tasks", state="SUCCESS") == 1
    assert value(samples, "celeriac_tasks", state="STARTED") == 1
    assert (value(samples, "celeriac_store_written_total") or 0) >= 2
    assert (value(samples, "celeriac_store_flushes_total") or 0) >= 1
    assert value(samples, "celeriac_store_pending_writes") == 0
    assert value(samples, "celeriac_store_failing") == 0
    flush_seconds = value(samples, "celeriac_store_last_flush_seconds")
    assert flush_seconds is not None and flush_seconds >= 0


# Real worker ----------------------------------------------------------------------------------


def test_metrics_move_with_real_tasks(
    redis_broker: BrokerInfo, celery_worker: WorkerFactory, celeriac_server: MonitorFactory
) -> None:
    worker = celery_worker(redis_broker, hostname="metrics@%h")
    monitor = celeriac_server(redis_broker, "--api-token", f"prom:{TOKEN}:read-only",
                              "--basic-auth", f"admin:{PASSWORD}")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert monitor.client.get("/metrics").status_code == 401

    def scrape() -> Samples:
        r = monitor.client.get("/metrics", headers=auth)
        assert r.status_code == 200, r.text
        assert TOKEN not in r.text and PASSWORD not in r.text
        return parse(r.text)[0]

    w = worker.hostname
    wait_for(lambda: value(scrape(), "flower_worker_online", worker=w) == 1, 30, 0.3,
             "the worker online in /metrics")
    tasks = redis_broker.tasks
    results = [tasks.add.delay(i, i) for i in range(3)] + [tasks.fail.delay("boom")]
    for r in results:
        r.get(timeout=30, propagate=False)

    def moved() -> Samples | None:
        s = scrape()
        done = value(s, "flower_events_total", worker=w, type="task-succeeded", task="tests.add")
        failed = value(s, "flower_events_total", worker=w, type="task-failed", task="tests.fail")
        return s if (done, failed) == (3, 1) else None

    samples = wait_for(moved, 30, 0.3, "the task events in /metrics")
    assert value(samples, "flower_task_runtime_seconds_count", worker=w, task="tests.add") == 3
    assert value(samples, "flower_worker_prefetched_tasks", worker=w, task="tests.add") == 0
    assert value(samples, "celeriac_task_queue_wait_seconds_count", task="tests.add") == 3
    assert (value(samples, "celeriac_events_total", type="worker-heartbeat") or 0) >= 1
    assert (value(samples, "celeriac_ingest_events_received_total") or 0) >= 12
    assert (value(samples, "celeriac_ingest_events_applied_total") or 0) >= 12
    assert value(samples, "celeriac_ingest_connected") == 1
    assert value(samples, "celeriac_ingest_gaps_total") == 0
    assert (value(samples, "celeriac_store_tasks") or 0) >= 4
    assert value(samples, "celeriac_queue_length_ok") == 1
    assert value(samples, "celeriac_queue_length", queue="celery") == 0
    assert value(samples, "celeriac_workers", status="online") == 1
    # From heartbeats (every 2 s), as Flower: none yet right after worker-online.
    wait_for(lambda: value(scrape(), "flower_worker_number_of_currently_executing_tasks",
                           worker=w) == 0, 10, 0.3, "a heartbeat's active count")
    assert (value(samples, "process_resident_memory_bytes") or 0) > 0

    # The worker stops: it leaves its series (but for online = 0), and the queue fills up.
    worker.stop()

    def gone() -> Samples | None:
        s = scrape()
        return s if value(s, "flower_worker_online", worker=w) == 0 else None

    samples = wait_for(gone, 30, 0.3, "the worker offline in /metrics")
    assert not series(samples, "flower_events_total", worker=w)
    assert value(samples, "celeriac_workers", status="offline") == 1
    for i in range(3):
        tasks.add.delay(i, 1)
    wait_for(lambda: value(scrape(), "celeriac_queue_length", queue="celery") == 3, 30, 0.3,
             "the queue length in /metrics")


def test_scrape_is_bounded_when_the_broker_is_gone() -> None:
    app = create_app(Settings(broker=BROKER, unauthenticated_api=True, metrics_public=True,
                              db=":memory:"))

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            return await c.get("/metrics")

    started = time.monotonic()
    r = asyncio.run(go())
    assert r.status_code == 200
    assert time.monotonic() - started < 10
    samples = parse(r.text)[0]
    assert value(samples, "celeriac_queue_length_ok") == 0


def test_metrics_public_by_flag_or_variable(
    redis_broker: BrokerInfo, celeriac_server: MonitorFactory
) -> None:
    """Only /metrics opens up: the API still needs its credentials."""
    for extra, env in ((("--metrics-public",), None), ((), {"CELERIAC_METRICS_PUBLIC": "true"})):
        monitor = celeriac_server(redis_broker, "--api-token", f"prom:{TOKEN}", *extra, env=env)
        r = monitor.client.get("/metrics")
        assert r.status_code == 200 and "flower_worker_online" in r.text, r.text
        assert TOKEN not in r.text
        assert monitor.client.get("/api/workers").status_code == 401
        assert monitor.client.get("/api/openapi.json").status_code == 401
        monitor.stop()
