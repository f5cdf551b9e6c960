"""The write half of the SQLite store: one connection, the batch transaction, retention.

:class:`SqliteWriter` is everything that changes the database file: it writes a batch of task
records (and worker states) in one ``BEGIN IMMEDIATE`` transaction and deletes the oldest
finished tasks beyond the retention limits. It keeps no state the readers need; what they need
(the task count, the per-column tallies, new names) comes back in :class:`Written` and
:class:`Pruned`, so that the same writer can run on the store's writer thread or in a process of
its own (``store/sqlite_process.py``) and the store applies the results the same way.

Only the standard library and celeriac's own light modules are imported here: the writer
process starts with this module and nothing else.

The full-text index (FTS5, trigram) is filled by SQLite from the table itself, one statement
per batch (``_FTS_INDEX``), not from parameters: 2.5 times less CPU, no Python per row. The
writer runs few, large statements (many rows each) rather than ``executemany``: every statement
step releases the GIL, and getting it back from a busy ingest thread could take a whole switch
interval, so per-row steps made flushes several times slower under load (measured).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import itemgetter, ne
from typing import Any

from celeriac.constants import FINAL_STATES
from celeriac.store.base import PLAIN_TYPES, TaskRecord, plain
from celeriac.store.migrations import FTS_COLUMNS, TASK_COLUMNS

Row = tuple[Any, ...]

_COLS = ", ".join(TASK_COLUMNS)
_FTS = ", ".join(FTS_COLUMNS)
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
_COUNT_ADD = "UPDATE meta SET value = value + ? WHERE key = 'task_count'"
_FTS_AT = tuple(TASK_COLUMNS.index(c) for c in FTS_COLUMNS)
_NAME_AT, _WORKER_AT = TASK_COLUMNS.index("name"), TASK_COLUMNS.index("worker")
_fts_of = itemgetter(*_FTS_AT)
_POSITIONS = tuple(range(len(TASK_COLUMNS)))
#: Columns whose values are tallied by the writer: exact counts for filters, without a scan.
TALLIED = {c: TASK_COLUMNS.index(c) for c in ("state", "name", "worker")}
_FINAL = tuple(sorted(FINAL_STATES))
LOOKUP_CHUNK = 2000  # uuids per lookup statement
VALUES_CHUNK = 256  # rows per multi-row statement; powers of two keep the statements cached
_PRUNE_BATCH = 500  # rows per retention transaction: short, so a flush never waits long
#: The writer's page cache, in KiB: memory stays flat however big the database grows.
WRITER_CACHE_KB = 32 * 1024

#: ``(column, value) -> change`` of the tasks per state, name and worker.
Tally = Counter[tuple[str, Any]]


@dataclass
class Written:
    """What a batch changed, for the store's counters (see the module docstring)."""

    inserted: int
    count: int  # tasks stored after the batch
    tally: Tally = field(default_factory=Counter)
    names: frozenset[str] = frozenset()  # task names stored for the first time
    workers: frozenset[str] = frozenset()  # worker names stored for the first time


@dataclass
class Pruned:
    """What retention deleted, and the failure that stopped it, if one did."""

    deleted: int = 0
    count: int = 0  # tasks stored after it
    tally: Tally = field(default_factory=Counter)
    failure: tuple[str, str] | None = None  # (SQLite error name, text)


def snapshot(record: TaskRecord) -> Row:
    """The record's columns, each a value SQLite stores as is."""
    row = tuple(map(record.get, TASK_COLUMNS))
    return row if PLAIN_TYPES.issuperset(map(type, row)) else tuple(map(plain, row))


def _texts(rows: list[Row], at: int) -> Iterator[str]:
    """The non-empty text values of one column (a name or hostname sent as a number is not)."""
    return (r[at] for r in rows if r[at] and type(r[at]) is str)


def _indexed(row: Row) -> Row | None:
    """The row's full-text columns, or None when it has no text to index."""
    text: Row = _fts_of(row)
    return None if text.count(None) == len(text) else text


def error_name(exc: BaseException) -> str:
    """The kind a failed write is counted by: SQLite's error name, else the exception's."""
    return getattr(exc, "sqlite_errorname", None) or type(exc).__name__


def stored_totals(conn: sqlite3.Connection) -> tuple[int, frozenset[str], frozenset[str]]:
    """The task count and the task and worker names the database holds (no scan)."""
    count = conn.execute("SELECT value FROM meta WHERE key = 'task_count'").fetchone()[0]
    names = frozenset(r[0] for r in conn.execute("SELECT name FROM task_names"))
    workers = frozenset(r[0] for r in conn.execute("SELECT name FROM worker_names"))
    return int(count), names, workers


def configure(conn: sqlite3.Connection) -> None:
    """The writer connection's settings (per connection: each writer sets them)."""
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA synchronous = NORMAL")
    # Checkpoint every 40 MB of WAL, not 4: a page dirtied by several batches is then
    # copied into the database once (20-40% faster ingest at 1M tasks, measured).
    conn.execute("PRAGMA wal_autocheckpoint = 10000")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    # 32 MB: the hot ends of the indexes. The rest (the uuid index is random-access)
    # comes from the OS page cache, which is not this process's memory.
    conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KB:d}")


def _connect(uri: str) -> sqlite3.Connection:
    """The writer's own connection, configured."""
    conn = sqlite3.connect(
        uri, isolation_level=None, check_same_thread=False, cached_statements=256, uri=True
    )
    try:
        configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteWriter:
    """Writes batches and applies retention on one connection; see the module docstring.

    ``recent_max`` rows just committed are kept (see :meth:`_remember`). ``stored_names`` and
    ``stored_workers`` are the names already in ``task_names`` / ``worker_names``."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        recent_max: int,
        count: int,
        stored_names: frozenset[str],
        stored_workers: frozenset[str],
    ) -> None:
        self._conn = conn
        # The rows this writer committed lately, ``uuid -> (id, *TASK_COLUMNS)``.
        self._recent: OrderedDict[str, Row] = OrderedDict()
        self._recent_max = recent_max
        self.count = count
        self._stored_names = stored_names
        self._stored_workers = stored_workers
        self._uri: str | None = None  # set when the connection is the writer's own (open)

    @classmethod
    def open(cls, path: str, recent_max: int) -> SqliteWriter:
        """A writer on its own connection to the (already migrated) database at ``path``; one
        that is gone (deleted under the running monitor) is an error, not a new empty file."""
        uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw"
        conn = _connect(uri)
        try:
            count, names, workers = stored_totals(conn)
        except BaseException:
            conn.close()
            raise
        writer = cls(conn, recent_max, count, names, workers)
        writer._uri = uri
        return writer

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA optimize")  # keeps the planner's statistics current
        self._conn.close()

    def rest(self) -> None:
        """Give back what only a burst needs: the page cache, the prepared statements and
        the rows kept for the next events.

        They pay off at full speed (the 32 MB page cache saves 10 to 16% of a write's CPU
        at 100,000 tasks, measured against 8 and 4 MB); kept at rest they make the writer
        about 50 MB bigger after 100,000 tasks (82 MB instead of 34). The writer's own
        connection is replaced by a fresh one, the only way to drop its statements (10 MB of
        multi-row statements); one shared with the store only empties its cache. SQLite
        refills the cache from the OS page cache as the next burst touches pages, and a
        task's next events find its row with one lookup.
        """
        self._recent.clear()
        if self._uri is None:
            self._conn.execute("PRAGMA shrink_memory")
            return
        fresh = _connect(self._uri)  # an error leaves the writer as it was
        self._conn.close()
        self._conn = fresh

    # --- writes -----------------------------------------------------------------------------

    def write(
        self, records: Sequence[TaskRecord], workers: Mapping[str, dict[str, Any]]
    ) -> Written:
        """Write the records (the newest version of each task) and the workers' states in one
        transaction; raises sqlite3.Error, and then nothing of the batch is written."""
        rows = [snapshot(record) for record in records]
        try:
            return self._write(rows, workers)
        except OverflowError:  # an int beyond 64 bits: keep it as text
            return self._write([tuple(map(plain, row)) for row in rows], workers)

    def _write(self, rows: list[Row], workers: Mapping[str, dict[str, Any]]) -> Written:
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
        self.count += len(inserts)
        tally: Tally = Counter()
        gone: Tally = Counter()
        for column, at in TALLIED.items():  # counted in C; subtracted per distinct value
            tally.update(zip(repeat(column), (r[at + 1] for r in written)))
            gone.update(zip(repeat(column), (r[at] for r in replaced)))
        tally.subtract(gone)
        self._remember(written)
        self._stored_names |= names
        self._stored_workers |= hosts
        changes: Tally = Counter({k: n for k, n in tally.items() if n})
        return Written(len(inserts), self.count, changes, names, hosts)

    def _values(self, sql: str, rows: Sequence[Row]) -> None:
        """Run ``sql`` over ``rows``, up to VALUES_CHUNK rows per statement."""
        done = 0
        while done < len(rows):
            size = min(VALUES_CHUNK, 1 << ((len(rows) - done).bit_length() - 1))
            chunk = rows[done : done + size]
            marks = "(" + ", ".join("?" * len(chunk[0])) + ")"
            self._conn.execute(sql.format(", ".join([marks] * size)), [v for r in chunk for v in r])
            done += size

    def _remember(self, written: list[Row]) -> None:
        """Keep the rows just committed (the newest ``recent_max``): a task's next events
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
        for i in range(0, len(uuids), LOOKUP_CHUNK):
            chunk = uuids[i : i + LOOKUP_CHUNK]
            sql = _LOOKUP.format(", ".join("?" * len(chunk)))
            for row in json.loads(self._conn.execute(sql, chunk).fetchone()[0]):
                found[row[1]] = tuple(float(v[0]) if type(v) is list else v for v in row)
        return found

    # --- retention --------------------------------------------------------------------------

    def prune(self, budget: float, max_tasks: int | None, max_age: float | None) -> Pruned:
        """Delete the oldest finished tasks beyond the limits, in short transactions.

        At least one batch per call, so that retention keeps up under any ingest load, and
        more only within ``budget`` seconds, so that the next flush is not delayed. A failed
        delete stops it (reported in ``failure``); what was deleted before stays deleted.
        """
        deadline = time.monotonic() + budget
        out = Pruned(count=self.count)
        while True:
            victims: list[Row] = []
            if max_age is not None:
                victims = self._oldest_finished(_PRUNE_BATCH, time.time() - max_age)
            if not victims and max_tasks is not None and self.count > max_tasks:
                victims = self._oldest_finished(min(_PRUNE_BATCH, self.count - max_tasks))
            if not victims:
                break
            try:
                self._delete(victims)
            except sqlite3.Error as exc:
                out.failure = (error_name(exc), str(exc))
                break
            out.deleted += len(victims)
            out.tally.subtract((c, v[2 + n]) for v in victims for n, c in enumerate(TALLIED))
            if time.monotonic() >= deadline:
                break
        out.count = self.count
        return out

    def _oldest_finished(self, limit: int, before: float | None = None) -> list[Row]:
        """``(id, uuid, state, name, worker, *FTS_COLUMNS)`` of up to ``limit`` finished
        tasks, oldest first."""
        sql = f"SELECT id, timestamp, uuid, {', '.join(TALLIED)}, {_FTS} FROM tasks WHERE state = ?"
        sql += " AND timestamp < ?" if before is not None else ""
        found: list[Row] = []
        for state in _FINAL:  # one (state, timestamp) index range each: no scan, no sort
            params = (state, before, limit) if before is not None else (state, limit)
            found.extend(self._conn.execute(f"{sql} ORDER BY timestamp LIMIT ?", params))
        found.sort(key=lambda r: (r[1] is not None, r[1]))
        return [(r[0], *r[2:]) for r in found[:limit]]

    def _delete(self, victims: list[Row]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [v[0] for v in victims]
            conn.execute(f"DELETE FROM tasks WHERE id IN ({', '.join('?' * len(ids))})", ids)
            skip = 2 + len(TALLIED)
            indexed = [(v[0], *v[skip:]) for v in victims if any(x is not None for x in v[skip:])]
            self._values(_FTS_DELETE, indexed)
            conn.execute(_COUNT_ADD, (-len(ids),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.count -= len(victims)
        for v in victims:
            self._recent.pop(v[1], None)
