"""The persistent task store: one SQLite file in WAL mode, one writer thread, readers per thread.

The batching writer (pending dict, writer thread, throttle, retries, the merge of unwritten
tasks into answers) is :class:`~celeriac.store.writer.BatchingStore`, shared with the
PostgreSQL store; this module is the SQLite half. The writer thread writes each batch in one
``BEGIN IMMEDIATE`` transaction. Readers use their own connection per thread; WAL lets them
read while the writer writes.

The full-text index (FTS5, trigram) is filled by SQLite from the table itself, one statement
per batch (``_FTS_INDEX``), not from parameters: 2.5 times less CPU, no Python per row.

The writer runs few, large statements (many rows each) rather than ``executemany``: every
statement step releases the GIL, and getting it back from a busy ingest thread can take a whole
switch interval, so per-row steps made flushes several times slower under load (measured).

A failed write (disk full, file made read-only, I/O error) is retried with the next batch (see
``store/writer.py``), counted by SQLite's error name. A path that cannot be opened, or a
database newer than this code, raises :class:`StoreError` at construction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from itertools import compress, repeat
from operator import itemgetter, ne
from typing import Any

from celeriac.constants import FINAL_STATES
from celeriac.store.base import PLAIN_TYPES, StoreError, TaskQuery, TaskRecord, plain
from celeriac.store.migrations import (
    FTS_COLUMNS,
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
from celeriac.store.writer import OVERLAY_MAX, BatchingStore, Live

__all__ = ["SqliteStore", "StoreError"]

log = logging.getLogger(__name__)

_COLS = ", ".join(TASK_COLUMNS)
_FTS = ", ".join(FTS_COLUMNS)
_SELECT = f"SELECT {', '.join('t.' + c for c in TASK_COLUMNS)} FROM tasks AS t"
# Statements that take many rows: ``{}`` is where the VALUES rows go (see _values).
_INSERT = f"INSERT INTO tasks (id, {_COLS}) VALUES {{}}"
# Index the text of some rows, read from the table (the rows with text: see _indexed).
_FTS_INDEX = (
    f"INSERT INTO tasks_fts (rowid, {_FTS}) SELECT id, {_FTS} FROM tasks WHERE {{}}"
    f" AND ({' OR '.join(f'{c} IS NOT NULL' for c in FTS_COLUMNS)})"
)
_FTS_INDEX_RANGE = _FTS_INDEX.format("id >= ? AND id < ?")
_FTS_INDEX_IDS = _FTS_INDEX.format("id IN (SELECT value FROM json_each(?))")
_FTS_DELETE = (
    f"INSERT INTO tasks_fts (tasks_fts, rowid, {_FTS}) SELECT 'delete', * FROM (VALUES {{}})"
)
_UPDATE = "UPDATE tasks SET {sets} FROM (VALUES {{}}) AS v WHERE id = v.column1"
# One JSON row for a whole chunk of uuids; floats as 17-digit text so they compare exactly.
_EXACT = "CASE WHEN typeof({0}) = 'real' THEN json_array(printf('%!.17g', {0})) ELSE {0} END"
_LOOKUP = (
    f"SELECT json_group_array(json_array(id, {', '.join(_EXACT.format(c) for c in TASK_COLUMNS)}))"
    " FROM tasks WHERE uuid IN ({})"
)
_FTS_IN = "{p}id IN (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH ?)"
_IDS_IN = "{p}id IN (SELECT value FROM json_each(?))"
_COUNT_ADD = "UPDATE meta SET value = value + ? WHERE key = 'task_count'"
_FTS_AT = tuple(TASK_COLUMNS.index(c) for c in FTS_COLUMNS)
_NAME_AT, _WORKER_AT = TASK_COLUMNS.index("name"), TASK_COLUMNS.index("worker")
_fts_of = itemgetter(*_FTS_AT)
_POSITIONS = tuple(range(len(TASK_COLUMNS)))
#: Columns whose values are tallied by the writer: exact counts for filters, without a scan.
_TALLIED = {c: TASK_COLUMNS.index(c) for c in ("state", "name", "worker")}
_FINAL = tuple(sorted(FINAL_STATES))
_LOOKUP_CHUNK = 2000  # uuids per lookup statement
_VALUES_CHUNK = 256  # rows per multi-row statement; powers of two keep the statements cached
_PRUNE_BATCH = 500  # rows per retention transaction: short, so a flush never waits long
_COUNT_CAP = 20_000  # below this many matches, reading them all and sorting is a plan
_HITS_CAP = 2_000  # text matches counted exactly (~2.5 ms at most), extrapolated beyond
#: Microseconds per row, about, at 1M tasks: walking an index and checking the row; reading a
#: filter's rows and sorting them; checking a search in Python; reading a text match.
_COST = {"walk": 1.0, "sort": 2.0, "text": 5.0, "text hit": 3.0}
#: SQLite page caches, in KiB: memory stays flat however big the database grows.
WRITER_CACHE_KB = 32 * 1024
READER_CACHE_KB = 4 * 1024

Row = tuple[Any, ...]
Cond = tuple[str, tuple[Any, ...]]  # a WHERE term and its parameters


def _snapshot(record: TaskRecord) -> Row:
    row = tuple(map(record.get, TASK_COLUMNS))
    return row if PLAIN_TYPES.issuperset(map(type, row)) else tuple(map(plain, row))


def _texts(rows: list[Row], at: int) -> Iterator[str]:
    """The non-empty text values of one column (a name or hostname sent as a number is not)."""
    return (r[at] for r in rows if r[at] and type(r[at]) is str)


def _indexed(row: Row) -> Row | None:
    """The row's full-text columns, or None when it has no text to index."""
    text: Row = _fts_of(row)
    return None if text.count(None) == len(text) else text


def _live_row(record: TaskRecord) -> Live:
    return Live(zip(TASK_COLUMNS, _snapshot(record), strict=True))


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
    ) -> None:
        self.path = path
        self.where = f"task database {path}"
        self._init_writer(max_tasks, max_age, flush_interval, max_pending)
        # The rows this writer committed lately, ``uuid -> (id, *TASK_COLUMNS)``: see _remember.
        self._recent: OrderedDict[str, Row] = OrderedDict()
        self._recent_max = 2 * max_pending
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._conn = self._open(migrations)
        meta = "SELECT value FROM meta WHERE key = 'task_count'"
        self._count = int(self._conn.execute(meta).fetchone()[0])
        self._names = frozenset(r[0] for r in self._conn.execute("SELECT name FROM task_names"))
        self._workers = frozenset(r[0] for r in self._conn.execute("SELECT name FROM worker_names"))
        self._stored_names, self._stored_workers = self._names, self._workers
        self._tally: dict[str, Counter[Any]] = {
            c: Counter(dict(self._conn.execute(f"SELECT {c}, count(*) FROM tasks GROUP BY {c}")))
            for c in _TALLIED
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
            conn.execute("PRAGMA synchronous = NORMAL")
            # Checkpoint every 40 MB of WAL, not 4: a page dirtied by several batches is then
            # copied into the database once (20-40% faster ingest at 1M tasks, measured).
            conn.execute("PRAGMA wal_autocheckpoint = 10000")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            # 32 MB: the hot ends of the indexes. The rest (the uuid index is random-access)
            # comes from the OS page cache, which is not this process's memory.
            conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KB:d}")
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
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA optimize")  # keeps the planner's statistics current
        self._conn.close()

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
        rows = [_snapshot(record) for record in batch.values()]
        try:
            self._write(rows, workers)
        except OverflowError:  # an int beyond 64 bits: keep it as text
            self._write([tuple(map(plain, row)) for row in rows], workers)

    def _describe_error(self, exc: Exception) -> tuple[str, str]:
        return getattr(exc, "sqlite_errorname", None) or type(exc).__name__, str(exc)

    def _write(self, rows: list[Row], workers: dict[str, dict[str, Any]]) -> None:
        conn = self._conn
        recent = self._recent
        conn.execute("BEGIN IMMEDIATE")
        try:
            # The stored versions: those this writer wrote lately from memory, the rest (a
            # task first seen, or one from before a restart) in one lookup.
            old = self._existing([row[0] for row in rows if row[0] not in recent])
            next_id = (conn.execute("SELECT max(id) FROM tasks").fetchone()[0] or 0) + 1
            inserts: list[Row] = []
            updates: dict[tuple[int, ...], list[Row]] = {}
            fts_del: list[Row] = []
            fts_add: list[int] = []  # rowids of updated rows to index (from their new values)
            first_id = next_id
            written: list[Row] = []  # (id, *row) of what changed, for `recent` once committed
            replaced: list[Row] = []  # the stored versions of the rows updated
            for row in rows:
                prev = recent.get(row[0]) or old.get(row[0])
                if prev is None:  # indexed below, from the table, with the others inserted
                    inserts.append(inserted := (next_id, *row))
                    written.append(inserted)
                    next_id += 1
                    continue
                text = _indexed(row)
                rowid, prev_row = prev[0], prev[1:]
                # SET only the changed columns, so indexes on the others are not rewritten.
                changed = tuple(compress(_POSITIONS, map(ne, row, prev_row)))
                if not changed:
                    continue
                replaced.append(prev_row)
                written.append((rowid, *row))
                updates.setdefault(changed, []).append((rowid, *(row[i] for i in changed)))
                prev_text = _indexed(prev_row)
                if text != prev_text:
                    # Delete only what was indexed: deleting a row that never was would skew
                    # the index's document totals.
                    if prev_text:
                        fts_del.append((rowid, *prev_text))
                    if text:
                        fts_add.append(rowid)
            self._values(_INSERT, inserts)
            for changed, params in updates.items():
                sets = (f"{TASK_COLUMNS[i]} = v.column{n}" for n, i in enumerate(changed, 2))
                self._values(_UPDATE.format(sets=", ".join(sets)), params)
            self._values(_FTS_DELETE, fts_del)
            # The text index reads the new text from the table itself, in one statement per
            # batch: 2.5 times less CPU than passing it as parameters (measured), and no
            # Python per row while SQLite tokenizes.
            if inserts:
                conn.execute(_FTS_INDEX_RANGE, (first_id, next_id))
            if fts_add:
                conn.execute(_FTS_INDEX_IDS, (json.dumps(fts_add),))
            names = frozenset(_texts(rows, _NAME_AT)) - self._stored_names
            hosts = frozenset(_texts(rows, _WORKER_AT)) - self._stored_workers
            for table, new in (("task_names", names), ("worker_names", hosts)):
                self._values(
                    f"INSERT OR IGNORE INTO {table} (name) VALUES {{}}", [(n,) for n in new]
                )
            conn.execute(_COUNT_ADD, (len(inserts),))
            now = time.time()
            self._values(
                "INSERT INTO workers (hostname, info, updated) VALUES {} ON CONFLICT (hostname) "
                "DO UPDATE SET info = excluded.info, updated = excluded.updated",
                [(h, json.dumps(i, default=str), now) for h, i in workers.items()],
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite rolls back by itself on some errors (disk full)
                conn.execute("ROLLBACK")
            raise
        self._count += len(inserts)
        tally: Counter[tuple[str, Any]] = Counter()
        gone: Counter[tuple[str, Any]] = Counter()
        for column, at in _TALLIED.items():  # counted in C; subtracted per distinct value
            tally.update(zip(repeat(column), (r[at + 1] for r in written)))
            gone.update(zip(repeat(column), (r[at] for r in replaced)))
        tally.subtract(gone)
        self._count_values(tally)
        self._remember(written)
        self._stored_names |= names
        self._stored_workers |= hosts
        self._add_names(names, hosts)

    def _values(self, sql: str, rows: Sequence[Row]) -> None:
        """Run ``sql`` over ``rows``, up to _VALUES_CHUNK rows per statement."""
        done = 0
        while done < len(rows):
            size = min(_VALUES_CHUNK, 1 << ((len(rows) - done).bit_length() - 1))
            chunk = rows[done : done + size]
            marks = "(" + ", ".join("?" * len(chunk[0])) + ")"
            self._conn.execute(sql.format(", ".join([marks] * size)), [v for r in chunk for v in r])
            done += size

    def _remember(self, written: list[Row]) -> None:
        """Keep the rows just committed (the newest ``2 * max_pending``): a task's next events
        (most come within seconds) are compared with them without reading the row back and
        decoding it (the lookup cost ~7 µs per task that spanned two flushes, measured)."""
        recent = self._recent
        for row in written:
            recent[row[1]] = row
            recent.move_to_end(row[1])  # the oldest are dropped first
        for _ in range(len(recent) - self._recent_max):
            recent.popitem(last=False)  # O(1); a dict's first key is not, after deletions

    def _existing(self, uuids: list[str]) -> dict[str, Row]:
        """``uuid -> (id, *TASK_COLUMNS)`` of the stored versions of these tasks."""
        found: dict[str, Row] = {}
        for i in range(0, len(uuids), _LOOKUP_CHUNK):
            chunk = uuids[i : i + _LOOKUP_CHUNK]
            sql = _LOOKUP.format(", ".join("?" * len(chunk)))
            for row in json.loads(self._conn.execute(sql, chunk).fetchone()[0]):
                found[row[1]] = tuple(float(v[0]) if type(v) is list else v for v in row)
        return found

    def _prune(self, budget: float) -> None:
        """Delete the oldest finished tasks beyond the limits, in short transactions.

        At least one batch per writer cycle, so that retention keeps up under any ingest load,
        and more only within ``budget`` seconds, so that the next flush is not delayed.
        """
        deadline = time.monotonic() + budget
        while True:
            victims: list[Row] = []
            if self.max_age is not None:
                victims = self._oldest_finished(_PRUNE_BATCH, time.time() - self.max_age)
            if not victims and self.max_tasks is not None and self._count > self.max_tasks:
                victims = self._oldest_finished(min(_PRUNE_BATCH, self._count - self.max_tasks))
            if not victims:
                return
            try:
                self._delete(victims)
            except sqlite3.Error as exc:
                self._write_failed(exc)
                return
            if time.monotonic() >= deadline:
                return

    def _oldest_finished(self, limit: int, before: float | None = None) -> list[Row]:
        """``(id, uuid, state, name, worker, *FTS_COLUMNS)`` of up to ``limit`` finished
        tasks, oldest first."""
        sql = (
            f"SELECT id, timestamp, uuid, {', '.join(_TALLIED)}, {_FTS} FROM tasks WHERE state = ?"
        )
        sql += " AND timestamp < ?" if before is not None else ""
        found: list[Row] = []
        for state in _FINAL:  # one (state, timestamp) index range each: no scan, no sort
            params = (state, before, limit) if before is not None else (state, limit)
            found.extend(self._conn.execute(f"{sql} ORDER BY timestamp LIMIT ?", params))
        found.sort(key=lambda r: (r[1] is not None, r[1]))
        return [(r[0], *r[2:]) for r in found[:limit]]

    def _count_values(self, changes: Counter[tuple[str, Any]]) -> None:
        for (column, value), n in changes.items():
            if n:
                counter = self._tally[column]
                counter[value] += n
                if counter[value] <= 0:
                    del counter[value]

    def _delete(self, victims: list[Row]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [v[0] for v in victims]
            conn.execute(f"DELETE FROM tasks WHERE id IN ({', '.join('?' * len(ids))})", ids)
            skip = 2 + len(_TALLIED)
            indexed = [(v[0], *v[skip:]) for v in victims if any(x is not None for x in v[skip:])]
            self._values(_FTS_DELETE, indexed)
            conn.execute(_COUNT_ADD, (-len(ids),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._count -= len(victims)
        for v in victims:
            self._recent.pop(v[1], None)
        gone: Counter[tuple[str, Any]] = Counter()
        gone.subtract((c, v[2 + n]) for v in victims for n, c in enumerate(_TALLIED))
        self._count_values(gone)
        self._pruned += len(victims)

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
        for i in range(0, len(rest), _LOOKUP_CHUNK):
            chunk = rest[i : i + _LOOKUP_CHUNK]
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
