"""One poller behind every live page: it reads the state and the store, never the ingest path.

The hub wakes about once a second while at least one browser listens (and at once when a
follower hears that the leader wrote to the shared store), asks the state for the
workers and the store for the newest tasks (in a thread, so a slow store never blocks the event
loop), and publishes a numbered :class:`Tick`. Each open stream picks up whatever ticks it has
not sent yet at its own pace (see :mod:`celeriac.web.stream`): a slow browser only falls behind
itself, and the event reader never waits for anybody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from celeriac.cluster import Cluster
from celeriac.constants import FINAL_STATES
from celeriac.store.base import TaskQuery, TaskRecord, TaskStore

log = logging.getLogger("celeriac.web")

#: Fields of a task sent to the browser for its table row.
ROW_FIELDS = ("uuid", "name", "state", "worker", "received", "started", "succeeded", "failed",
              "timestamp", "runtime", "args", "kwargs", "result", "exception", "retries")
#: Long values are cut for table rows; the task page shows them whole.
ROW_TEXT_MAX = 200
#: How many of the newest tasks each tick looks at. More changes than this in one tick mark the
#: tick ``more``: the browser then reloads its table instead of trusting the delta.
SCAN = 500
#: Counting tasks by state walks the whole store unless the store can count for us; above this
#: many tasks the walk is not done (the dashboard then shows the counts as unknown).
COUNT_SCAN_LIMIT = 200_000
#: Counts are redone at most this often, and a walk that took t seconds waits COUNT_BACKOFF * t
#: before the next one, so that counting never takes more than ~5 % of the process.
COUNT_EVERY = 3.0
COUNT_BACKOFF = 20.0
#: Ticks kept for streams that fell behind; one further behind is told to reload.
HISTORY = 60
#: Samples of the throughput chart kept (one per tick, so 15 minutes).
SAMPLES = 900


@dataclass
class Tick:
    version: int
    ts: float
    tasks: dict[str, dict[str, Any]]
    more: bool
    sample: tuple[float, int, int, int]  # (ts, events applied, succeeded, failed)


@dataclass
class Snapshot:
    """What every stream sends along with the task delta: small, replaced each tick."""

    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] | None = None
    worker_counts: dict[str, dict[str, int]] | None = None
    total: int = 0


def row(record: TaskRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ROW_FIELDS:
        value = record.get(key)
        if isinstance(value, str) and len(value) > ROW_TEXT_MAX:
            value = value[:ROW_TEXT_MAX] + "…"
        elif value is not None and not isinstance(value, str | int | float | bool):
            value = repr(value)[:ROW_TEXT_MAX]
        out[key] = value
    return out


def count_tasks(
    store: TaskStore,
) -> tuple[dict[str, int], dict[str, dict[str, int]] | None] | None:
    """Tasks by state and by (worker, state); None when the store is too big to walk. A store
    that counts by state without a walk gives no per-worker split (None: shown as unknown,
    not as zeros)."""
    counter = getattr(store, "count_by_state", None)
    if callable(counter):  # a store that counts with an index: no walk, no per-worker split
        return dict(counter()), None
    if store.count() > COUNT_SCAN_LIMIT:
        return None
    by_state: Counter[str] = Counter()
    by_worker: dict[str, Counter[str]] = {}
    for rec in store.query(TaskQuery()):
        state = rec.get("state") or "PENDING"
        by_state[state] += 1
        worker = rec.get("worker")
        if worker:
            by_worker.setdefault(worker, Counter())[state] += 1
    return dict(by_state), {w: dict(c) for w, c in by_worker.items()}


def worker_summary(info: dict[str, Any]) -> dict[str, Any]:
    keep = ("hostname", "online", "last_heartbeat", "active", "processed", "loadavg", "freq",
            "sw_ver", "sw_sys")
    return {k: info.get(k) for k in keep}


class Hub:
    def __init__(self, cluster: Cluster, interval: float = 1.0) -> None:
        self.cluster = cluster
        self.interval = interval
        self.version = 0
        self.snapshot = Snapshot()
        self.history: deque[Tick] = deque(maxlen=HISTORY)
        self.samples: deque[tuple[float, int, int, int]] = deque(maxlen=SAMPLES)
        self._changed = asyncio.Condition()
        self._subscribers = 0
        self._task: asyncio.Task[None] | None = None
        # uuid -> (state, timestamp) last published, to tell changed tasks from unchanged ones.
        self._seen: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._counting = False
        self._applied_at_scan = -1
        self._applied_at_count = -1
        self._count_due = 0.0
        self._succeeded = 0
        self._failed = 0
        # A follower on a shared store hears the leader's writes (store/pg_notify.py): the
        # next tick runs at once instead of at the end of the interval.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poked = asyncio.Event()
        watch = getattr(cluster.store, "watch", None)
        if callable(watch):
            watch(lambda _note: self.poke())

    # -- subscriptions ----------------------------------------------------------------------
    def subscribe(self) -> None:
        self._subscribers += 1
        self._loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unsubscribe(self) -> None:
        self._subscribers = max(0, self._subscribers - 1)

    def poke(self) -> None:
        """Tick soon (any thread): the store changed."""
        loop = self._loop
        if loop is not None and self._subscribers > 0 and not loop.is_closed():
            loop.call_soon_threadsafe(self._poked.set)

    async def wait_after(self, version: int, timeout: float) -> bool:
        """Wait until a tick newer than ``version`` exists; False on timeout."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version > version), timeout
                )
        return self.version > version

    # -- the poller -------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # What finished while nobody watched is sent, but not counted as this second's work.
        self._counting = False
        while self._subscribers > 0:
            started = loop.time()
            try:
                await self.tick()
            except Exception:
                log.exception("live update failed")
            await asyncio.sleep(0.1)  # at most ten ticks a second, however often poked
            if not self._poked.is_set():
                with contextlib.suppress(TimeoutError):
                    left = self.interval - (loop.time() - started)
                    await asyncio.wait_for(self._poked.wait(), max(0.0, left))
            self._poked.clear()
        self._task = None

    async def tick(self) -> None:
        cluster = self.cluster
        state = cluster.state
        # A follower on a shared store applies no events: the leader's writes count instead.
        applied = state.applied + cluster.store_changes
        tasks: dict[str, dict[str, Any]] = {}
        more = False
        if applied != self._applied_at_scan:
            self._applied_at_scan = applied
            records = await asyncio.to_thread(cluster.store.query, TaskQuery(limit=SCAN))
            tasks = self._changed_rows(records)
            more = len(tasks) >= SCAN
            self._counting = True
        now = time.time()
        snap = self.snapshot
        if now >= self._count_due and applied != self._applied_at_count:
            self._applied_at_count = applied
            counted = await asyncio.to_thread(count_tasks, cluster.store)
            snap.counts, snap.worker_counts = counted if counted else (None, None)
            snap.total = await asyncio.to_thread(cluster.store.count)
            took = time.time() - now
            self._count_due = now + max(COUNT_EVERY, COUNT_BACKOFF * took)
        snap.workers = {
            name: worker_summary(info) for name, info in sorted(state.workers().items())
        }
        sample = (round(now, 3), applied, self._succeeded, self._failed)
        self.samples.append(sample)
        async with self._changed:
            self.version += 1
            self.history.append(Tick(self.version, now, tasks, more, sample))
            self._changed.notify_all()

    def _changed_rows(self, records: list[TaskRecord]) -> dict[str, dict[str, Any]]:
        changed: dict[str, dict[str, Any]] = {}
        for rec in records:
            uuid = rec.get("uuid")
            if not uuid:
                continue
            mark = (rec.get("state"), rec.get("timestamp"))
            old = self._seen.get(uuid)
            if old == mark:
                continue
            self._seen[uuid] = mark
            self._seen.move_to_end(uuid)
            changed[uuid] = row(rec)
            if not self._counting:
                continue
            if rec.get("state") in FINAL_STATES and (old is None or old[0] != rec.get("state")):
                if rec.get("state") == "SUCCESS":
                    self._succeeded += 1
                elif rec.get("state") == "FAILURE":
                    self._failed += 1
        while len(self._seen) > SCAN * 8:
            self._seen.popitem(last=False)
        return changed
