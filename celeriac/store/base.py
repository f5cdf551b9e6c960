"""The interface every task store implements; the API never builds SQL or walks dicts itself.

``put`` is called on the ingest thread for every changed task and must be cheap: a store that
writes to disk only marks the record dirty and writes it on its own thread, coalescing the many
events of one task into one write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

TaskRecord = dict[str, Any]

SORT_KEYS = ("name", "received", "started", "state")


@dataclass(frozen=True)
class TaskQuery:
    """A validated ``/api/tasks`` request. ``None`` means "no filter"."""

    limit: int | None = None
    offset: int = 0
    sort_by: str | None = None  # one of SORT_KEYS; None = newest first by timestamp
    descending: bool = False
    state: str | None = None
    taskname: str | None = None
    workername: str | None = None
    received_start: float | None = None
    received_end: float | None = None
    search: str | None = None


class TaskStore(Protocol):
    def start(self) -> None: ...

    def close(self) -> None:
        """Flush what is pending and release the store."""

    def put(self, record: TaskRecord) -> None:
        """Record the latest version of a task. Called on the ingest thread; never blocks."""

    def get(self, uuid: str) -> TaskRecord | None:
        """A copy of one task, or None."""

    def query(self, q: TaskQuery) -> list[TaskRecord]:
        """Copies of the tasks that match, sorted and sliced as asked."""

    def task_types(self) -> list[str]: ...

    def children(self, uuid: str) -> list[str]: ...

    def count(self) -> int: ...
