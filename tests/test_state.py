"""Unit tests of the merge rules of :class:`celeriac.state.State` over a :class:`MemoryStore`.

Events are built the way a Celery worker sends them (``type``, ``uuid``, ``hostname``,
``timestamp``, ``clock`` and the payload of each type); the tests feed them in every order the
wire can produce and check the record that comes out.
"""

from __future__ import annotations

import itertools
import time
import uuid as uuidlib
from typing import Any

import pytest

from celeriac import state as state_module
from celeriac.constants import TASK_FIELDS
from celeriac.state import State
from celeriac.store.base import TaskQuery
from celeriac.store.memory import MemoryStore

WORKER = "celery@w1"
T0 = 1_700_000_000.0


def ev(kind: str, uuid: str, clock: int, ts: float | None = None, **payload: Any) -> dict:
    event: dict[str, Any] = {
        "type": kind,
        "uuid": uuid,
        "hostname": WORKER,
        "timestamp": T0 + clock if ts is None else ts,
        "utcoffset": 0,
        "pid": 1234,
        "clock": clock,
    }
    event.update(payload)
    return event


def lifecycle(uuid: str, start: int = 1, name: str = "tests.add") -> list[dict]:
    """received -> started -> succeeded, with increasing clocks."""
    return [
        ev("task-received", uuid, start, name=name, args="(1, 2)", kwargs="{}", retries=0,
           eta=None, expires=None, root_id=uuid, parent_id=None),
        ev("task-started", uuid, start + 1),
        ev("task-succeeded", uuid, start + 2, result="3", runtime=0.01),
    ]


def new_id() -> str:
    return str(uuidlib.uuid4())


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(max_tasks=1000)


@pytest.fixture
def state(store: MemoryStore) -> State:
    return State(store)


def test_in_order_lifecycle_fills_every_field(state: State, store: MemoryStore) -> None:
    tid = new_id()
    state.apply(lifecycle(tid))
    rec = state.task(tid)
    assert rec is not None
    assert set(TASK_FIELDS) <= set(rec)
    assert rec["state"] == "SUCCESS"
    assert rec["name"] == "tests.add"
    assert rec["args"] == "(1, 2)"
    assert rec["kwargs"] == "{}"
    assert rec["result"] == "3"
    assert rec["runtime"] == 0.01
    assert rec["received"] == T0 + 1
    assert rec["started"] == T0 + 2
    assert rec["succeeded"] == T0 + 3
    assert rec["timestamp"] == T0 + 3
    assert rec["clock"] == 3
    assert rec["worker"] == WORKER
    assert rec["root_id"] == tid
    assert rec["retries"] == 0
    assert state.applied == 3
    assert state.ignored == 0
    # The store has the same picture.
    stored = store.get(tid)
    assert stored is not None
    assert stored["state"] == "SUCCESS"
    assert stored["name"] == "tests.add"


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_every_arrival_order_gives_the_same_final_record(order: tuple[int, ...]) -> None:
    state = State(MemoryStore(10))
    tid = new_id()
    events = lifecycle(tid)
    state.apply([events[i] for i in order])
    rec = state.task(tid)
    assert rec is not None
    assert rec["state"] == "SUCCESS"
    assert rec["name"] == "tests.add"
    assert rec["args"] == "(1, 2)"
    assert rec["result"] == "3"
    assert (rec["received"], rec["started"], rec["succeeded"]) == (T0 + 1, T0 + 2, T0 + 3)
    assert rec["timestamp"] == T0 + 3
    assert rec["clock"] == 3


def test_late_received_never_undoes_success_but_fills_fields(state: State) -> None:
    tid = new_id()
    received, started, succeeded = lifecycle(tid)
    state.apply([started])
    state.apply([succeeded])
    rec = state.task(tid)
    assert rec is not None and rec["state"] == "SUCCESS"
    assert rec["name"] is None
    state.apply([received])
    rec = state.task(tid)
    assert rec is not None
    assert rec["state"] == "SUCCESS"
    assert rec["name"] == "tests.add"
    assert rec["args"] == "(1, 2)"
    assert rec["result"] == "3"
    assert rec["timestamp"] == T0 + 3  # a late event never moves the timestamp back
    assert rec["clock"] == 3


def test_late_started_never_undoes_failure(state: State) -> None:
    tid = new_id()
    state.apply([
        ev("task-received", tid, 1, name="tests.fail"),
        ev("task-failed", tid, 3, exception="ValueError('boom')",
           traceback="Traceback (most recent call last):\n..."),
        ev("task-started", tid, 2),
    ])
    rec = state.task(tid)
    assert rec is not None
    assert rec["state"] == "FAILURE"
    assert rec["exception"] == "ValueError('boom')"
    assert rec["traceback"].startswith("Traceback")
    assert rec["started"] == T0 + 2
    assert rec["failed"] == T0 + 3


def test_first_final_state_wins(state: State) -> None:
    tid = new_id()
    state.apply([ev("task-revoked", tid, 5, terminated=True, signum=15)])
    state.apply([ev("task-succeeded", tid, 6, result="1")])
    rec = state.task(tid)
    assert rec is not None
    assert rec["state"] == "REVOKED"
    assert rec["revoked"] == T0 + 5


def test_late_task_sent_never_moves_a_task_back_to_pending(state: State) -> None:
    tid = new_id()
    state.apply([ev("task-received", tid, 1, name="tests.add"), ev("task-started", tid, 2)])
    # The client's Lamport clock can be ahead of the worker's.
    sent = ev("task-sent", tid, 50, name="tests.add", args="(1, 2)", kwargs="{}",
              exchange="", routing_key="celery", queue="celery")
    sent["hostname"] = "gen1@client"
    state.apply([sent])
    rec = state.task(tid)
    assert rec is not None
    assert rec["state"] == "STARTED"
    assert rec["client"] == "gen1@client"
    assert rec["worker"] == WORKER
    assert rec["routing_key"] == "celery"
    assert rec["sent"] == T0 + 50


def test_sent_before_received_is_pending_then_received(state: State) -> None:
    tid = new_id()
    sent = ev("task-sent", tid, 1, name="tests.add")
    sent["hostname"] = "gen1@client"
    state.apply([sent])
    rec = state.task(tid)
    assert rec is not None and rec["state"] == "PENDING"
    assert rec["worker"] is None
    state.apply([ev("task-received", tid, 2)])
    rec = state.task(tid)
    assert rec is not None and rec["state"] == "RECEIVED"


def test_duplicates_change_nothing(state: State) -> None:
    tid = new_id()
    events = lifecycle(tid)
    state.apply(events)
    before = state.task(tid)
    state.apply(events)
    state.apply([events[1], events[1], events[0]])
    after = state.task(tid)
    assert after == before
    assert state.ignored == 0


def test_duplicate_started_keeps_started(state: State) -> None:
    tid = new_id()
    received, started, _ = lifecycle(tid)
    state.apply([received, started, started])
    rec = state.task(tid)
    assert rec is not None and rec["state"] == "STARTED"


def test_retry_cycle_with_increasing_clocks(state: State) -> None:
    tid = new_id()
    seen = []

    def step(event: dict) -> None:
        state.apply([event])
        rec = state.task(tid)
        assert rec is not None
        seen.append(rec["state"])

    step(ev("task-received", tid, 1, name="tests.retry", retries=0))
    step(ev("task-started", tid, 2))
    step(ev("task-retried", tid, 3, exception="Retry('again')", traceback="tb"))
    step(ev("task-received", tid, 4, name="tests.retry", retries=1))
    step(ev("task-started", tid, 5))
    step(ev("task-succeeded", tid, 6, result="'done'", runtime=0.1))
    assert seen == ["RECEIVED", "STARTED", "RETRY", "RECEIVED", "STARTED", "SUCCESS"]
    rec = state.task(tid)
    assert rec is not None
    assert rec["retries"] == 1
    assert rec["retried"] == T0 + 3
    assert rec["received"] == T0 + 4
    assert rec["result"] == "'done'"


def test_retry_cycle_late_events_of_the_first_attempt_lose(state: State) -> None:
    tid = new_id()
    state.apply([
        ev("task-received", tid, 1, name="tests.retry", retries=0),
        ev("task-retried", tid, 3, exception="Retry()"),
        ev("task-received", tid, 4, retries=1),
        ev("task-started", tid, 5),
        ev("task-started", tid, 2),  # late, from the first attempt
    ])
    rec = state.task(tid)
    assert rec is not None
    assert rec["state"] == "STARTED"
    assert rec["retries"] == 1
    # A late retried (clock 3) after the second attempt started (clock 5) loses too.
    state.apply([ev("task-retried", tid, 3, exception="Retry()")])
    rec = state.task(tid)
    assert rec is not None and rec["state"] == "STARTED"


def test_clock_tie_goes_to_the_state_further_along(state: State) -> None:
    tid = new_id()
    state.apply([ev("task-started", tid, 7), ev("task-received", tid, 7, name="tests.add")])
    rec = state.task(tid)
    assert rec is not None
    assert rec["state"] == "STARTED"
    assert rec["name"] == "tests.add"


def test_multi_batch_of_many_tasks(state: State, store: MemoryStore) -> None:
    # A task.multi message carries events of many tasks, interleaved, in one list.
    ids = [new_id() for _ in range(8)]
    batch = []
    for i, tid in enumerate(ids):
        batch.extend(lifecycle(tid, start=10 * i + 1))
    # interleave: all received, then all started, then all succeeded
    batch.sort(key=lambda e: ("task-received", "task-started", "task-succeeded").index(e["type"]))
    state.apply(batch)
    assert state.applied == 24
    assert state.ignored == 0
    assert store.count() == 8
    for tid in ids:
        rec = state.task(tid)
        assert rec is not None and rec["state"] == "SUCCESS"
    listed = store.query(TaskQuery())
    assert [r["uuid"] for r in listed] == list(reversed(ids))  # newest first
    assert store.task_types() == ["tests.add"]


@pytest.mark.parametrize(
    "bad",
    [
        {"uuid": "x"},  # no type
        {"type": 7, "uuid": "x"},
        {"type": "bogus-event"},
        {"type": "task-succeeded"},  # no uuid
        {"type": "task-succeeded", "uuid": ""},
        {"type": "task-succeeded", "uuid": 42},
        {"type": "worker-heartbeat"},  # no hostname
        "not an event",
        None,
        42,
    ],
)
def test_malformed_events_are_counted_as_ignored(state: State, store: MemoryStore, bad) -> None:
    tid = new_id()
    state.apply([bad, *lifecycle(tid)])
    assert state.ignored == 1
    assert state.applied == 3
    assert store.count() == 1
    rec = state.task(tid)
    assert rec is not None and rec["state"] == "SUCCESS"


def test_garbage_field_values_do_not_break_the_merge(state: State) -> None:
    tid = new_id()
    state.apply([
        ev("task-received", tid, 1, name="tests.add"),
        {"type": "task-started", "uuid": tid, "hostname": WORKER, "timestamp": "soon",
         "clock": "later"},
    ])
    rec = state.task(tid)
    assert rec is not None
    assert rec["state"] == "STARTED"
    assert rec["started"] is None
    assert rec["clock"] == 1
    assert state.ignored == 0


def test_children_of_a_parent(state: State, store: MemoryStore) -> None:
    parent = new_id()
    kids = [new_id() for _ in range(3)]
    state.apply(lifecycle(parent))
    for i, kid in enumerate(kids):
        state.apply([
            ev("task-received", kid, 10 + i, name="tests.add", parent_id=parent, root_id=parent),
            ev("task-succeeded", kid, 20 + i, result="1"),
        ])
    rec = state.task(parent)
    assert rec is not None
    assert rec["children"] == kids
    assert store.children(parent) == kids
    stored = store.get(parent)
    assert stored is not None and stored["children"] == kids
    kid = state.task(kids[0])
    assert kid is not None
    assert kid["parent_id"] == parent
    assert kid["root_id"] == parent
    assert kid["children"] == []


def test_child_whose_received_event_comes_late_is_still_a_child(state: State) -> None:
    parent, kid = new_id(), new_id()
    state.apply(lifecycle(parent))
    # The child's first event has no parent_id; task-received brings it later.
    state.apply([ev("task-started", kid, 11)])
    state.apply([ev("task-received", kid, 10, name="tests.add", parent_id=parent,
                    root_id=parent)])
    state.apply([ev("task-received", kid, 10, name="tests.add", parent_id=parent,
                    root_id=parent)])  # a duplicate adds no second link
    rec = state.task(parent)
    assert rec is not None
    assert rec["children"] == [kid]


def test_a_chain_links_root_and_parent(state: State) -> None:
    a, b, c = new_id(), new_id(), new_id()
    state.apply(lifecycle(a))
    state.apply([ev("task-received", b, 5, name="tests.add", parent_id=a, root_id=a)])
    state.apply([ev("task-received", c, 9, name="tests.add", parent_id=b, root_id=a)])
    ra, rb, rc = state.task(a), state.task(b), state.task(c)
    assert ra is not None and rb is not None and rc is not None
    assert ra["children"] == [b]
    assert rb["children"] == [c]
    assert rc["children"] == []
    assert (rc["parent_id"], rc["root_id"]) == (b, a)


def test_store_holds_a_snapshot_not_the_live_record(state: State, store: MemoryStore) -> None:
    tid = new_id()
    received, started, succeeded = lifecycle(tid)
    state.apply([received])
    listed = store.query(TaskQuery())
    state.apply([started, succeeded])
    # A copy handed out earlier does not change under the reader.
    assert listed[0]["state"] == "RECEIVED"
    got = store.get(tid)
    assert got is not None and got["state"] == "SUCCESS"
    got["state"] = "MANGLED"
    again = store.get(tid)
    assert again is not None and again["state"] == "SUCCESS"


def test_evicted_from_cache_is_merged_from_the_store(store: MemoryStore) -> None:
    state = State(store, cache_size=2)
    first = new_id()
    received, started, succeeded = lifecycle(first)
    state.apply([received, started])
    for _ in range(3):
        state.apply(lifecycle(new_id(), start=100))
    state.apply([succeeded, received])  # the late received must not undo SUCCESS
    rec = state.task(first)
    assert rec is not None
    assert rec["state"] == "SUCCESS"
    assert rec["name"] == "tests.add"
    assert store.count() == 4


def test_evicted_within_one_batch_is_merged_not_restarted(store: MemoryStore) -> None:
    """The batch's changes reach the store only at its end: a task evicted from the cache
    earlier in the same batch is taken from the batch's own changes, not begun again."""
    state = State(store, cache_size=2)
    first = new_id()
    received, started, succeeded = lifecycle(first)
    others = [e for _ in range(3) for e in lifecycle(new_id(), start=100)]
    state.apply([received, *others, started, *lifecycle(new_id(), start=200), succeeded])
    rec = store.get(first)
    assert rec is not None
    assert (rec["state"], rec["name"], rec["args"]) == ("SUCCESS", "tests.add", "(1, 2)")
    assert rec["received"] is not None and rec["started"] is not None
    assert store.count() == 5


def test_store_evicts_the_oldest_beyond_max_tasks() -> None:
    store = MemoryStore(max_tasks=3)
    state = State(store)
    ids = [new_id() for _ in range(5)]
    for i, tid in enumerate(ids):
        state.apply(lifecycle(tid, start=10 * i + 1))
    assert store.count() == 3
    assert [r["uuid"] for r in store.query(TaskQuery())] == ids[:1:-1]
    assert store.get(ids[0]) is None


# -- workers --------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(T0)
    monkeypatch.setattr(state_module.time, "time", c.time)
    return c


def wev(kind: str, hostname: str = WORKER, **payload: Any) -> dict:
    event = {"type": kind, "hostname": hostname, "timestamp": T0, "clock": 1, "utcoffset": 0,
             "pid": 99, "freq": 2.0, "sw_ident": "py-celery", "sw_ver": "5.7.0",
             "sw_sys": "Linux"}
    event.update(payload)
    return event


def test_worker_online_from_heartbeats_and_offline_after_missed_ones(
    state: State, clock: Clock
) -> None:
    state.apply([wev("worker-online")])
    assert state.worker_status() == {WORKER: True}
    assert state.online_workers() == [WORKER]
    clock.now += 5
    state.apply([wev("worker-heartbeat", active=1, processed=7, loadavg=[0.1, 0.2, 0.3])])
    w = state.workers()[WORKER]
    assert w["online"] is True
    assert w["processed"] == 7
    assert w["active"] == 1
    assert w["loadavg"] == [0.1, 0.2, 0.3]
    assert w["sw_ver"] == "5.7.0"
    assert w["last_heartbeat"] == clock.now
    # 3 missed heartbeats at freq 2 s (plus slack) and the worker is offline.
    clock.now += 2.0 * state_module.HEARTBEAT_MISSES + 0.5
    assert state.worker_status() == {WORKER: True}
    clock.now += 1.0
    assert state.worker_status() == {WORKER: False}
    assert state.offline_since(WORKER) == clock.now - 2.0 * state_module.HEARTBEAT_MISSES - 1.5
    # A heartbeat brings it back.
    state.apply([wev("worker-heartbeat")])
    assert state.worker_status() == {WORKER: True}
    assert state.offline_since(WORKER) is None


def test_worker_offline_event_is_offline_at_once(state: State, clock: Clock) -> None:
    state.apply([wev("worker-online"), wev("worker-online", "celery@w2")])
    state.apply([wev("worker-offline")])
    assert state.worker_status() == {WORKER: False, "celery@w2": True}
    assert state.online_workers() == ["celery@w2"]
    assert state.offline_since(WORKER) == T0
    state.apply([wev("worker-online")])  # restarted
    assert state.worker_status()[WORKER] is True


def test_worker_heartbeat_freq_sets_the_offline_delay(state: State, clock: Clock) -> None:
    state.apply([wev("worker-heartbeat", freq=10.0)])
    clock.now += 25
    assert state.worker_status() == {WORKER: True}
    clock.now += 10
    assert state.worker_status() == {WORKER: False}


def test_forget_worker(state: State, clock: Clock) -> None:
    state.apply([wev("worker-online")])
    state.forget_worker(WORKER)
    assert state.worker_status() == {}
    assert state.workers() == {}


def test_task_events_do_not_create_workers(state: State) -> None:
    state.apply(lifecycle(new_id()))
    assert state.worker_status() == {}


def test_queue_waits_are_sent_to_received_of_recent_tasks_by_routing_key(state: State) -> None:
    now = time.time()
    a, b, old, unsent = new_id(), new_id(), new_id(), new_id()
    state.apply([
        ev("task-sent", a, 1, now - 5.0, routing_key="fast"),
        ev("task-received", a, 2, now - 4.5),
        ev("task-sent", b, 3, now - 9.0, routing_key="slow"),
        ev("task-received", b, 4, now - 1.0),
        ev("task-sent", old, 5, now - 4000.0, routing_key="fast"),
        ev("task-received", old, 6, now - 3990.0),  # before the window
        ev("task-received", unsent, 7, now - 1.0),  # no task-sent: no time in queue
    ])
    waits = state.queue_waits(900.0)
    assert waits.keys() == {"fast", "slow"}
    assert waits["fast"] == [pytest.approx(0.5)]
    assert waits["slow"] == [pytest.approx(8.0)]
