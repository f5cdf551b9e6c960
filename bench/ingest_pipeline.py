"""celeriac's ingest pipeline in one process, without a broker: decode + merge on one thread,
the store's writer on its own thread, as in a live run (same GIL interplay), and the SQLite
writer in its own process (``--writer process``, the default) or on that thread (``--writer
thread``); fed as fast as it goes.

Builds the harness' synthetic tasks (../shared/bench/eventgen.py), wraps each event as kombu
does on Redis, then feeds chunks of ``--chunk`` envelopes through ``redis_messages`` and
``State.apply`` into a real ``SqliteStore`` (its writer thread running), and waits until
everything is written. Prints wall time, events/s, the process' CPU µs per event, and the
CPU of each thread. ``--spread`` interleaves the tasks' events so that a task spans flushes
(``--spread 0``: the generator's order, a task's 3 events back to back).

    python bench/ingest_pipeline.py -k 100000 --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest_cpu import envelope, events

from celeriac.events.decode import Decoded, redis_messages
from celeriac.state import State
from celeriac.store import sqlite_write
from celeriac.store.sqlite import SqliteStore


def spread(evs: list[dict], lag: int) -> list[dict]:
    """Each task's events ``lag`` tasks apart (the first of task i, then the second of task
    i - lag, ...), as real workers running many tasks at once send them."""
    if lag <= 0:
        return evs
    by_task = [evs[i : i + 3] for i in range(0, len(evs), 3)]
    out = []
    for i in range(len(by_task) + 2 * lag):
        for step in range(3):
            j = i - step * lag
            if 0 <= j < len(by_task) and step < len(by_task[j]):
                out.append(by_task[j][step])
    return out


def thread_cpu() -> dict[int, float]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def run(
    datas: list[bytes], chunk: int, k: int, options: dict[str, Any]
) -> tuple[float, float, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(os.path.join(tmp, "t.sqlite3"), max_tasks=10_000_000, **options)
        state = State(store)
        store.start()
        writer = next(t for t in threading.enumerate() if t.name == "celeriac-store")
        store.put({"uuid": "warm-up", "state": "PENDING"})  # starts the writer process
        store.flush()
        child = getattr(store._writer, "pid", None)
        child_before = process_cpu(child)
        before = thread_cpu()
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, len(datas), chunk):
            out = Decoded()
            redis_messages(datas[i : i + chunk], out)
            state.apply(out.events)
        fed = time.perf_counter() - t0
        while store.stats()["written"] < k or store.stats()["pending"]:
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        after = thread_cpu()
        me, wt = threading.get_native_id(), writer.native_id
        threads = {
            "ingest": after[me] - before.get(me, 0),
            "writer": after[wt] - before.get(wt, 0),
            "writer process": process_cpu(child) - child_before,
            "fed": fed,
        }
        cpu += threads["writer process"]
        store.close()
    return wall, cpu, threads


def process_cpu(pid: int | None) -> float:
    """CPU seconds of another process (the writer process), 0 without one."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("-k", type=int, default=100_000, help="tasks (3 events each)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=500, help="envelopes decoded together")
    ap.add_argument("--spread", type=int, default=0, help="tasks between a task's events")
    ap.add_argument("--max-pending", type=int, default=None, help="SqliteStore max_pending")
    ap.add_argument("--flush-interval", type=float, default=None, help="SqliteStore's (s)")
    ap.add_argument("--switch", type=float, default=None, help="sys.setswitchinterval (s)")
    ap.add_argument("--values-chunk", type=int, default=None,
                    help="rows per statement (max; with --writer thread only)")
    ap.add_argument("--writer", choices=("process", "thread"), default="process",
                    help="the SQLite writer in a process of its own (the default) or a thread")
    a = ap.parse_args()
    if a.values_chunk:
        sqlite_write.VALUES_CHUNK = a.values_chunk
    if a.switch:
        sys.setswitchinterval(a.switch)
    options: dict[str, Any] = {"writer_process": a.writer == "process"}
    if a.max_pending:
        options["max_pending"] = a.max_pending
    if a.flush_interval:
        options["flush_interval"] = a.flush_interval
    evs = spread(events(a.k), a.spread)
    datas = [envelope(e) for e in evs]
    print(f"load average before {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    for _ in range(a.reps):
        wall, cpu, th = run(datas, a.chunk, a.k, options)
        rows.append((wall, cpu, th["fed"]))
        print(
            f"  wall {wall:6.2f} s  {len(datas) / wall:8,.0f} events/s  "
            f"CPU {cpu / len(datas) * 1e6:5.1f} µs/event  "
            f"(ingest thread {th['ingest'] / len(datas) * 1e6:5.1f}, "
            f"writer thread {th['writer'] / len(datas) * 1e6:5.1f}, "
            f"writer process {th['writer process'] / len(datas) * 1e6:5.1f} µs/event; "
            f"fed in {th['fed']:.2f} s)"
        )
    wall = statistics.median(r[0] for r in rows)
    cpu = statistics.median(r[1] for r in rows)
    fed = statistics.median(r[2] for r in rows)
    print(
        f"median: {len(datas) / wall:,.0f} events/s written, {len(datas) / fed:,.0f} applied, "
        f"CPU {cpu / len(datas) * 1e6:.1f} µs/event "
        f"(best CPU {min(r[1] for r in rows) / len(datas) * 1e6:.1f}) "
        f"(k={a.k}, spread={a.spread}, chunk={a.chunk}, {options or 'defaults'}, "
        f"rows per statement {sqlite_write.VALUES_CHUNK})"
    )
    print(f"load average after {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
