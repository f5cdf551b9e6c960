"""The interface every task store implements: the contract between the live state, the API and
a storage engine (memory, SQLite, PostgreSQL). The API never builds SQL or walks dicts itself.

Threads: ``put`` and ``put_worker`` are called on the ingest thread, under the state's lock,
for every change, so they must be cheap and never block on I/O: a store that writes to disk
only files the record and writes it on its own thread, coalescing the many events of one task
into one write. Every other method may be called from any thread, concurrently.

Records are plain dicts with the keys of ``celeriac.constants.TASK_FIELDS``; a store keeps the
values it is given as they are (str, int, float, None) and may keep other types as their
``str``. ``children`` is derived by the store from the other tasks' ``parent_id``.

Failures: a store that cannot be opened raises :class:`StoreError` from its constructor (the
command line prints it as one line and exits). Once running, a store whose writes fail keeps
what it could not write, retries, reports it in :meth:`TaskStore.stats`, and keeps answering
reads: the monitor goes on serving what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

TaskRecord = dict[str, Any]

SORT_KEYS = ("name", "received", "started", "state")

#: The types a value of a task's field is stored as it is.
PLAIN_TYPES = frozenset({type(None), str, int, float})


def plain(value: Any) -> Any:
    """A value both databases store and JSON carries as is (an int within 64 bits); anything
    else is kept as its ``str``, a bool as an int."""
    if type(value) in PLAIN_TYPES and not (
        type(value) is int and not -(2**63) <= value < 2**63
    ):
        return value
    return int(value) if isinstance(value, bool) else str(value)


class StoreError(Exception):
    """The task store cannot be used: the message names it and says why, in one line."""


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
    search: str | None = None  # Flower 2.2's search syntax, see store/search.py


class TaskStore(Protocol):
    """What the state, the API and the UI need from a store. Filters, orders and search
    semantics are those of ``store/query.py`` and ``store/search.py``; the tests in
    ``tests/store/`` hold every store to the same answers.

    Optional extras, looked up with ``getattr`` by their users: ``count_by_state() ->
    dict[str, int]`` (a store that counts by state without a scan; the dashboard and /metrics
    use it instead of walking every task).
    """

    def start(self) -> None:
        """Start background work (a writer thread, retention). Idempotent."""

    def close(self) -> None:
        """Write what is pending, stop background work and release the store. Idempotent."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was put before the call is stored; False on timeout or failure."""

    def put(self, record: TaskRecord) -> None:
        """Record the latest version of a task. Ingest thread; never blocks on I/O. The store
        may keep a reference to ``record`` until it is written: the caller only changes it
        under its own lock and puts it again after changing it (the state: once at the end of
        each batch of events)."""

    def put_many(self, records: list[TaskRecord]) -> None:
        """:meth:`put` for each record, at once: the state puts the tasks a batch of events
        changed once at the end of the batch, instead of once per event."""

    def put_worker(self, hostname: str, info: dict[str, Any]) -> None:
        """Keep a worker's last known state (JSON-able), restored by :meth:`workers` after a
        restart. Ingest thread; never blocks on I/O."""

    def get(self, uuid: str) -> TaskRecord | None:
        """A copy of one task with its ``children`` (even if not written yet), or None."""

    def query(self, q: TaskQuery) -> list[TaskRecord]:
        """Copies of the tasks that match, sorted and sliced as asked. Raises
        ``store.search.SearchError`` (a ValueError) for a malformed ``q.search``."""

    def task_types(self) -> list[str]:
        """Every task name stored, sorted."""

    def children(self, uuid: str) -> list[str]:
        """Tasks whose ``parent_id`` is ``uuid``, in the order they were first seen."""

    def count(self) -> int:
        """How many tasks are stored (a change of the last moments may be missing)."""

    def workers(self) -> dict[str, dict[str, Any]]:
        """Every worker's last known state, as given to :meth:`put_worker`."""

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and the status page: at least ``tasks``, ``pending`` (changes
        not written yet), ``written``, ``flushes``, ``pruned``, ``last_flush_seconds``,
        ``write_errors`` ({kind: count}), ``last_error`` (str or None), ``failing`` (bool)."""
