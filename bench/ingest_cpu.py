"""Where celeriac's ingest CPU goes, per stage, in one process (no broker, no HTTP).

Builds the harness' synthetic tasks (../shared/bench/eventgen.py: received, started, succeeded
or failed), wraps each event as kombu does on Redis, then measures thread CPU time per event for:

- decode: ``redis_messages`` over batches of 1,500 envelopes (base64 + orjson);
- apply: ``State.apply`` with a store that keeps nothing (the merge alone);
- store writer: ``SqliteStore`` flushes of K tasks first seen (inserts), then of their
  remaining events (updates); and of K tasks whose 3 events come in one flush; with the time
  of each kind of statement.

CPU time, not wall time, so that a loaded machine changes the numbers less (it still does:
caches are shared). Best of ``--reps`` (each flush kind: the rep with the least CPU in all).

    python bench/ingest_cpu.py -k 30000
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HARNESS = Path(os.environ.get("CELERIAC_BENCH_HARNESS", REPO.parent / "shared" / "bench"))
sys.path.insert(0, str(HARNESS))
sys.path.insert(0, str(REPO))

import eventgen  # noqa: E402

from celeriac.events.decode import Decoded, redis_messages  # noqa: E402
from celeriac.state import State  # noqa: E402
from celeriac.store import sqlite as sqlite_store  # noqa: E402

BATCH = 1500


def events(k: int) -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:12]
    out = []
    for i in range(k):
        for kind, host, fields in eventgen.task_events(run, i, 0.1, f"celery@w{i % 10}"):
            out.append(dict(fields, type=kind, hostname=host, timestamp=time.time(),
                            utcoffset=0, pid=1, clock=i))
    return out


def envelope(event: dict[str, Any]) -> bytes:
    body = base64.b64encode(json.dumps(event).encode()).decode()
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"hostname": event["hostname"]},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev",
                              "routing_key": event["type"].replace("-", ".")},
            "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }).encode()


class NoStore:
    def put(self, record: Any) -> None: ...

    def put_many(self, records: Any) -> None: ...

    def put_worker(self, hostname: str, info: Any) -> None: ...

    def get(self, uuid: str) -> None:
        return None

    def get_many(self, uuids: Any) -> dict[str, Any]:
        return {}

    def workers(self) -> dict[str, Any]:
        return {}


def decode_and_apply(evs: list[dict[str, Any]], reps: int) -> dict[str, float]:
    datas = [envelope(e) for e in evs]
    best = {"decode": float("inf"), "apply": float("inf")}
    for _ in range(reps):
        c0 = time.thread_time()
        batches = []
        for i in range(0, len(datas), BATCH):
            out = Decoded()
            redis_messages(datas[i : i + BATCH], out)
            batches.append(out.events)
        c1 = time.thread_time()
        state = State(NoStore())  # type: ignore[arg-type]
        for batch in batches:
            state.apply(batch)
        c2 = time.thread_time()
        best["decode"] = min(best["decode"], (c1 - c0) / len(evs) * 1e6)
        best["apply"] = min(best["apply"], (c2 - c1) / len(evs) * 1e6)
    return best


class TimedConnection:
    """The writer's connection, timing each statement by its first words (thread CPU)."""

    def __init__(self, conn: Any, timed: collections.defaultdict[str, float]) -> None:
        self.conn, self.timed = conn, timed

    def execute(self, sql: str, *params: Any) -> Any:
        t = time.thread_time()
        try:
            return self.conn.execute(sql, *params)
        finally:
            self.timed[" ".join(sql.split()[:4])] += time.thread_time() - t

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def store_writer(evs: list[dict[str, Any]], k: int) -> list[tuple[str, float, list[str]]]:
    """Two runs: a task's events split over two flushes (the first event, then the others:
    an insert, then an update), and all of them in one flush (an insert of the final state,
    as in a burst of short tasks)."""
    timed: collections.defaultdict[str, float] = collections.defaultdict(float)
    out: list[tuple[str, float, list[str]]] = []
    first = [e for e in evs if e["type"] == "task-received"]
    rest = [e for e in evs if e["type"] != "task-received"]
    runs = [
        [("insert (first event of each task)", first), ("update (the other events)", rest)],
        [("insert of finished tasks (their 3 events in one flush)", evs)],
    ]
    for flushes in runs:
        with tempfile.TemporaryDirectory() as tmp:
            store = sqlite_store.SqliteStore(
                os.path.join(tmp, "t.sqlite3"), max_tasks=10**7, writer_process=False
            )  # on this thread, to time its statements
            writer = store._writer
            writer._conn = TimedConnection(writer._conn, timed)  # type: ignore[union-attr]
            state = State(store)
            for label, part in flushes:
                for i in range(0, len(part), BATCH):
                    state.apply(part[i : i + BATCH])
                timed.clear()
                c0 = time.thread_time()
                store._flush_once()  # on this thread, to count its CPU
                total = time.thread_time() - c0
                lines = [f"{label}: {total / k * 1e6:.0f} µs CPU per task ({k} tasks)"]
                for what, seconds in sorted(timed.items(), key=lambda kv: -kv[1]):
                    if seconds / k * 1e6 >= 0.05:
                        lines.append(f"    {seconds / k * 1e6:6.1f} µs  {what}")
                sql = sum(timed.values())
                lines.append(f"    {(total - sql) / k * 1e6:6.1f} µs  Python around the statements")
                out.append((label, total, lines))
            store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", type=int, default=30_000, help="tasks (3 events each)")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    evs = events(a.k)
    print(f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    best = decode_and_apply(evs, a.reps)
    print(f"decode (Redis envelope): {best['decode']:.2f} µs CPU per event")
    print(f"apply (State merge, no store): {best['apply']:.2f} µs CPU per event")
    best: dict[str, tuple[float, list[str]]] = {}  # per kind of flush, the cheapest rep
    for _ in range(a.reps):
        for label, total, lines in store_writer(evs, a.k):
            if label not in best or total < best[label][0]:
                best[label] = (total, lines)
    for _, lines in best.values():
        print("\n".join(lines))
    print(f"load average after {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
