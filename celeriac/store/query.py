"""Filtering and sorting of task records in Python, for stores that hold records in memory."""

from __future__ import annotations

from collections.abc import Callable

from celeriac.store.base import TaskQuery, TaskRecord


def matcher(q: TaskQuery) -> Callable[[TaskRecord], bool]:
    state = q.state.upper() if q.state else None
    name = q.taskname.lower() if q.taskname else None
    worker = q.workername.lower() if q.workername else None

    def match(r: TaskRecord) -> bool:
        if state and r.get("state") != state:
            return False
        if name and (r.get("name") or "").lower() != name:
            return False
        if worker and (r.get("worker") or "").lower() != worker:
            return False
        if q.received_start is not None or q.received_end is not None:
            received = r.get("received")
            if received is None:
                return False
            if q.received_start is not None and received <= q.received_start:
                return False
            if q.received_end is not None and received >= q.received_end:
                return False
        return True

    return match


def sort_and_slice(records: list[TaskRecord], q: TaskQuery) -> list[TaskRecord]:
    if q.sort_by is None:
        records.sort(key=lambda r: r.get("timestamp") or 0.0, reverse=True)
    else:
        key = q.sort_by
        # Tasks without the sort key go last in either direction, as an unknown value.
        present = [r for r in records if r.get(key) is not None]
        missing = [r for r in records if r.get(key) is None]
        present.sort(key=lambda r: r[key], reverse=q.descending)
        records = present + missing
    end = None if q.limit is None else q.offset + q.limit
    return records[q.offset : end]
