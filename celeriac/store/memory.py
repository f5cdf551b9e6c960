"""A bounded in-memory task store: the simplest store, used when persistence is switched off."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict

from celeriac.store.base import TaskQuery, TaskRecord
from celeriac.store.query import matcher, sort_and_slice


class MemoryStore:
    """Keeps the newest ``max_tasks`` tasks; the oldest-inserted is evicted first.

    ``put`` keeps a snapshot of the record, so readers never see one half-merged by the ingest
    thread. A child is linked to its parent whenever its ``parent_id`` first shows up, which
    may be on a late ``task-received`` after the child already has a record.
    """

    def __init__(self, max_tasks: int) -> None:
        self._max = max_tasks
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()
        self._types: set[str] = set()
        self._children: defaultdict[str, list[str]] = defaultdict(list)
        self._parent: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def put(self, record: TaskRecord) -> None:
        uuid = record["uuid"]
        snapshot = dict(record)
        with self._lock:
            if uuid not in self._tasks:
                while len(self._tasks) >= self._max:
                    old, _ = self._tasks.popitem(last=False)
                    self._children.pop(old, None)
                    self._parent.pop(old, None)
            parent = snapshot.get("parent_id")
            if parent and parent != uuid and uuid not in self._parent:
                self._parent[uuid] = parent
                self._children[parent].append(uuid)
            self._tasks[uuid] = snapshot
            if record.get("name"):
                self._types.add(record["name"])

    def get(self, uuid: str) -> TaskRecord | None:
        with self._lock:
            rec = self._tasks.get(uuid)
            if rec is None:
                return None
            out = dict(rec)
            out["children"] = list(self._children.get(uuid, ()))
            return out

    def query(self, q: TaskQuery) -> list[TaskRecord]:
        with self._lock:
            records = list(self._tasks.values())
        match = matcher(q)
        return [dict(r) for r in sort_and_slice([r for r in records if match(r)], q)]

    def task_types(self) -> list[str]:
        with self._lock:
            return sorted(self._types)

    def children(self, uuid: str) -> list[str]:
        with self._lock:
            return list(self._children.get(uuid, ()))

    def count(self) -> int:
        with self._lock:
            return len(self._tasks)
