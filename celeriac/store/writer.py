"""The batching writer both persistent stores share: pending dict, one writer thread, throttle.

Why this shape: ``put`` runs on the ingest thread for every event, and a slow disk or database
must never make the event reader fall behind the broker. So ``put`` only files the live record
under its uuid in a pending dict (the events of one task coalesce there), and one writer thread
swaps that dict every ``flush_interval`` and hands the batch to the engine's ``_write_batch``,
which writes it in one transaction. The batch being written stays readable (``_inflight``), and
queries merge in the few tasks not written yet, so a task is listed as soon as it is seen.
When the writer falls far behind (a burst, a slow disk), ``put`` waits for it to take the
batch once ``max_pending`` tasks wait: memory stays bounded, and the event reader's own
backlog absorbs the burst.

If a write fails (disk full, file made read-only, a lost connection ...) the batch goes back
into the pending dict for the next try, the failure is logged once per kind and counted in
:meth:`BatchingStore.stats`, and the writer keeps going: the monitor keeps serving what it holds.

The engines (``sqlite.py``, ``postgres.py``) keep their SQL: they implement ``_write_batch``,
``_prune``, ``_describe_error``, ``_stored`` (a page of written tasks), ``_live`` and ``_order``
(an unwritten task, and the database's order in Python), ``_exclude``, ``_tasks_known`` and
``_close_connections``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from celeriac.constants import TASK_FIELDS
from celeriac.store.base import SORT_KEYS, TaskQuery, TaskRecord
from celeriac.store.query import matcher
from celeriac.store.search import Node, compile_search, parse_search

#: The interpreter's GIL switch interval while a writer runs (see BatchingStore.start).
SWITCH_INTERVAL = 0.001
#: Longest a put waits for the writer to take a full batch (then it files and goes on).
THROTTLE_WAIT = 2.0
#: Most tasks put but not written yet that a query or count merges in; beyond that the writer
#: is far behind (a burst), and answers show what is written until it catches up.
OVERLAY_MAX = 2000
#: How long close() gives the writer to write what is pending, in seconds. A monitor asked to
#: stop must stop: a service manager kills it soon anyway (docker after 10 s), and a writer
#: hung on a dead disk would otherwise hold it forever. Ten seconds is far beyond a healthy
#: last batch (a full one of 5,000 tasks takes well under a second); what is not written by
#: then is logged as lost. An engine that can give up by itself (the SQLite writer process:
#: killed) is told the deadline (_closing); a writer thread stuck in a call cannot be
#: stopped, and is left behind after CLOSE_GRACE more.
CLOSE_TIMEOUT = 10.0
#: How much longer than the deadline close() waits for the writer thread: the time an engine
#: needs to give up at the deadline (the writer process: notice it, kill and reap the child).
CLOSE_GRACE = 5.0
#: A flush of at least this many tasks (1,000 a second at the default interval) is part of a
#: burst; the first smaller one ends it, and the engine gives back what the burst took
#: (:meth:`BatchingStore._rest`).
BURST_TASKS = 200


class Live(dict):  # type: ignore[type-arg]
    """An unwritten task as the database will give it back (a plain dict once answered)."""


class BatchingStore:
    """The engine-independent half of a persistent store (see the module docstring).

    ``_writing`` is False on a store that only reads (a follower sharing a PostgreSQL
    database): it neither files nor writes what it is given.
    """

    #: The engine's logger, so that log lines keep naming the engine.
    _log: logging.Logger = logging.getLogger(__name__)
    #: Where the history lives, for messages ("task database <path>", no password).
    where: str
    #: See CLOSE_TIMEOUT (an attribute so that tests can shorten it).
    close_timeout = CLOSE_TIMEOUT

    def _init_writer(
        self,
        max_tasks: int | None,
        max_age: float | None,
        flush_interval: float,
        max_pending: int,
    ) -> None:
        self.max_pending = max_pending
        self.max_tasks = max_tasks
        self.max_age = max_age
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._pending: dict[str, TaskRecord] = {}
        self._inflight: dict[str, TaskRecord] = {}  # the batch being written, still readable
        self._pending_workers: dict[str, dict[str, Any]] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cycled = threading.Condition()
        self._taken = threading.Condition(self._lock)  # the writer took the pending batch
        self._flushing = threading.Lock()  # one _flush_once at a time: see there
        self._throttled = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._writing = True
        self._errors: Counter[str] = Counter()
        self._failing = False
        self._last_error: str | None = None
        self._written = self._pruned = self._flushes = self._cycles = 0
        self._last_flush_seconds = 0.0
        self._last_batch = 0  # tasks in the last flush (0: nothing was pending)
        self._burst = False
        # Batches taken by the writer, and the last one committed with all before it: see
        # put_mark (a broker reader acks its messages once their events are committed).
        self._swaps = self._committed = 0

    # --- what the engine implements ----------------------------------------------------------

    def _write_batch(
        self, batch: dict[str, TaskRecord], workers: dict[str, dict[str, Any]]
    ) -> None:
        """Write the tasks and workers in one transaction; raise to have them retried."""
        raise NotImplementedError

    def _prune(self, budget: float) -> None:
        """Apply retention (max_tasks, max_age) for at most about ``budget`` seconds."""
        raise NotImplementedError

    def _rest(self) -> None:
        """A burst is over: give back the memory it made the writer hold (caches sized for
        full speed), if the engine holds any. Called on the writer thread."""

    def _describe_error(self, exc: Exception) -> tuple[str, str]:
        """A failed write's kind (to count it by) and its text for logs (no secrets)."""
        raise NotImplementedError

    def _note_names(self, record: TaskRecord) -> None:
        """Learn the task (and worker) names of a record just put."""

    def _close_connections(self) -> None:
        raise NotImplementedError

    def _closing(self, deadline: float) -> None:
        """The store is closing: make the writes still to come give up by ``deadline``
        (monotonic), if the engine can. Called on the closing thread, before the last flush."""

    def _tasks_known(self) -> int:
        """Tasks written, as the store last knew (no query)."""
        raise NotImplementedError

    def _live(self, record: TaskRecord) -> Live:
        """An unwritten task as the database would give it back."""
        raise NotImplementedError

    def _order(self, q: TaskQuery) -> tuple[Callable[[TaskRecord], tuple[Any, ...]], bool]:
        """The ORDER BY of :meth:`_stored` in Python, and its direction. An unwritten task
        sorts after every written one of the same time (it will get a higher id)."""
        raise NotImplementedError

    def _exclude(self, uuids: list[str]) -> Any:
        """``uuids`` in the form ``_stored`` takes them."""
        raise NotImplementedError

    def _stored(self, q: TaskQuery, node: Node | None, exclude: Any = None) -> list[TaskRecord]:
        """The written tasks matching ``q``, without those in ``exclude``."""
        raise NotImplementedError

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (idempotent). Records put before start wait for it."""
        # The writer gives the GIL up at every statement and must get it back from a busy
        # ingest thread, which keeps it for a whole switch interval (5 ms by default): a
        # shorter one cut celeriac's CPU per event by ~8% and its time for 100,000 tasks by
        # ~20% (measured, bench/results/ingest.md). Process-wide; only ever lowered.
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="celeriac-store", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Write everything pending, stop the writer and close every connection; within
        about ``close_timeout`` + CLOSE_GRACE (see CLOSE_TIMEOUT), except for a store never
        started whose engine cannot give up by itself (the last flush then runs on this
        thread, and a call that hangs there hangs close() too)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + self.close_timeout
        self._closing(deadline)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(deadline - time.monotonic() + CLOSE_GRACE)
            if self._thread.is_alive():
                # Stuck in a call (a hung disk or database); closing its connection under it
                # could block too. The thread is a daemon: it dies with the process.
                self._log.error(
                    "the writer of the %s did not finish in %g s: %d tasks not written,"
                    " closing without it",
                    self.where,
                    self.close_timeout + CLOSE_GRACE,
                    len(self._unwritten()),
                )
                return
        elif self._writing:
            self._drain()
        self._close_connections()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was put before this call is written; False on timeout or failure."""
        if self._thread is None:
            return self._flush_once()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cycled:
            target = self._cycles + 2  # the cycle running now may have missed the latest puts
            while self._cycles < target:
                self._wake.set()
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not self._thread.is_alive():
                    return False
                self._cycled.wait(left)
        return not self._failing

    def put_mark(self) -> int:
        """A mark for everything put before this call: all of it is committed once
        :meth:`committed_mark` reaches the mark (the next batch taken holds whatever the
        earlier ones did not, and a failed batch goes back into the one after). No lock, no
        cost on ``put``: ``events/amqp.py`` acks a message only then."""
        return self._swaps + 1

    def committed_mark(self) -> int:
        """The last batch taken whose write, and every earlier one's, is committed."""
        return self._committed

    # --- ingest side -----------------------------------------------------------------------

    def put(self, record: TaskRecord) -> None:
        """File the live record for the next flush; O(1), never touches the database."""
        self.put_many([record])

    def put_many(self, records: list[TaskRecord]) -> None:
        """File the live records for the next flush, under one hold of the lock."""
        # A store that does not write (a follower) leaves the tasks to the one that does.
        if not self._writing:
            return
        with self._lock:
            pending = self._pending  # under the lock: the writer swaps in a new dict
            for record in records:
                uuid = record.get("uuid")
                # No uuid would fail the NOT NULL constraint, and with it every retry.
                if uuid:
                    pending[uuid] = record
            if len(pending) >= self.max_pending and self._keeping_up():
                # The writer is far behind (a burst, a slow disk or database): wait for it to
                # take the batch rather than grow without bound. The reader's own backlog
                # absorbs the burst meanwhile; nothing is dropped.
                self._throttled += 1
                self._wake.set()
                self._taken.wait(THROTTLE_WAIT)
        for record in records:
            self._note_names(record)

    def _keeping_up(self) -> bool:
        """Whether a writer thread is taking batches (not stopped, not failing to write)."""
        thread = self._thread
        return (
            thread is not None
            and thread.is_alive()
            and thread is not threading.current_thread()
            and not self._failing
            and not self._closed
        )

    def put_worker(self, hostname: str, info: dict[str, Any]) -> None:
        """Keep a worker's last known state (written with the next flush, as JSON)."""
        if not self._writing:
            return
        with self._lock:
            self._pending_workers[hostname] = info

    # --- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if (
                self._writing
                and self._flush_once()
                and (self.max_tasks is not None or self.max_age is not None)
            ):
                self._prune(budget=self.flush_interval / 2)
            if self._last_batch >= BURST_TASKS:
                self._burst = True
            elif self._burst:
                self._burst = False
                try:
                    with self._flushing:  # the engine's connection is the flushes' too
                        self._rest()
                except Exception:  # only memory is at stake: the writer must go on
                    self._log.exception("giving back the writer's caches failed (%s)", self.where)
            with self._cycled:
                self._cycles += 1
                self._cycled.notify_all()
        if self._writing:
            self._drain()
        with self._cycled:  # a flush() waiting through close() returns now, not at its timeout
            self._cycles += 2
            self._cycled.notify_all()

    def _drain(self) -> bool:
        """Flush until nothing is pending; give up after a few failures (at close)."""
        for _ in range(3):
            if self._flush_once() and not self._pending and not self._pending_workers:
                return True
        if self._pending:
            self._log.error(
                "%d tasks could not be written to the %s", len(self._pending), self.where
            )
        return False

    def _flush_once(self) -> bool:
        # One at a time. Only the writer thread flushes once started, but a store never
        # started flushes on its callers' threads: two at once would share the engine's one
        # connection (SQLite: "cannot start a transaction within a transaction"), and the
        # second, finding nothing pending, would mark as committed what the first is still
        # writing (flush() and put_mark would lie).
        with self._flushing:
            return self._write_pending()

    def _write_pending(self) -> bool:
        with self._lock:
            self._swaps += 1
            swap = self._swaps
            self._last_batch = len(self._pending)
            if not self._pending and not self._pending_workers:
                self._committed = swap  # nothing unwritten: all put so far is committed
                return True
            batch, workers = self._pending, self._pending_workers
            self._inflight = batch
            self._pending, self._pending_workers = {}, {}
            self._taken.notify_all()
        started = time.perf_counter()
        try:
            self._write_batch(batch, workers)
        except Exception as exc:
            self._write_failed(exc)
            with self._lock:  # newer versions put meanwhile win over the failed batch's
                if self._writing:
                    self._pending = {**batch, **self._pending}
                    self._pending_workers = {**workers, **self._pending_workers}
                self._inflight = {}
            return False
        self._inflight = {}
        self._committed = swap
        self._written += len(batch)
        self._flushes += 1
        self._last_flush_seconds = time.perf_counter() - started
        self._write_worked()
        return True

    def _write_worked(self) -> None:
        """A write (a batch, or an engine's retention) succeeded: say so once after failures."""
        if self._failing:
            self._log.warning("writing to the %s works again", self.where)
            self._failing = False

    def _write_failed(self, exc: Exception) -> None:
        kind, reason = self._describe_error(exc)
        self._errors[kind] += 1
        self._last_error = f"{kind}: {reason}"
        self._failing = True
        if self._errors[kind] == 1:  # once per kind, not once per batch
            # Closing, nothing retries: close() says what was not written.
            then = "" if self._stopping.is_set() else "; will retry"
            self._log.error("cannot write to the %s (%s)%s", self.where, reason, then)

    # --- readers: the tasks not written yet ------------------------------------------------

    def _unwritten(self) -> dict[str, TaskRecord]:
        """The tasks put but not committed yet, newest version of each (live records)."""
        # Copying a dict is atomic under the GIL; the writer swaps these, never mutates them
        # while we read (it builds new ones).
        return {**self._inflight, **self._pending}

    def _unwritten_record(self, uuid: str) -> TaskRecord | None:
        """The task as last put if it is not written yet, without ``children``."""
        live = self._pending.get(uuid) or self._inflight.get(uuid)
        if live is None:
            return None
        return {f: live.get(f) for f in TASK_FIELDS if f != "children"}

    def _with_pending_children(self, uuid: str, found: list[str]) -> list[str]:
        """``found`` (stored children of ``uuid``) and the unwritten ones after them."""
        seen = set(found)
        # Copying a dict's items is atomic under the GIL, no lock needed.
        for child, record in [*self._inflight.items(), *self._pending.items()]:
            if child not in seen and child != uuid and record.get("parent_id") == uuid:
                found.append(child)
                seen.add(child)
        return found

    def query(self, q: TaskQuery) -> list[TaskRecord]:
        """The tasks matching ``q``; raises SearchError (a ValueError) for a malformed
        ``q.search``. Filters as ``store/query.py``; order by the sort key (names
        case-insensitively, a missing value lowest) with ties by task id, as Flower, or newest
        first by default (ties by insertion); every order is read straight off an index.

        Tasks put but not written yet are in the answer too, when they are few (at most
        OVERLAY_MAX: the writer keeps up): a task seen in ``/api/task/info`` is listed at
        once. They are matched in Python and merged into the page the database gives, which
        is read from ``offset - len(matches)``, so the page is exact at any depth."""
        if q.sort_by is not None and q.sort_by not in SORT_KEYS:
            raise ValueError(f"sort_by must be one of {', '.join(SORT_KEYS)}")
        if q.limit is not None and q.limit <= 0:
            return []
        node = parse_search(q.search)
        live = self._unwritten()
        if not live or len(live) > OVERLAY_MAX:
            return self._stored(q, node)
        match, found = matcher(q), compile_search(node)
        key, descending = self._order(q)
        mine = sorted(
            (r for r in map(self._live, live.values()) if match(r) and found(r)),
            key=key,
            reverse=descending,
        )
        exclude = self._exclude(list(live))
        if not mine:
            return self._stored(q, node, exclude)
        start = max(0, q.offset - len(mine))
        limit = None if q.limit is None else q.limit + len(mine)
        rows = self._stored(replace(q, offset=start, limit=limit), node, exclude)
        skipped = 0  # unwritten matches that sort before the first row read
        if start > 0:
            if not rows:  # the database has at most `start` matches: the page is past the end
                return []
            first = key(rows[0])
            skipped = sum(1 for r in mine if (key(r) > first if descending else key(r) < first))
        merged = sorted([*rows, *mine[skipped:]], key=key, reverse=descending)
        begin = q.offset - start - skipped
        page = merged[begin : None if q.limit is None else begin + q.limit]
        return [dict(r) if isinstance(r, Live) else r for r in page]

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and the status page."""
        return {
            "pending": len(self._pending.keys() | self._inflight.keys()),  # not written yet
            "tasks": self._tasks_known(),
            "written": self._written,
            "throttled": self._throttled,  # puts that waited for a writer far behind
            "flushes": self._flushes,
            "pruned": self._pruned,
            "last_flush_seconds": self._last_flush_seconds,
            "write_errors": dict(self._errors),
            "last_error": self._last_error,
            "failing": self._failing,
        }
