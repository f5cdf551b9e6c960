"""A bounded in-memory task store: used when persistence is switched off (``--db memory``).

Nothing survives a restart. It answers exactly as the SQLite store does (same filters, order,
search), scanning its records: fine for the ``max_tasks`` it holds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, defaultdict
from typing import Any

from celeriac.constants import FINAL_STATES
from celeriac.store.base import TaskQuery, TaskRecord
from celeriac.store.query import matcher, sort_and_slice
from celeriac.store.search import compile_search

#: Seconds between two walks for tasks older than ``max_age``.
EXPIRE_EVERY = 1.0


class MemoryStore:
    """Keeps the newest ``max_tasks`` tasks; the oldest-inserted is evicted first. With
    ``max_age``, finished tasks whose last event is older than that many seconds go too.

    ``put`` keeps a snapshot of the record, so readers never see one half-merged by the ingest
    thread. A child is linked to its parent whenever its ``parent_id`` first shows up, which
    may be on a late ``task-received`` after the child already has a record.
    """

    def __init__(self, max_tasks: int, max_age: float | None = None) -> None:
        self._max = max_tasks
        self._max_age = max_age
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self._types: set[str] = set()
        self._children: defaultdict[str, list[str]] = defaultdict(list)
        self._parent: dict[str, str] = {}
        self._workers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._pruned = 0
        self._expire_due = 0.0

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def put_many(self, records: list[TaskRecord]) -> None:
        for record in records:
            self.put(record)

    def put(self, record: TaskRecord) -> None:
        uuid = record["uuid"]
        snapshot = dict(record)
        with self._lock:
            if uuid not in self._tasks:
                while len(self._tasks) >= self._max:
                    old, _ = self._tasks.popitem(last=False)
                    self._forget(old)
            parent = snapshot.get("parent_id")
            if parent and parent != uuid and uuid not in self._parent:
                self._parent[uuid] = parent
                self._children[parent].append(uuid)
            self._tasks[uuid] = snapshot
            name = record.get("name")
            if name and type(name) is str:  # an event may carry anything there
                self._types.add(name)
            if self._max_age is not None:
                self._expire()

    def _forget(self, uuid: str) -> None:
        self._children.pop(uuid, None)
        self._parent.pop(uuid, None)
        self._pruned += 1

    def _expire(self) -> None:
        """Drop finished tasks older than max_age, oldest-inserted first (under the lock).

        Insertion order is about time order, so the walk stops at the first recent task; old
        unfinished ones are stepped over and kept."""
        now = time.monotonic()
        if now < self._expire_due or self._max_age is None:
            return
        self._expire_due = now + EXPIRE_EVERY
        cutoff = time.time() - self._max_age
        old = []
        for uuid, rec in self._tasks.items():
            ts = rec.get("timestamp")
            if ts is not None and ts >= cutoff:
                break
            if rec.get("state") in FINAL_STATES:
                old.append(uuid)
        for uuid in old:
            del self._tasks[uuid]
            self._forget(uuid)

    def put_worker(self, hostname: str, info: dict[str, Any]) -> None:
        with self._lock:
            self._workers[hostname] = info

    def get(self, uuid: str) -> TaskRecord | None:
        with self._lock:
            rec = self._tasks.get(uuid)
            if rec is None:
                return None
            out = dict(rec)
            out["children"] = list(self._children.get(uuid, ()))
            return out

    def query(self, q: TaskQuery) -> list[TaskRecord]:
        found = compile_search(q.search)  # raises SearchError before any work
        with self._lock:
            records = list(self._tasks.values())
        match = matcher(q)
        return [dict(r) for r in sort_and_slice([r for r in records if match(r) and found(r)], q)]

    def task_types(self) -> list[str]:
        with self._lock:
            return sorted(self._types)

    def children(self, uuid: str) -> list[str]:
        with self._lock:
            return list(self._children.get(uuid, ()))

    def count(self) -> int:
        with self._lock:
            return len(self._tasks)

    def workers(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._workers)

    def stats(self) -> dict[str, Any]:
        return {
            "pending": 0,
            "tasks": self.count(),
            "written": 0,
            "flushes": 0,
            "pruned": self._pruned,
            "last_flush_seconds": 0.0,
            "write_errors": {},
            "last_error": None,
            "failing": False,
        }
