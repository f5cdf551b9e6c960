"""What the charts and the failure groups are made of, and how a store in memory computes them.

The UI asks every store the same questions: tasks finished per time bucket, the same per task
type with runtime percentiles, failed tasks grouped by task name and exception type, and every
task matching a filter, page by page (exports and bulk actions). A store that can answer them
itself (SqliteStore and PostgresStore, in SQL) has the methods of :class:`AggregateStore`, an
optional extra of the store interface looked up with ``getattr``; for any other store
(MemoryStore) the functions here answer over its records, with the same definitions, so every
store gives the same numbers:

- a task counts in the bucket of its last event's ``timestamp`` (for a finished task that is
  when it finished), buckets being ``int((timestamp - since) // bucket)``;
- runtime percentiles are nearest-rank, over the succeeded tasks that report a runtime;
- a failure's exception type is its ``exception`` text up to the first ``(`` (the event
  carries ``repr(exc)``, e.g. ``TaskError('boom')``), or the whole text when there is none;
  the group's ``example`` is the exception text of its latest failure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from celeriac.constants import FAILURE, SUCCESS
from celeriac.store.base import TaskQuery, TaskRecord, TaskStore

#: The percentiles every runtime summary carries.
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Bucket:
    """Tasks that finished in one time bucket (``index`` counts buckets from ``since``)."""

    index: int
    succeeded: int = 0
    failed: int = 0


@dataclass(frozen=True)
class TypeBucket:
    """One task type in one bucket: counts, and runtime percentiles of the succeeded ones
    (``runtimes`` is how many had a runtime; the percentiles are None when none had)."""

    name: str
    index: int
    succeeded: int = 0
    failed: int = 0
    runtimes: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


@dataclass
class FailureGroup:
    """Failed tasks of one task name and exception type; ``series`` counts the ones whose last
    event is in each bucket since ``since`` (bucket index -> count)."""

    name: str
    exception_type: str
    count: int
    first: float | None
    last: float | None
    example: str | None = None  # one exception text of the group, for a reader
    series: dict[int, int] = field(default_factory=dict)


def exception_type(exception: Any) -> str:
    text = "" if exception is None else str(exception)
    cut = text.find("(")
    return text if cut < 0 else text[:cut]


def rank(n: int, percent: int) -> int:
    """The 1-based nearest rank of a percentile: ceil(n * percent / 100), at least 1."""
    return max(1, (n * percent + 99) // 100)


def percentiles(values: list[float]) -> tuple[float | None, ...]:
    if not values:
        return (None,) * len(PERCENTILES)
    ordered = sorted(values)
    return tuple(ordered[rank(len(ordered), p) - 1] for p in PERCENTILES)


def _bucket(ts: Any, since: float, bucket: float) -> int | None:
    if not isinstance(ts, int | float) or isinstance(ts, bool) or ts < since:
        return None
    return int((ts - since) / bucket)  # as SQLite's CAST(... AS INTEGER), ts >= since


#: Buckets a store counts as ranges of its (state, timestamp) index at most (see
#: :func:`bucket_edges`); any later ones (a clock far ahead) it groups by bucket number.
MAX_RANGES = 2000


def bucket_edges(since: float, bucket: float, top: float | None) -> list[float]:
    """The first timestamp (double) of each bucket from 0 to the one after ``top``'s, capped at
    :data:`MAX_RANGES` buckets: a task is in bucket ``i`` exactly when ``edges[i] <= timestamp
    < edges[i + 1]``, since the bucket number never decreases as the timestamp grows. A store
    counts each bucket as an index range this way instead of sorting a window's rows by
    their bucket number. Floats only (``since``, ``bucket`` finite, ``bucket > 0``)."""
    if top is None or top < since:
        return [since]
    count = min(int((top - since) / bucket) + 1, MAX_RANGES)
    return [_edge(i, since, bucket) for i in range(count + 1)]


def _edge(i: int, since: float, bucket: float) -> float:
    def at(t: float) -> int:
        return int((t - since) / bucket)  # the arithmetic of _bucket and of the stores' SQL

    t = since + i * bucket
    while t > since and at(math.nextafter(t, -math.inf)) >= i:
        t = math.nextafter(t, -math.inf)
    while at(t) < i:
        t = math.nextafter(t, math.inf)
    return t


def _runtime(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def throughput(records: Iterable[TaskRecord], since: float, bucket: float) -> list[Bucket]:
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        state = r.get("state")
        if state not in (SUCCESS, FAILURE):
            continue
        i = _bucket(r.get("timestamp"), since, bucket)
        if i is not None:
            counts[i][0 if state == SUCCESS else 1] += 1
    return [Bucket(i, ok, bad) for i, (ok, bad) in sorted(counts.items())]


def type_buckets(
    records: Iterable[TaskRecord], since: float, bucket: float, name: str | None = None
) -> list[TypeBucket]:
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    runtimes: dict[tuple[str, int], list[float]] = defaultdict(list)
    wanted = name.casefold() if name else None
    for r in records:
        state, task = r.get("state"), r.get("name")
        if state not in (SUCCESS, FAILURE) or not task:
            continue
        if wanted is not None and str(task).casefold() != wanted:
            continue
        i = _bucket(r.get("timestamp"), since, bucket)
        if i is None:
            continue
        key = (str(task), i)
        counts[key][0 if state == SUCCESS else 1] += 1
        runtime = _runtime(r.get("runtime"))
        if state == SUCCESS and runtime is not None:
            runtimes[key].append(runtime)
    return [
        TypeBucket(task, i, ok, bad, len(runtimes[(task, i)]), *percentiles(runtimes[(task, i)]))
        for (task, i), (ok, bad) in sorted(counts.items())
    ]


def failure_groups(
    records: Iterable[TaskRecord], since: float, bucket: float
) -> list[FailureGroup]:
    groups: dict[tuple[str, str], FailureGroup] = {}
    for r in records:
        if r.get("state") != FAILURE:
            continue
        key = (str(r.get("name") or ""), exception_type(r.get("exception")))
        ts = r.get("timestamp")
        ts = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None
        g = groups.get(key)
        if g is None:
            g = groups[key] = FailureGroup(key[0], key[1], 0, ts, ts, r.get("exception"))
        g.count += 1
        if ts is not None:
            g.first = ts if g.first is None else min(g.first, ts)
            if g.last is None or ts > g.last:
                g.last, g.example = ts, r.get("exception")
        i = _bucket(ts, since, bucket)
        if i is not None:
            g.series[i] = g.series.get(i, 0) + 1
    return sort_groups(groups.values())


def sort_groups(groups: Iterable[FailureGroup]) -> list[FailureGroup]:
    """Most recent first, then the biggest."""
    return sorted(groups, key=lambda g: (-(g.last or 0.0), -g.count, g.name, g.exception_type))


def batches(records: Iterable[TaskRecord], size: int) -> Iterator[list[TaskRecord]]:
    batch: list[TaskRecord] = []
    for r in records:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class AggregateStore(Protocol):
    """The optional extra of a store that answers the UI's aggregate questions itself."""

    def throughput(self, since: float, bucket: float) -> list[Bucket]: ...

    def task_type_stats(
        self, since: float, bucket: float, name: str | None = None
    ) -> list[TypeBucket]: ...

    def failure_groups(self, since: float, bucket: float) -> list[FailureGroup]: ...

    def iter_matching(self, q: TaskQuery, batch: int = 1000) -> Iterator[list[TaskRecord]]:
        """Every task matching ``q``'s filters and search, newest first, ``batch`` at a time,
        without holding them all; ``q``'s sort, limit and offset are ignored. A malformed
        search raises (a ValueError) at the call, before any page."""
        ...


#: Longest a bulk action or an export waits for the store to write what it was given.
FLUSH_WAIT = 5.0
#: Rows per page when a store without aggregates of its own is read through ``query``.
FALLBACK_PAGE = 2000


def _newest(store: TaskStore, since: float | None = None,
            state: str | None = None) -> Iterator[TaskRecord]:  # fmt: skip
    """The store's tasks newest first, down to ``since``, through its plain ``query``.

    A store in memory sorts once; any other is paged, so a big store is never read whole
    (a window's tasks are the newest, and the walk stops at the first one older than it)."""
    from celeriac.store.memory import MemoryStore  # a store module; imported late

    q = TaskQuery(state=state)
    pages: Iterable[list[TaskRecord]] = (
        [store.query(q)] if isinstance(store, MemoryStore) else _pages(store, q)
    )
    for page in pages:
        for r in page:
            ts = r.get("timestamp")
            if since is not None and isinstance(ts, int | float) and ts < since:
                return
            yield r


def _pages(store: TaskStore, q: TaskQuery) -> Iterator[list[TaskRecord]]:
    offset = 0
    while True:
        page = store.query(replace(q, limit=FALLBACK_PAGE, offset=offset))
        if page:
            yield page
        if len(page) < FALLBACK_PAGE:
            return
        offset += len(page)


def store_throughput(store: TaskStore, since: float, bucket: float) -> list[Bucket]:
    own = getattr(store, "throughput", None)
    if own:
        result: list[Bucket] = own(since, bucket)
        return result
    return throughput(_newest(store, since), since, bucket)


def store_type_stats(
    store: TaskStore, since: float, bucket: float, name: str | None = None
) -> list[TypeBucket]:
    own = getattr(store, "task_type_stats", None)
    if own:
        result: list[TypeBucket] = own(since, bucket, name)
        return result
    return type_buckets(_newest(store, since), since, bucket, name)


def store_failure_groups(store: TaskStore, since: float, bucket: float) -> list[FailureGroup]:
    own = getattr(store, "failure_groups", None)
    if own:
        result: list[FailureGroup] = own(since, bucket)
        return result
    return failure_groups(_newest(store, state=FAILURE), since, bucket)


def store_matching(
    store: TaskStore, q: TaskQuery, batch: int = 1000
) -> Iterator[list[TaskRecord]]:
    """Every task matching ``q`` (newest first, in batches); raises on a malformed search.

    What was put before the call is written first (a store writes in batches on a thread of
    its own), so a task just listed by ``/api/tasks`` is also exported and acted on."""
    flush = getattr(store, "flush", None)
    if flush is not None:
        flush(FLUSH_WAIT)
    own = getattr(store, "iter_matching", None)
    if own:
        pages: Iterator[list[TaskRecord]] = own(q, batch)
        return pages
    everything = replace(q, limit=None, offset=0, sort_by=None, descending=False)
    store.query(replace(everything, limit=1))  # a malformed search raises now
    from celeriac.store.memory import MemoryStore

    if isinstance(store, MemoryStore):
        return batches(store.query(everything), batch)
    return batches((r for page in _pages(store, everything) for r in page), batch)
