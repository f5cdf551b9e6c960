"""What each rule looks at: the live state, the broker's queues, and a tap on the event stream.

Two conditions need more than the state keeps: failure rates need finished tasks counted by
time, and long-running tasks need to know which tasks are running. The :class:`EventTap` sees
every applied event (one of the state's observers, beside the metrics' tally) and keeps
exactly that, in memory bounded by the largest window and a cap on task names: a few dict
operations per event, under a lock of its own, so evaluating rules never holds up ingestion.

Every ``observe_*`` function returns one :class:`Observation` per instance of a rule (a task
type, a queue, a worker, a task): whether its condition holds now, and words for it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from celeriac.alerts.rules import Rule, fmt_seconds
from celeriac.events.base import Event
from celeriac.state import State
from celeriac.store.base import TaskRecord

#: Task names counted for failure rates; names beyond these are not counted (bounded memory).
MAX_TASK_NAMES = 1000
#: Running tasks tracked for long-running alerts.
MAX_RUNNING = 100_000
#: Buckets per window: the failure rate is exact to within 1/BUCKETS of the window.
BUCKETS = 120

_ENDS_RUN = frozenset({"task-succeeded", "task-failed", "task-retried", "task-revoked",
                       "task-rejected"})


@dataclass(frozen=True)
class Observation:
    """One instance of a rule as seen now. ``since`` is when the condition began, if known."""

    key: str
    subject: str
    active: bool
    text: str
    value: float | None = None
    since: float | None = None


@dataclass
class Running:
    name: str
    worker: str
    since: float  # local time the task-started event arrived (immune to worker clock skew)


class EventTap:
    """Finished tasks by name in time buckets, and the tasks running now."""

    def __init__(self, retention: float) -> None:
        self.retention = max(retention, 1.0)
        self.resolution = max(self.retention / BUCKETS, 1.0)
        self._lock = threading.Lock()
        # name -> buckets of [bucket start, succeeded, failed], oldest first
        self._finished: dict[str, deque[list[float]]] = {}
        self._running: dict[str, Running] = {}

    # -- on the ingest thread -------------------------------------------------------------
    def task_event(self, kind: str, ev: Event, rec: TaskRecord) -> None:
        uuid = rec.get("uuid")
        if not isinstance(uuid, str):
            return
        now = time.time()
        with self._lock:
            if kind == "task-started":
                if len(self._running) < MAX_RUNNING:
                    self._running[uuid] = Running(
                        str(rec.get("name") or "?"), str(rec.get("worker") or ""), now)
                return
            if kind not in _ENDS_RUN:
                return
            self._running.pop(uuid, None)
            if kind in ("task-succeeded", "task-failed"):
                name = rec.get("name")
                if isinstance(name, str):
                    self._count(name, now, failed=kind == "task-failed")

    def worker_event(self, kind: str, ev: Event) -> None:
        return None

    def _count(self, name: str, now: float, failed: bool) -> None:
        buckets = self._finished.get(name)
        if buckets is None:
            if len(self._finished) >= MAX_TASK_NAMES:
                return
            buckets = self._finished[name] = deque()
        start = now - now % self.resolution
        if not buckets or buckets[-1][0] != start:
            buckets.append([start, 0, 0])
            while buckets and buckets[0][0] < now - self.retention - self.resolution:
                buckets.popleft()
        buckets[-1][2 if failed else 1] += 1

    # -- on the engine ----------------------------------------------------------------------
    def finished(self, window: float, now: float) -> dict[str, tuple[int, int]]:
        """(succeeded, failed) by task name over the last ``window`` seconds."""
        cutoff = now - window
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            for name, buckets in list(self._finished.items()):
                while buckets and buckets[0][0] < now - self.retention - self.resolution:
                    buckets.popleft()
                if not buckets:
                    del self._finished[name]
                    continue
                ok = failed = 0
                for start, s, f in buckets:
                    if start + self.resolution > cutoff:
                        ok += int(s)
                        failed += int(f)
                if ok or failed:
                    out[name] = (ok, failed)
        return out

    def running(self) -> dict[str, Running]:
        with self._lock:
            return dict(self._running)


# -- the conditions -------------------------------------------------------------------------

def observe_failure_rate(rule: Rule, tap: EventTap, now: float) -> list[Observation]:
    out = []
    for name, (ok, failed) in sorted(tap.finished(rule.window, now).items()):
        if not rule.matches_task(name):
            continue
        total = ok + failed
        rate = failed / total
        active = total >= rule.min_tasks and rate > rule.above
        text = (f"{failed} of {total} {name} tasks failed in the last "
                f"{fmt_seconds(rule.window)} ({rate:.0%})")
        out.append(Observation(name, f"task {name}", active, text, round(rate, 4)))
    return out


def observe_queue_length(rule: Rule, lengths: dict[str, int]) -> list[Observation]:
    out = []
    for queue in rule.queues or sorted(lengths):
        if queue not in lengths:
            continue
        n = lengths[queue]
        out.append(Observation(queue, f"queue {queue}", n > rule.above,
                               f"{n} messages waiting in queue {queue}", float(n)))
    return out


def observe_workers(
    rule: Rule, state: State, watching_since: float, now: float
) -> list[Observation]:
    """Workers heard from since this instance began watching. Workers known only from the
    stored history (listed offline after a restart) are left out: a worker retired last month
    would otherwise fire on every restart and never resolve."""
    out = []
    for hostname, info in sorted(state.workers().items()):
        last = info.get("last_heartbeat")
        if not rule.matches_worker(hostname) or not isinstance(last, float | int):
            continue
        if last < watching_since:
            continue
        online = bool(info.get("online"))
        if online:
            text = f"worker {hostname} is online"
        else:
            text = f"worker {hostname} is offline, last heard {fmt_seconds(now - last)} ago"
        out.append(Observation(hostname, f"worker {hostname}", not online, text,
                               0.0 if online else 1.0))
    return out


def observe_long_running(
    rule: Rule, tap: EventTap, worker_status: dict[str, bool], now: float
) -> list[Observation]:
    """Tasks past the limit on a worker still online (a dead worker's tasks are the
    worker_offline rule's business: they will never report finishing)."""
    out = []
    for uuid, run in sorted(tap.running().items()):
        if not rule.matches_task(run.name):
            continue
        elapsed = now - run.since
        if elapsed < rule.duration or not worker_status.get(run.worker, True):
            continue
        where = f" on {run.worker}" if run.worker else ""
        text = f"task {run.name} [{uuid}] has been running{where} for {fmt_seconds(elapsed)}"
        out.append(Observation(uuid, f"task {run.name} [{uuid}]", True, text,
                               round(elapsed, 3), run.since))
    return out


def observe_silence(rule: Rule, last_event_at: float | None, watching_since: float,
                    now: float) -> list[Observation]:
    """Silence counts from the last event, or from when this instance began watching."""
    last = max(last_event_at or 0.0, watching_since)
    quiet = max(now - last, 0.0)
    if quiet >= rule.duration:
        text = f"no events for {fmt_seconds(quiet)}"
    else:
        text = "events are arriving"
    return [Observation("", "event stream", quiet >= rule.duration, text, round(quiet, 3),
                        last)]
