"""The live picture of a cluster: workers from heartbeats, tasks merged from their events.

Events of one task come from different processes and can arrive out of order, duplicated or
late. The merge rules, in one place:

- a final state (SUCCESS, FAILURE, REVOKED, REJECTED) is never undone by a later event;
- a late ``task-sent`` never moves a task a worker already has back to PENDING;
- between non-final states the event with the higher Lamport ``clock`` wins, and on a tie the
  state further along (RETRY -> RECEIVED again is a new attempt, so it carries a higher clock);
- fields are only ever filled, never blanked: a late ``task-received`` still supplies name,
  args and kwargs to a task that already finished.

Every record a batch of events changed goes to the store at the end of the batch, once
however many of its events the batch held (``store.put_many`` is cheap); the state keeps the
tasks still in flight and a bounded cache of recent ones, so memory stays flat.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from celeriac.constants import FINAL_STATES, TASK_EVENT_STATES, TASK_FIELDS
from celeriac.events.base import Event
from celeriac.store.base import TaskRecord, TaskStore

#: Progress of a task through its non-final states, to break clock ties.
_RANK = {"PENDING": 0, "RECEIVED": 1, "STARTED": 2, "RETRY": 3}

#: Event fields copied onto the task record, by event type (beyond the timestamps).
_TASK_PAYLOAD: dict[str, tuple[str, ...]] = {
    "task-sent": ("name", "args", "kwargs", "retries", "eta", "expires", "exchange",
                  "routing_key", "root_id", "parent_id"),
    "task-received": ("name", "args", "kwargs", "retries", "eta", "expires", "root_id",
                      "parent_id"),
    "task-started": (),
    "task-succeeded": ("result", "runtime"),
    "task-failed": ("exception", "traceback"),
    "task-retried": ("exception", "traceback"),
    "task-revoked": (),
    "task-rejected": (),
}

#: Worker fields taken from worker events.
_WORKER_PAYLOAD = ("freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys", "pid")

#: A worker is offline after this many heartbeat intervals without one.
HEARTBEAT_MISSES = 3


class EventObserver(Protocol):
    """Told of every applied event, on the ingest thread under the state's lock: it must be a
    few dict operations and never raise (``celeriac.metrics.EventTally`` is one)."""

    def task_event(self, kind: str, ev: Event, rec: TaskRecord) -> None: ...

    def worker_event(self, kind: str, ev: Event) -> None: ...


def new_record(uuid: str) -> TaskRecord:
    rec: TaskRecord = dict.fromkeys(TASK_FIELDS)
    rec["uuid"] = uuid
    rec["state"] = "PENDING"
    rec["children"] = []
    return rec


@dataclass
class WorkerState:
    hostname: str
    first_seen: float
    last_seen: float = 0.0  # local receive time of the last worker event
    freq: float = 2.0
    offline_event: bool = False
    fields: dict[str, Any] = field(default_factory=dict)

    def online(self, now: float) -> bool:
        if self.offline_event:
            return False
        return now - self.last_seen <= self.freq * HEARTBEAT_MISSES + 1.0

    def saved(self) -> dict[str, Any]:
        """What the store keeps, to restore the worker after a restart."""
        return {
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "freq": self.freq,
            "offline_event": self.offline_event,
            "fields": dict(self.fields),  # a copy: the writer thread serialises it later
        }

    @classmethod
    def restored(cls, hostname: str, saved: dict[str, Any]) -> WorkerState:
        """A worker as last stored: online again only when its next heartbeat arrives."""
        return cls(
            hostname=hostname,
            first_seen=_float(saved.get("first_seen")) or 0.0,
            last_seen=_float(saved.get("last_seen")) or 0.0,
            freq=_float(saved.get("freq")) or 2.0,
            offline_event=bool(saved.get("offline_event")),
            fields=dict(saved.get("fields") or {}),
        )

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "online": self.online(now),
            "last_heartbeat": self.last_seen or None,
            **self.fields,
        }


class State:
    """Merges events into task records and worker states. Thread-safe: one lock, short holds."""

    def __init__(self, store: TaskStore, cache_size: int = 10_000) -> None:
        self._store = store
        self._cache_size = cache_size
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self._state_clock: dict[str, int] = {}
        self._workers: dict[str, WorkerState] = {}
        self._lock = threading.Lock()
        self.applied = 0
        self.ignored = 0
        self.last_event_at: float | None = None
        self._fetched: dict[str, TaskRecord | None] = {}  # this batch's store lookups
        self._touched: dict[str, TaskRecord] = {}  # this batch's changed tasks, put at its end
        self.observers: list[EventObserver] = []  # see observe()
        # Workers as last stored: listed (offline) after a restart until they are heard again.
        for hostname, saved in store.workers().items():
            self._workers[hostname] = WorkerState.restored(hostname, saved)

    @property
    def store(self) -> TaskStore:
        """Where every change goes (the AMQP reader acks by what it has committed)."""
        return self._store

    def observe(self, observer: EventObserver) -> None:
        """Tell ``observer`` of every event applied from now on (the metrics' tally, the
        alerts' tap): each is called in turn, on the ingest thread, under the state's lock."""
        with self._lock:
            self.observers.append(observer)

    # -- ingest -----------------------------------------------------------------------------
    def apply(self, events: Iterable[Event]) -> None:
        """The event sink: merge a batch of decoded events."""
        now = time.time()
        batch = events if isinstance(events, list) else list(events)
        with self._lock:
            try:
                self._apply_batch(batch, now)
            finally:
                self._fetched.clear()
                touched = self._touched
                if touched:
                    self._store.put_many(list(touched.values()))
                    touched.clear()
            self.last_event_at = now

    def _apply_batch(self, batch: list[Event], now: float) -> None:
        self._prefetch(batch)
        for ev in batch:
            try:
                kind = ev.get("type")
                if not isinstance(kind, str):
                    self.ignored += 1
                    continue
                if kind.startswith("task-"):
                    ok = self._apply_task(kind, ev)
                elif kind.startswith("worker-"):
                    ok = self._apply_worker(kind, ev, now)
                else:
                    ok = False
                if ok:
                    self.applied += 1
                else:
                    self.ignored += 1
            except (TypeError, ValueError, AttributeError):
                self.ignored += 1

    def _prefetch(self, batch: list[Event]) -> None:
        """Look up the batch's tasks that are not in the cache in one store call.

        A task not in the cache may still be stored (evicted, or from before a restart), and
        its stored record must be merged into, never replaced: a late event must not undo a
        final state. Asking per task costs a query for almost every event (most tasks are
        new); a store with ``get_many`` answers the whole batch at once.
        """
        self._fetched.clear()  # a batch cut short by an exception left its lookups behind
        tasks = self._tasks
        wanted = {
            u
            for ev in batch
            if type(ev) is dict and type(u := ev.get("uuid")) is str and u and u not in tasks
        }
        if not wanted:
            return
        get_many = getattr(self._store, "get_many", None)
        if get_many is not None:
            found: dict[str, TaskRecord] = get_many(list(wanted))
        else:
            found = {u: r for u in wanted if (r := self._store.get(u)) is not None}
        fetched = self._fetched
        for uuid in wanted:
            fetched[uuid] = found.get(uuid)

    def _apply_task(self, kind: str, ev: Event) -> bool:
        uuid = ev.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            return False
        rec = self._tasks.get(uuid)
        if rec is None:
            # Evicted earlier in this batch, the record is not in the store yet.
            rec = self._touched.get(uuid)
            if rec is None:
                fetched = self._fetched
                stored = fetched.pop(uuid) if uuid in fetched else self._store.get(uuid)
                rec = stored if stored is not None else new_record(uuid)
            self._tasks[uuid] = rec
            if len(self._tasks) > self._cache_size:
                self._evict()
        else:
            self._tasks.move_to_end(uuid)
        # Conversions only for what a worker does not send (a float time, an int clock).
        ts = ev.get("timestamp")
        if ts.__class__ is not float:
            ts = _float(ts)
        clock = ev.get("clock")
        if clock.__class__ is not int:
            clock = _int(clock)
        known = TASK_EVENT_STATES.get(kind)
        if known is not None:
            new_state, ts_field = known
            if ts is not None:
                rec[ts_field] = ts
            for key in _TASK_PAYLOAD[kind]:
                value = ev.get(key)
                if value is not None:
                    rec[key] = value
            self._merge_state(rec, uuid, new_state, clock)
        hostname = ev.get("hostname")
        if hostname:
            if kind == "task-sent":
                rec["client"] = hostname
            else:
                rec["worker"] = hostname
        if ts is not None and (rec["timestamp"] is None or ts > rec["timestamp"]):
            rec["timestamp"] = ts
        if clock is not None and (rec["clock"] is None or clock > rec["clock"]):
            rec["clock"] = clock
        self._touched[uuid] = rec
        for observer in self.observers:
            observer.task_event(kind, ev, rec)
        return True

    def _merge_state(self, rec: TaskRecord, uuid: str, new: str, clock: int | None) -> None:
        current = rec["state"]
        if current in FINAL_STATES:
            return
        if new == "PENDING" and current != "PENDING":
            # task-sent comes from the client, whose Lamport clock says nothing about the
            # worker's: once a worker has the task, a late task-sent only fills fields.
            return
        if new not in FINAL_STATES and current != "PENDING":
            old_clock = self._state_clock.get(uuid)
            if clock is not None and old_clock is not None:
                if clock < old_clock or (clock == old_clock and _RANK[new] < _RANK[current]):
                    return
            elif _RANK.get(new, 0) < _RANK.get(current, 0):
                return
        rec["state"] = new
        if clock is not None:
            self._state_clock[uuid] = clock

    def _evict(self) -> None:
        # Oldest-touched first; evicted records are already in the store.
        while len(self._tasks) > self._cache_size:
            old, _ = self._tasks.popitem(last=False)
            self._state_clock.pop(old, None)

    def _apply_worker(self, kind: str, ev: Event, now: float) -> bool:
        hostname = ev.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            return False
        w = self._workers.get(hostname)
        if w is None:
            w = self._workers[hostname] = WorkerState(hostname=hostname, first_seen=now)
        for key in _WORKER_PAYLOAD:
            if key in ev:
                w.fields[key] = ev[key]
        freq = _float(ev.get("freq"))
        if freq:
            w.freq = freq
        if kind == "worker-offline":
            w.offline_event = True
        else:
            w.offline_event = False
            w.last_seen = now
        self._store.put_worker(hostname, w.saved())
        for observer in self.observers:
            observer.worker_event(kind, ev)
        return True

    # -- reads ------------------------------------------------------------------------------
    def task(self, uuid: str) -> TaskRecord | None:
        """The freshest copy of a task: live if in flight, else from the store."""
        with self._lock:
            rec = self._tasks.get(uuid)
            live = dict(rec) if rec is not None else None
        if live is None:
            return self._store.get(uuid)
        live["children"] = self._store.children(uuid)
        return live

    def queue_waits(self, window: float) -> dict[str, list[float]]:
        """Seconds each recently received task spent in its queue (sent to received), by
        routing key, sorted: how long a queue makes tasks wait. Only the hot records are read
        (the cache, at most ``cache_size``), and only tasks whose client sends ``task-sent``
        events (``task_send_sent_event``) carry a sent time and a routing key."""
        since = time.time() - window
        with self._lock:
            seen = [
                (r["routing_key"], r["sent"], r["received"])
                for r in self._tasks.values()
                if r["received"] is not None and r["sent"] is not None
            ]
        waits: dict[str, list[float]] = {}
        for key, sent, received in seen:
            if isinstance(key, str) and received >= since:
                waits.setdefault(key, []).append(max(received - sent, 0.0))
        for values in waits.values():
            values.sort()
        return waits

    def workers(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        with self._lock:
            return {name: w.as_dict(now) for name, w in self._workers.items()}

    def worker_status(self) -> dict[str, bool]:
        now = time.time()
        with self._lock:
            return {name: w.online(now) for name, w in self._workers.items()}

    def online_workers(self) -> list[str]:
        return [name for name, up in self.worker_status().items() if up]

    def restore_workers(self, saved: dict[str, dict[str, Any]]) -> None:
        """Take the workers as stored by another instance (a follower's view, see
        ``celeriac/leader.py``); a worker's state is whatever was stored last."""
        with self._lock:
            for hostname, info in saved.items():
                self._workers[hostname] = WorkerState.restored(hostname, info)

    def forget_worker(self, hostname: str) -> None:
        with self._lock:
            self._workers.pop(hostname, None)

    def offline_since(self, hostname: str) -> float | None:
        """When the worker was last heard from, if it is offline now."""
        now = time.time()
        with self._lock:
            w = self._workers.get(hostname)
            if w is None or w.online(now):
                return None
            return w.last_seen


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
