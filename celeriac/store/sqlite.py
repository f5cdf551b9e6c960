"""The persistent task store: one SQLite file in WAL mode, one writer, readers per thread.

The batching writer (pending dict, writer thread, throttle, retries, the merge of unwritten
tasks into answers) is :class:`~celeriac.store.writer.BatchingStore`, shared with the
PostgreSQL store; this module is the SQLite half. What changes the file (a batch in one
``BEGIN IMMEDIATE`` transaction, retention) is :class:`~celeriac.store.sqlite_write.SqliteWriter`,
which by default runs in a process of its own (``store/sqlite_process.py``: writing then never
competes with the event reader for the GIL), or on the writer thread with
``writer_process=False``. Either way the writer thread hands it each batch and applies what it
reports (the count, the tallies, new names). Readers use their own connection per thread; WAL
lets them read while the writer writes.

A failed write (disk full, file made read-only, I/O error, the writer process killed) is retried
with the next batch (see ``store/writer.py``), counted by SQLite's error name. A path that cannot
be opened, or a database newer than this code, raises :class:`StoreError` at construction.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from celeriac.store.base import StoreError, TaskQuery, TaskRecord
from celeriac.store.migrations import (
    MIGRATIONS,
    TASK_COLUMNS,
    Migration,
    MigrationError,
    migrate,
)
from celeriac.store.query import checked_page
from celeriac.store.search import (
    Node,
    SearchSql,
    compile_search,
    contains,
    kwarg_equals,
    search_sql,
)
from celeriac.store.sqlite_process import WriterError, WriterProcess
from celeriac.store.sqlite_write import (
    LOOKUP_CHUNK,
    TALLIED,
    SqliteWriter,
    configure,
    error_name,
    snapshot,
    stored_totals,
)
from celeriac.store.writer import OVERLAY_MAX, BatchingStore, Live

__all__ = ["SqliteStore", "StoreError"]

log = logging.getLogger(__name__)

_SELECT = f"SELECT {', '.join('t.' + c for c in TASK_COLUMNS)} FROM tasks AS t"
_FTS_IN = "{p}id IN (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH ?)"
_IDS_IN = "{p}id IN (SELECT value FROM json_each(?))"
_COUNT_CAP = 20_000  # below this many matches, reading them all and sorting is a plan
_HITS_CAP = 2_000  # text matches counted exactly (~2.5 ms at most), extrapolated beyond
#: Microseconds per row, about, at 1M tasks: walking an index and checking the row; reading a
#: filter's rows and sorting them; checking a search in Python; reading a text match.
_COST = {"walk": 1.0, "sort": 2.0, "text": 5.0, "text hit": 3.0}
#: The readers' page cache, in KiB (one per thread): memory stays flat however big the
#: database grows.
READER_CACHE_KB = 4 * 1024

Cond = tuple[str, tuple[Any, ...]]  # a WHERE term and its parameters


def _live_row(record: TaskRecord) -> Live:
    return Live(zip(TASK_COLUMNS, snapshot(record), strict=True))


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _sql_value(value: Any, nocase: bool = False) -> tuple[Any, ...]:
    """A value's place in SQLite's order: NULL, then numbers, then text (NOCASE folds ASCII
    only, as SQLite does), then the rest."""
    if value is None:
        return (0,)
    if type(value) in (int, float):
        return (1, value)
    if type(value) is str:
        return (2, value.translate(_ASCII_LOWER) if nocase else value)
    return (3, str(value))


def _order(q: TaskQuery) -> tuple[Callable[[TaskRecord], tuple[Any, ...]], bool]:
    """The sort key of :meth:`SqliteStore._page`'s ORDER BY in Python, and its direction.
    Newest first by default, an unwritten task after every written one of the same time
    (it will get a higher rowid)."""
    if q.sort_by is None:
        return (lambda r: (_sql_value(r.get("timestamp")), type(r) is Live)), True
    column, nocase = q.sort_by, q.sort_by == "name"
    return (lambda r: (_sql_value(r.get(column), nocase), r.get("uuid") or "")), q.descending


def _and(conds: list[Cond]) -> str:
    return " AND ".join(f"({sql})" for sql, _ in conds) or "1"


def _params(conds: list[Cond]) -> list[Any]:
    return [p for _, params in conds for p in params]


class SqliteStore(BatchingStore):
    """Task history in one SQLite file. See the module docstring for the threading model.

    ``max_tasks`` and ``max_age`` (seconds since a task's last event) bound the history: the
    writer deletes the oldest finished tasks beyond them, a few hundred per transaction, between
    flushes. Unfinished tasks are never pruned. ``max_pending`` bounds the tasks waiting for
    the writer (see ``store/writer.py``). ``migrations`` is for tests of upgrades.
    """

    _log = log

    def __init__(
        self,
        path: str,
        max_tasks: int | None = None,
        max_age: float | None = None,
        flush_interval: float = 0.2,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        max_pending: int = 5_000,
        writer_process: bool = True,
    ) -> None:
        self.path = path
        self.where = f"task database {path}"
        self._init_writer(max_tasks, max_age, flush_interval, max_pending)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        conn = self._open(migrations)
        try:
            self._count, self._names, self._workers = stored_totals(conn)
            self._tally = self._read_tally(conn)
        except BaseException:
            conn.close()
            raise
        # The writer keeps the rows it committed lately (2 x max_pending): see _remember.
        self._writer: SqliteWriter | WriterProcess
        self._conn: sqlite3.Connection | None = None  # the writer's, when it is a thread's
        if writer_process:
            conn.close()
            self._writer = WriterProcess(path, 2 * max_pending)
        else:
            self._conn = conn
            self._writer = SqliteWriter(
                conn, 2 * max_pending, self._count, self._names, self._workers
            )
        self._writer_starts = 1

    @staticmethod
    def _read_tally(conn: sqlite3.Connection) -> dict[str, Counter[Any]]:
        return {
            c: Counter(dict(conn.execute(f"SELECT {c}, count(*) FROM tasks GROUP BY {c}")))
            for c in TALLIED
        }

    # --- lifecycle -------------------------------------------------------------------------

    def _open(self, migrations: Sequence[Migration]) -> sqlite3.Connection:
        where = f"task database {self.path!r}"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{where}: cannot create its folder: {exc.strerror}") from exc
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the {where} cannot use WAL mode (got {mode!r})")
            configure(conn)
            migrate(conn, migrations)
            # Prove now, not at the first flush, that the file is writable.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE meta SET value = value WHERE key = 'task_count'")
            conn.execute("COMMIT")
        except (MigrationError, sqlite3.Error, StoreError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, StoreError):
                raise
            reason = exc if isinstance(exc, MigrationError) else f"cannot open it: {exc}"
            raise StoreError(f"{where}: {reason}{self._why_not_writable()}") from exc
        return conn

    def _why_not_writable(self) -> str:
        """SQLite says "unable to open database file" for most causes; name the usual one."""
        folder = os.path.dirname(os.path.abspath(self.path))
        for what, path in (("file", self.path), ("folder", folder)):
            if os.path.exists(path) and not os.access(path, os.W_OK):
                try:
                    read_only_fs = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
                except OSError:
                    read_only_fs = False
                if read_only_fs:
                    return " (it is on a read-only file system)"
                return f" (the {what} is read-only for this user)"
        return ""

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    def _close_connections(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._writer.close()

    def _closing(self, deadline: float) -> None:
        # A writer thread's statement cannot be cut short (a hung disk blocks it in the
        # kernel); a writer process can, killed.
        if isinstance(self._writer, WriterProcess):
            self._writer.closing(deadline)

    # --- ingest side -----------------------------------------------------------------------

    def _note_names(self, record: TaskRecord) -> None:
        name, worker = record.get("name"), record.get("worker")
        # Only text is a name: an event may carry anything (a list, a number) in these fields.
        if name and type(name) is str and name not in self._names:
            self._add_names(frozenset({name}), frozenset())
        if worker and type(worker) is str and worker not in self._workers:
            self._add_names(frozenset(), frozenset({worker}))

    def _add_names(self, names: frozenset[str], workers: frozenset[str]) -> None:
        with self._lock:  # rare (a new name), and two threads add: no lost update
            self._names = self._names | names
            self._workers = self._workers | workers

    # --- writer thread ---------------------------------------------------------------------

    def _write_batch(
        self, batch: dict[str, TaskRecord], workers: dict[str, dict[str, Any]]
    ) -> None:
        done = self._writer.write(list(batch.values()), workers)
        self._took(done.count, done.tally)
        if done.names or done.workers:
            self._add_names(done.names, done.workers)

    def _describe_error(self, exc: Exception) -> tuple[str, str]:
        return error_name(exc), str(exc)

    def _rest(self) -> None:
        try:
            self._writer.rest()
        except (WriterError, sqlite3.Error) as exc:  # only memory is at stake: try next time
            self._log.debug("the writer could not give back its caches: %s", exc)

    def _prune(self, budget: float) -> None:
        try:
            done = self._writer.prune(budget, self.max_tasks, self.max_age)
        except WriterError as exc:
            self._write_failed(exc)
            return
        self._took(done.count, done.tally)
        self._pruned += done.deleted
        if done.failure is not None:
            self._write_failed(WriterError(*done.failure))
        else:  # what failed before was retention (a failed batch would be pending)
            self._write_worked()

    def _took(self, count: int, tally: Counter[tuple[str, Any]]) -> None:
        """Apply what the writer reports after a batch or a round of retention."""
        self._count = count
        if not self._after_restart():  # else the tallies just read include this change
            self._count_values(tally)

    def _after_restart(self) -> bool:
        """After the writer process died and a new one started: a batch (or deletions) it
        committed but could not confirm was counted in no tally, so count them again (rare;
        one scan). True when it did: the tallies then include what the new one just did."""
        starts = getattr(self._writer, "starts", 1)
        if starts <= self._writer_starts:
            return False
        try:
            self._tally = self._read_tally(self._reader())
        except (sqlite3.Error, StoreError):  # (closing) read again after the next call
            return False
        self._writer_starts = starts
        return True

    def _count_values(self, changes: Counter[tuple[str, Any]]) -> None:
        for (column, value), n in changes.items():
            if n:
                counter = self._tally[column]
                counter[value] += n
                if counter[value] <= 0:
                    del counter[value]

    # --- readers ---------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError(f"the task database {self.path!r} is closed")
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KB:d}")  # one per thread
            conn.create_function("celeriac_kwarg_equals", 3, kwarg_equals, deterministic=True)
            conn.create_function("celeriac_contains", -1, contains, deterministic=True)
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def get(self, uuid: str) -> TaskRecord | None:
        """The task as last put (even if not yet written), with its ``children``."""
        record = self._unwritten_record(uuid)
        if record is None:
            row = self._reader().execute(f"{_SELECT} WHERE t.uuid = ?", (uuid,)).fetchone()
            if row is None:
                return None
            record = dict(zip(TASK_COLUMNS, row, strict=True))
        record["children"] = self.children(uuid)
        return record

    def get_many(self, uuids: Sequence[str]) -> dict[str, TaskRecord]:
        """The tasks among ``uuids`` that were put, without ``children``: the state's lookup
        for a whole batch of events. One statement per chunk instead of one :meth:`get` per
        new task (each is a read transaction, and a GIL hand-over on the ingest thread)."""
        found: dict[str, TaskRecord] = {}
        rest: list[str] = []
        for uuid in uuids:
            live = self._unwritten_record(uuid)
            if live is not None:
                found[uuid] = live
            else:
                rest.append(uuid)
        for i in range(0, len(rest), LOOKUP_CHUNK):
            chunk = rest[i : i + LOOKUP_CHUNK]
            sql = f"{_SELECT} WHERE t.uuid IN ({', '.join('?' * len(chunk))})"
            for row in self._reader().execute(sql, chunk):
                found[row[0]] = dict(zip(TASK_COLUMNS, row, strict=True))
        for record in found.values():
            record["children"] = []
        return found

    def children(self, uuid: str) -> list[str]:
        """Tasks whose parent_id is ``uuid``, in the order they were first seen."""
        sql = "SELECT uuid FROM tasks WHERE parent_id = ? AND uuid != ? ORDER BY id"
        found = [r[0] for r in self._reader().execute(sql, (uuid, uuid))]
        return self._with_pending_children(uuid, found)

    def task_types(self) -> list[str]:
        return sorted(self._names)

    def count(self) -> int:
        """Tasks stored, counting those put but not written yet when they are few."""
        live = self._unwritten()
        if not live or len(live) > OVERLAY_MAX:
            return self._count
        sql = "SELECT count(*) FROM tasks WHERE uuid IN (SELECT value FROM json_each(?))"
        written = self._reader().execute(sql, (json.dumps(list(live)),)).fetchone()[0]
        return self._count + len(live) - int(written)

    def count_by_state(self) -> dict[str, int]:
        """Written tasks per state, kept by the writer: no scan (the hub polls this)."""
        out: Counter[str] = Counter()
        for state, n in list(self._tally["state"].items()):  # copied at once: the writer writes
            if n > 0:
                out[state or "PENDING"] += n
        return dict(out)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Every worker's last known state as put with :meth:`put_worker`."""
        rows = self._reader().execute("SELECT hostname, info FROM workers ORDER BY hostname")
        return {hostname: json.loads(info) for hostname, info in rows}

    def _live(self, record: TaskRecord) -> Live:
        return _live_row(record)

    def _order(self, q: TaskQuery) -> tuple[Callable[[TaskRecord], tuple[Any, ...]], bool]:
        return _order(q)

    def _exclude(self, uuids: list[str]) -> str:
        return json.dumps(uuids)

    def _stored(self, q: TaskQuery, node: Node | None, exclude: str | None = None) -> list[
        TaskRecord
    ]:  # fmt: skip
        """The written tasks matching ``q``, without those in ``exclude`` (a JSON list)."""
        conds, counts = self._conditions(q)
        search = None if node is None else search_sql(node, self._names, self._workers)
        if search is not None and search.fts is None:  # no text: a filter like the others
            conds.append(search.where("{p}"))
            search = None
        conn = self._reader()
        conn.execute("BEGIN")  # one snapshot for every statement below
        try:
            plan, ids = self._plan(conn, q, conds, counts, search)
            self.last_plan = str(plan)
            if plan == "filters":  # SQLite picks among the filters' indexes
                where = self._render(conds, "t.")
            else:  # "t." where the filter's index drives, "+t." (no index) elsewhere
                where = [
                    self._render([c], "t." if i == plan else "+t.")[0] for i, c in enumerate(conds)
                ]
            ordered = plan in ("index", "order") or (isinstance(plan, int) and q.sort_by is None)
            text = node if search is not None else None  # checked in Python while reading
            if search is not None and (plan == "search" or ids is not None):
                # The text index's matches as a list (or query): exact when the search is
                # text only, candidates for the Python check otherwise.
                member = (_IDS_IN, (ids,)) if ids is not None else (_FTS_IN, (search.fts,))
                where += self._render([member], "t." if plan == "search" else "+t.")
                text = node if search.sql is not None else None
            if exclude is not None:  # checked on the rows read, never driving the query
                where.append(("+t.uuid NOT IN (SELECT value FROM json_each(?))", (exclude,)))
            return self._page(conn, q, where, "t." if ordered else "+t.", text)
        finally:
            conn.execute("COMMIT")

    #: How the last query was answered: "index", "order" (walking the sort index), "search"
    #: (from the text index), "filters" (SQLite's pick), or the position of the equality
    #: filter whose index drove it. For tests and logs.
    last_plan = ""
    #: Tests set this to run every query through one plan (when that plan can answer it).
    _force_plan: str | int | None = None

    def _plan(
        self, conn: sqlite3.Connection, q: TaskQuery, conds: list[Cond], counts: list[int],
        search: SearchSql | None,
    ) -> tuple[str | int, str | None]:  # fmt: skip
        """Choose what drives the query; also give the text matches' rowids (a JSON list)
        when they are few enough to have been read whole.

        Walking an index in the requested order stops after offset + limit matches, so it
        costs ~ needed * rows read / matches; reading all rows of one filter (or text) index
        and sorting them costs ~ those rows. Counts come from the writer's tallies, a capped
        count, or an estimate from the text index; costs per row are in _COST."""
        if not conds and search is None:
            return "index", None
        n = max(self._count, 1)
        needed = n if q.limit is None else min(q.offset + q.limit, n)
        if len(conds) == len(counts) == 1:
            rows = counts[0]  # the writer's tally: exact, free
        elif counts:
            # Several filters: as if independent. Counting their matches exactly reads about
            # as many rows as answering (230 ms for two 15% filters at 1M tasks, measured),
            # and a wrong guess costs at most reading the smallest filter's rows once, which
            # any plan would. Range bounds (received) count as matching everything.
            rows = max(int(n * math.prod(c / n for c in counts)), 1)
        else:
            rows = n
        hits, ids = self._estimate_hits(conn, search.fts) if search is not None else (n, None)
        exact = ids is not None
        matches = max(rows * hits / n, 1)  # as if independent: pessimistic for walking
        walk = _COST["walk"] + (_COST["text"] if search is not None and not exact else 0.0)
        costs: dict[str | int, float] = {"order": walk * needed * n / matches}
        for i, count in enumerate(counts):  # the equality filters, each with its index
            if q.sort_by is None:  # its (column, timestamp) index reads newest first
                costs[i] = walk * needed * count / matches
            else:
                costs[i] = (_COST["sort"] + walk - _COST["walk"]) * count
        if conds and rows < _COUNT_CAP:
            costs["filters"] = (_COST["sort"] + walk - _COST["walk"]) * rows
        if search is not None:
            costs["search"] = _COST["text hit"] * hits
        if self._force_plan in costs:
            return self._force_plan, ids
        return min(costs, key=costs.__getitem__), ids

    @staticmethod
    def _estimate_hits(conn: sqlite3.Connection, fts: str | None) -> tuple[int, str | None]:
        """Tasks matching the text query, and their rowids when fewer than _HITS_CAP; beyond,
        extrapolated from how many rowids the newest _HITS_CAP of them span (the index reads
        newest first and stops there)."""
        sql = (
            "SELECT count(*), min(rowid), json_group_array(rowid) FROM (SELECT rowid FROM "
            "tasks_fts WHERE tasks_fts MATCH ? ORDER BY rowid DESC LIMIT ?)"
        )
        found, lowest, ids = conn.execute(sql, (fts, _HITS_CAP)).fetchone()
        if found < _HITS_CAP:
            return int(found), ids
        span = "SELECT (SELECT max(id) FROM tasks), (SELECT min(id) FROM tasks)"
        top, bottom = conn.execute(span).fetchone()
        return int(found * (top - bottom + 1) / (top - lowest + 1)), None

    def _conditions(self, q: TaskQuery) -> tuple[list[Cond], list[int]]:
        """The filters of ``q``, with ``{p}`` before each column, and for the leading ones (on
        tallied columns) how many tasks each matches."""
        conds: list[Cond] = []
        counts: list[int] = []
        for column, wanted in (("state", q.state), ("name", q.taskname), ("worker", q.workername)):
            if wanted:  # whole values, case-insensitively: resolved against the values seen
                tally = dict(self._tally[column])  # copied at once: the writer updates it
                exact = tuple(
                    v for v in tally if type(v) is str and v.casefold() == wanted.casefold()
                )
                marks = ", ".join("?" * len(exact))
                collate = " COLLATE NOCASE" if column == "name" else ""  # as its index
                conds.append((f"{{p}}{column}{collate} IN ({marks})" if exact else "0", exact))
                counts.append(sum(tally[v] for v in exact))
        # Inclusive bounds, and a task not received yet is not filtered out (Flower's rule).
        if q.received_start is not None:
            conds.append(("({p}received IS NULL OR {p}received >= ?)", (q.received_start,)))
        if q.received_end is not None:
            conds.append(("({p}received IS NULL OR {p}received <= ?)", (q.received_end,)))
        return conds, counts

    @staticmethod
    def _render(conds: list[Cond], prefix: str) -> list[Cond]:
        return [(sql.replace("{p}", prefix), params) for sql, params in conds]

    @staticmethod
    def _page(
        conn: sqlite3.Connection, q: TaskQuery, where: list[Cond], prefix: str,
        text: Node | None = None,
    ) -> list[TaskRecord]:  # fmt: skip
        """One page in the order :meth:`query` documents. ``prefix`` "+t." keeps SQLite from
        walking a sort index (a filter drives instead); ``text``, when given, is a search to
        apply in Python while walking."""
        direction = "DESC" if q.descending or q.sort_by is None else "ASC"
        key = q.sort_by or "timestamp"
        collate = " COLLATE NOCASE" if key == "name" else ""
        if key == "timestamp":  # newest first; ties (rare: float times) by insertion
            order = f"{prefix}timestamp {direction}, {prefix}id {direction}"
        else:  # ties by task id, as Flower
            order = f"{prefix}{key}{collate} {direction}, {prefix}uuid {direction}"
        sql = f"{_SELECT} WHERE {_and(where)} ORDER BY {order}"
        if text is None:
            rows = conn.execute(
                f"{sql} LIMIT ? OFFSET ?", [*_params(where), q.limit or -1, q.offset]
            )
            return [dict(zip(TASK_COLUMNS, row, strict=True)) for row in rows]
        rows = conn.execute(sql, _params(where))
        records = (dict(zip(TASK_COLUMNS, row, strict=True)) for row in rows)
        return checked_page(records, compile_search(text), q.offset, q.limit)

    def _tasks_known(self) -> int:
        return self._count

    # --- aggregates for the UI (definitions in store/aggregates.py, SQL in sqlite_aggregates) --

    def throughput(self, since: float, bucket: float) -> list[Any]:
        from celeriac.store import sqlite_aggregates

        return sqlite_aggregates.throughput(self._reader(), since, bucket)

    def task_type_stats(self, since: float, bucket: float, name: str | None = None) -> list[Any]:
        from celeriac.store import sqlite_aggregates

        return sqlite_aggregates.task_type_stats(self._reader(), since, bucket, name)

    def failure_groups(self, since: float, bucket: float) -> list[Any]:
        from celeriac.store import sqlite_aggregates

        return sqlite_aggregates.failure_groups(self._reader(), since, bucket)

    def iter_matching(self, q: TaskQuery, batch: int = 1000) -> Any:
        """See TaskStore.iter_matching; a malformed search raises here, before any page."""
        from celeriac.store import sqlite_aggregates

        conds, _ = self._conditions(q)
        check = compile_search(q.search)
        where = self._render(conds, "t.")
        return sqlite_aggregates.keyset_pages(self._reader, where, check, max(1, batch))
