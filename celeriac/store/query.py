"""Filtering and sorting of task records in Python, for stores that hold records in memory.

The semantics are Flower 2.2.0's, so that a page of ``/api/tasks`` holds the same tasks in the
same order:

- ``taskname``, ``workername`` and ``state`` match whole values, case-insensitively; a task
  without a worker never matches a ``workername``;
- ``received_start`` / ``received_end`` are inclusive bounds, and a task not received yet (only
  sent) is not filtered out by them;
- the default order is newest first by ``timestamp``; ``sort_by`` orders by the value (names
  and states case-insensitively), tasks without a value first when ascending and last when
  descending; ties are broken by task id, so pages never overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from celeriac.store.base import TaskQuery, TaskRecord

NUMERIC_SORT_KEYS = frozenset({"received", "started", "runtime", "timestamp"})


def matcher(q: TaskQuery) -> Callable[[TaskRecord], bool]:
    state = q.state.casefold() if q.state else None
    name = q.taskname.casefold() if q.taskname else None
    worker = q.workername.casefold() if q.workername else None

    def match(r: TaskRecord) -> bool:
        if state and str(r.get("state") or "").casefold() != state:
            return False
        if name and str(r.get("name") or "").casefold() != name:
            return False
        if worker and str(r.get("worker") or "").casefold() != worker:
            return False
        if q.received_start is not None or q.received_end is not None:
            received = r.get("received")
            if received is not None:
                if q.received_start is not None and received < q.received_start:
                    return False
                if q.received_end is not None and received > q.received_end:
                    return False
        return True

    return match


def sort_key(key: str) -> Callable[[TaskRecord], tuple[bool, Any, str]]:
    numeric = key in NUMERIC_SORT_KEYS

    def sort_value(r: TaskRecord) -> tuple[bool, Any, str]:
        value = r.get(key)
        uuid = str(r.get("uuid") or "")
        if value is None:
            return False, "", uuid
        if numeric:
            try:
                return True, float(value), uuid
            except (TypeError, ValueError):
                return True, 0.0, uuid
        return True, str(value).casefold(), uuid

    return sort_value


def _newest_first(r: TaskRecord) -> tuple[float, str]:
    return r.get("timestamp") or 0.0, str(r.get("uuid") or "")


def sort_and_slice(records: list[TaskRecord], q: TaskQuery) -> list[TaskRecord]:
    if q.sort_by is None:
        records.sort(key=_newest_first, reverse=True)
    else:
        records.sort(key=sort_key(q.sort_by), reverse=q.descending)
    offset = max(q.offset, 0)
    end = None if q.limit is None else offset + max(q.limit, 0)
    return records[offset:end]


def checked_page(
    records: Iterable[TaskRecord], match: Callable[[TaskRecord], bool], offset: int,
    limit: int | None,
) -> list[TaskRecord]:  # fmt: skip
    """The page (``offset``, ``limit``) of the ``records`` that ``match`` accepts, for a search
    checked in Python while the database streams its candidates in order: reading stops at
    the last record the page needs."""
    out: list[TaskRecord] = []
    skip = offset
    for record in records:
        if not match(record):
            continue
        if skip:
            skip -= 1
            continue
        out.append(record)
        if len(out) == limit:
            break
    return out
