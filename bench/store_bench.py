"""The task history at a million tasks: a real celeriac, fed through Redis, measured over HTTP.

    python bench/store_bench.py --tasks 1000000 --out bench/results/store.md

What it does (``--mode http``, the default):

1. starts a private ``redis-server`` and ``celeriac --db <file>`` on it (SQLite store, the
   default), as a user would run them;
2. publishes ``--tasks`` tasks, 3 events each (task-received, task-started, task-succeeded or
   task-failed), in kombu's exact Redis envelope, interleaved (``--lag`` tasks between the
   events of one task, so a task's events land in different flushes), plus heartbeats of 8
   workers. Publishing is paced on what celeriac reports applied (``/api/celeriac/status``),
   as a broker would be drained by a live monitor, so the rate is celeriac's, end to end:
   read, decode, merge, write;
3. waits until the store has written everything, then times the API with keep-alive HTTP
   requests, one at a time: ``/api/tasks?limit=100``, filtered, paged (shallow and deep
   offsets), searches, and ``/api/task/info``. Memory is celeriac's RSS (psutil), sampled
   during the load and after the queries.

``--mode inprocess`` feeds ``SqliteStore.put`` directly (no broker, no HTTP): the store's own
ceiling, for comparison.

The machine is shared: the load average before and after is written with the results; quote
medians.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

SETTLE_S = 10.0  # how long after the last query RSS is sampled again
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celeriac.constants import TASK_FIELDS  # noqa: E402
from celeriac.settings import redact_url  # noqa: E402
from celeriac.store.base import TaskQuery, TaskRecord  # noqa: E402
from celeriac.store.sqlite import SqliteStore  # noqa: E402

WORKERS = [f"celery@fakeworker-{w:02d}" for w in range(8)]
NAMES = ["tasks.add"] * 14 + ["tasks.echo"] * 3 + ["tasks.sleep"] * 2 + ["tasks.error"]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/site-packages/celery/app/trace.py", line 453, in trace_task\n'
    "    R = retval = fun(*args, **kwargs)\n"
    '  File "/srv/app/tasks.py", line 38, in error\n'
    "    raise BenchError(msg)\n"
    "tasks.BenchError: boom {i}\n"
)


# The synthetic tasks ---------------------------------------------------------------------------


def task_uuid(i: int) -> str:
    return str(uuid.UUID(int=random.Random(i).getrandbits(128), version=4))


def received_fields(i: int, u: str) -> dict[str, Any]:
    name = NAMES[i % len(NAMES)]
    if name == "tasks.add":
        args, kwargs = f"({i}, {2 * i})", "{}"
    elif name == "tasks.echo":
        args, kwargs = f"('payload-{u[:8]}-{'x' * 40}',)", "{}"
    elif name == "tasks.sleep":
        args, kwargs = "()", f"{{'seconds': 0, 'user': {i % 1000}}}"
    else:
        args, kwargs = f"('boom {i}',)", "{}"
    return {
        "uuid": u, "name": name, "args": args, "kwargs": kwargs, "root_id": u,
        "parent_id": None, "retries": 0, "eta": None, "expires": None,
    }  # fmt: skip


def final_fields(i: int, u: str) -> tuple[str, dict[str, Any]]:
    name = NAMES[i % len(NAMES)]
    if name == "tasks.error":
        return "task-failed", {
            "uuid": u, "exception": f"BenchError('boom {i}')", "traceback": TRACEBACK.format(i=i)
        }  # fmt: skip
    if name == "tasks.add":
        result = repr(3 * i)
    elif name == "tasks.echo":
        result = repr(f"payload-{u[:8]}-{'x' * 40}")
    else:
        result = "0"
    return "task-succeeded", {"uuid": u, "result": result, "runtime": 0.0005 + (i % 7) / 1e4}


def events(n: int, lag: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, fields) of n tasks, 3 events each, a task's events ``lag`` tasks apart."""
    clock = 0
    for step in range(n + 2 * lag):
        for i, kind in ((step, "task-received"), (step - lag, "task-started"),
                        (step - 2 * lag, "final")):  # fmt: skip
            if not 0 <= i < n:
                continue
            u = task_uuid(i)
            clock += 1
            if kind == "task-received":
                fields = received_fields(i, u)
            elif kind == "task-started":
                fields = {"uuid": u}
            else:
                kind, fields = final_fields(i, u)
            fields.update(hostname=WORKERS[i % len(WORKERS)], clock=clock, pid=4242,
                          utcoffset=0, timestamp=time.time(), type=kind)  # fmt: skip
            yield kind, fields


def envelope(channel_prefix: bytes, kind: str, fields: dict[str, Any]) -> tuple[bytes, bytes]:
    """The channel and payload Celery's dispatcher publishes for one event (kombu's JSON
    envelope, the event base64 JSON under ``body``)."""
    routing_key = kind.replace("-", ".")
    body = base64.b64encode(orjson.dumps(fields)).decode()
    payload = orjson.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"hostname": fields["hostname"]},
        "properties": {"delivery_mode": 1, "delivery_info": {
            "exchange": "celeryev", "routing_key": routing_key}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    })  # fmt: skip
    return channel_prefix + routing_key.encode(), payload


# Processes ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


#: Every process the benchmark started.
STARTED: list[subprocess.Popen[bytes]] = []


class Redis:
    """A private redis-server and a raw RESP connection that pipelines PUBLISH commands."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        STARTED.append(self.proc)
        self.sock = wait_until(
            lambda: socket.create_connection(("127.0.0.1", self.port), 1), 10, "redis-server"
        )
        self.sock.settimeout(60)
        self.replies = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def publish_many(self, messages: list[tuple[bytes, bytes]]) -> None:
        out = bytearray()
        for channel, payload in messages:
            out += b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                len(channel), channel, len(payload), payload)  # fmt: skip
        self.sock.sendall(out)
        want, got = len(messages), 0  # one ":<n>\r\n" reply each
        while got < want:
            got += self.sock.recv(1 << 20).count(b"\r\n")

    def stop(self) -> None:
        self.sock.close()
        self.proc.terminate()
        self.proc.wait(10)


class Celeriac:
    def __init__(self, broker: str, db: Path | str, log: Path, extra: list[str]) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "--broker", broker, "--port", str(self.port),
             "--db", str(db), "--unauthenticated-api", "--log-level", "warning", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        STARTED.append(self.proc)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        self.ps = psutil.Process(self.proc.pid)
        wait_until(lambda: self.http.get("/healthcheck").status_code == 200, 60, "celeriac")

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = self.http.get("/api/celeriac/status").json()
        return found

    def rss(self) -> int:
        """celeriac's RSS with its children's (the SQLite writer process), summed."""
        total = self.ps.memory_info().rss
        for child in self.ps.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return int(total)

    def stop(self) -> None:
        self.http.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(120)
        self.log.close()


# Measuring ------------------------------------------------------------------------------------


def timed_samples(fn: Callable[[], Any], runs: int) -> list[float]:
    fn()  # warm
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return samples


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    fn()  # warm
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.95) - 1)]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def get_ok(http: httpx.Client, path: str, **params: Any) -> bytes:
    """The whole body of a 200 answer. Not parsed: decoding 65 kB of JSON with the standard
    library costs the client 2-4 ms, which is not celeriac's time (measured)."""
    r = http.get(path, params=params)
    if r.status_code != 200:
        raise SystemExit(f"GET {path} {params}: {r.status_code} {r.text[:200]}")
    return r.content


def run_http(a: argparse.Namespace, workdir: Path) -> list[str]:
    redis = Redis(workdir)
    db: Path | str = a.db or workdir / "tasks.sqlite3"
    monitor = Celeriac(redis.url, db, workdir / "celeriac.log",
                       ["--max-tasks", str(2 * a.tasks)])  # fmt: skip
    load_before = loadavg()
    rss_idle = monitor.rss()
    prefix = b"/0.celeryev/"
    published = 0
    rss_peak = rss_idle
    t0 = time.perf_counter()
    batch: list[tuple[bytes, bytes]] = []
    last_beat = 0.0
    applied = 0
    for kind, fields in () if a.reuse else events(a.tasks, a.lag):
        batch.append(envelope(prefix, kind, fields))
        if len(batch) < 1000:
            continue
        now = time.perf_counter()
        if now - last_beat > 2.0:  # workers' heartbeats, as real workers send them
            last_beat = now
            for w in WORKERS:
                batch.append(envelope(prefix, "worker-heartbeat", {
                    "hostname": w, "freq": 2.0, "active": 1, "processed": published // 8,
                    "loadavg": [0.5, 0.4, 0.3], "sw_ident": "py-celery", "sw_ver": "5.7.0",
                    "sw_sys": "Linux", "timestamp": time.time(), "type": "worker-heartbeat",
                    "clock": 0, "pid": 4242, "utcoffset": 0}))  # fmt: skip
        redis.publish_many(batch)
        published += len(batch)
        batch = []
        while published - applied > a.backlog:  # paced by what celeriac has applied
            time.sleep(0.01)
            applied = monitor.status()["events"]["applied"]
        if published % 100_000 < 1010:
            rss_peak = max(rss_peak, monitor.rss())
            print(f"  {published:,} published, {applied:,} applied, "
                  f"{time.perf_counter() - t0:.0f} s, RSS {monitor.rss() / 1e6:.0f} MB",
                  flush=True)  # fmt: skip
    if batch:
        redis.publish_many(batch)
        published += len(batch)

    def written() -> bool:
        nonlocal rss_peak
        rss_peak = max(rss_peak, monitor.rss())
        s = monitor.status()
        return s["events"]["applied"] >= published and s["store"]["pending"] == 0

    wait_until(written, 600, "every event applied and written")
    seconds = time.perf_counter() - t0
    status = monitor.status()
    rss_ingest = monitor.rss()
    size = store_size(db)

    http = monitor.http
    rng = random.Random(7)
    sample = [task_uuid(rng.randrange(a.tasks)) for _ in range(200)]
    if a.reuse and not is_url(db):  # the tasks that are there (retention may have run)
        with contextlib.closing(sqlite3.connect(str(db))) as conn:
            sample = [u for (u,) in conn.execute(
                "SELECT uuid FROM tasks ORDER BY random() LIMIT 200")]  # fmt: skip
    probes: list[tuple[str, Callable[[], Any]]] = [
        ("`/api/tasks?limit=100` (newest first)", lambda: get_ok(http, "/api/tasks", limit=100)),
        ("filtered: `state=FAILURE&limit=100`",
         lambda: get_ok(http, "/api/tasks", state="FAILURE", limit=100)),
        ("filtered: `taskname=tasks.echo&workername=celery@fakeworker-03&limit=100`",
         lambda: get_ok(http, "/api/tasks", taskname="tasks.echo",
                        workername="celery@fakeworker-03", limit=100)),
        ("paged: `taskname=tasks.echo&offset=5000&limit=100`",
         lambda: get_ok(http, "/api/tasks", taskname="tasks.echo", offset=5000, limit=100)),
        ("deep page: `offset=500000&limit=100`",
         lambda: get_ok(http, "/api/tasks", offset=500_000, limit=100)),
        ("sorted: `sort_by=-received&limit=100`",
         lambda: get_ok(http, "/api/tasks", sort_by="-received", limit=100)),
        ("sorted: `sort_by=name&limit=100`",
         lambda: get_ok(http, "/api/tasks", sort_by="name", limit=100)),
        ("search `boom 4259` (1 task: args and exception)",
         lambda: get_ok(http, "/api/tasks", search="boom 4259", limit=100)),
        ("search `args:payload` (15% of tasks), limit=100",
         lambda: get_ok(http, "/api/tasks", search="args:payload", limit=100)),
        ("search `kwargs:user=123 OR result:12345`",
         lambda: get_ok(http, "/api/tasks", search="kwargs:user=123 OR result:12345",
                        limit=100)),
        ("search `state:failure boom 9` (a qualifier and text)",
         lambda: get_ok(http, "/api/tasks", search="state:failure boom 9", limit=100)),
        ("`/api/task/info/<id>` (random task)",
         lambda: get_ok(http, f"/api/task/info/{rng.choice(sample)}")),
        ("`/api/task/types`", lambda: get_ok(http, "/api/task/types")),
    ]  # fmt: skip
    probes.append(("`/healthcheck` (the HTTP floor: no store)",
                   lambda: http.get("/healthcheck").raise_for_status()))
    # The UI's charts, insights and an export read whole windows: fewer runs of each.
    heavy: list[tuple[str, Callable[[], Any]]] = [
        ("charts: `/api/celeriac/stats/throughput?window=1h`",
         lambda: get_ok(http, "/api/celeriac/stats/throughput", window="1h")),
        ("charts: `/api/celeriac/stats/throughput?window=24h`",
         lambda: get_ok(http, "/api/celeriac/stats/throughput", window="24h")),
        ("insights: `/api/celeriac/stats/task-types?window=1h`",
         lambda: get_ok(http, "/api/celeriac/stats/task-types", window="1h")),
        ("insights: `/api/celeriac/stats/task-types?window=24h`",
         lambda: get_ok(http, "/api/celeriac/stats/task-types", window="24h")),
        ("insights: `/api/celeriac/failures?window=24h` (every failed task)",
         lambda: get_ok(http, "/api/celeriac/failures", window="24h")),
        ("export: `/api/celeriac/tasks/export?state=FAILURE` (CSV, 5% of tasks)",
         lambda: get_ok(http, "/api/celeriac/tasks/export", state="FAILURE")),
    ]  # fmt: skip
    heavy_runs = max(3, a.runs // 10)
    samples: dict[str, list[float]] = {label: [] for label, _ in probes + heavy}
    for _ in range(a.rounds):  # rounds spread a noisy neighbour's bursts over every probe
        for label, fn in probes:
            samples[label] += timed_samples(fn, a.runs)
        for label, fn in heavy:
            samples[label] += timed_samples(fn, heavy_runs)
    probes += heavy
    rows = []
    for label, _ in probes:
        got = sorted(samples[label])
        p50, p95 = statistics.median(got), got[max(0, int(len(got) * 0.95) - 1)]
        rows.append((label, p50, p95))
        print(f"  {label}: p50 {p50:.2f} ms, p95 {p95:.2f} ms", flush=True)
    rss_end = monitor.rss()
    time.sleep(SETTLE_S)  # celeriac gives back what the queries freed (celeriac/heap.py)
    rss_settled = monitor.rss()
    held = monitor.status()["tasks_stored"]
    load_after = loadavg()
    monitor.stop()
    redis.stop()
    stats = status["store"]
    return [
        "# The task history at a million tasks: a real celeriac over HTTP",
        "",
        f"Command: `python bench/store_bench.py --tasks {a.tasks} --lag {a.lag} "
        f"--backlog {a.backlog} --runs {a.runs} --rounds {a.rounds}"
        f"{' --reuse' if a.reuse else ''}"
        f"{' --db ' + redact_url(str(a.db)) if a.db else ''}`",
        "",
        f"Machine: {platform.machine()}, {psutil.cpu_count()} CPUs (shared with other "
        f"engineers' test runs), Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
        f" Load average (1, 5, 15 min) before: {load_before}; after: {load_after}.",
        "",
        f"celeriac ({store_kind(db)} store) read every event from a private redis-server, "
        "published in kombu's exact envelope and paced on what celeriac had applied "
        f"(at most {a.backlog:,} events ahead).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| tasks / events published | {a.tasks:,} / {published:,} |",
        f"| ingest with the store on, until the last event is written | {seconds:.1f} s: "
        f"**{published / seconds:,.0f} events/s** ({a.tasks / seconds:,.0f} tasks/s) |"
        if not a.reuse else "| ingest | not measured: `--reuse` of the database of a run |",
        f"| tasks held at the end (`/api/celeriac/status`) | {held:,} |",
        f"| rows written (after coalescing) | {stats['written']:,} in {stats['flushes']:,} "
        f"flushes |",
        f"| database size ({'pg_database_size' if is_url(db) else 'file + WAL'}) | "
        f"{size / 1e6:,.0f} MB |",
        f"| celeriac RSS: idle / peak during ingest / after ingest / after the queries / "
        f"{SETTLE_S:.0f} s later | "
        f"{rss_idle / 1e6:.0f} / {rss_peak / 1e6:.0f} / {rss_ingest / 1e6:.0f} / "
        f"**{rss_end / 1e6:.0f}** / **{rss_settled / 1e6:.0f} MB** |",
        "",
        f"HTTP latencies at {held:,} tasks: {a.rounds} rounds of {a.runs} requests each "
        f"({heavy_runs} of each chart, insight and export), one at a time, keep-alive "
        "(httpx), until the whole body is read (not parsed):",
        "",
        "| request | p50 ms | p95 ms |",
        "|---|---|---|",
        *[f"| {label} | {p50:.2f} | {p95:.2f} |" for label, p50, p95 in rows],
        "",
    ]


def is_url(db: Path | str) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


def store_kind(db: Path | str) -> str:
    return "PostgreSQL" if is_url(db) else "SQLite, the default"


def store_size(db: Path | str) -> int:
    """Bytes the history takes: the SQLite file and its WAL, or the PostgreSQL database."""
    if is_url(db):
        import psycopg

        with psycopg.connect(str(db)) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0
    return sum(os.path.getsize(f"{db}{s}") for s in ("", "-wal") if os.path.exists(f"{db}{s}"))


def run_inprocess(a: argparse.Namespace, workdir: Path) -> list[str]:
    """The store alone: events as the state would put them, no broker, no HTTP."""
    db = workdir / "tasks.sqlite3"
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    store = SqliteStore(str(db))
    store.start()
    load_before = loadavg()
    t0 = time.perf_counter()
    live: dict[str, TaskRecord] = {}
    order: deque[str] = deque()
    for kind, fields in events(a.tasks, a.lag):
        u = fields["uuid"]
        record = live.get(u)
        if record is None:
            record = live[u] = dict.fromkeys(f for f in TASK_FIELDS if f != "children")
            record.update(uuid=u, state="PENDING")
            order.append(u)
        record.update({k: v for k, v in fields.items() if k in record and v is not None})
        record["worker"] = fields["hostname"]
        record["state"] = {"task-received": "RECEIVED", "task-started": "STARTED",
                           "task-succeeded": "SUCCESS", "task-failed": "FAILURE"}[kind]
        store.put(record)
        if kind in ("task-succeeded", "task-failed"):
            live.pop(u, None)
        if len(order) % 1000 == 0:
            while store.stats()["pending"] > a.backlog:
                time.sleep(0.005)
    store.flush()
    seconds = time.perf_counter() - t0
    rss = proc.memory_info().rss
    size = sum(os.path.getsize(f"{db}{s}") for s in ("", "-wal") if os.path.exists(f"{db}{s}"))
    rows = [
        (label, *timed(fn, a.runs))
        for label, fn in [
            ("latest 100", lambda: store.query(TaskQuery(limit=100))),
            ("state=FAILURE, 100", lambda: store.query(TaskQuery(state="FAILURE", limit=100))),
            ("search `boom 4259`", lambda: store.query(TaskQuery(search="boom 4259", limit=100))),
        ]
    ]
    store.close()
    return [
        "# SqliteStore alone (in-process, no broker, no HTTP)",
        "",
        f"Command: `python bench/store_bench.py --mode inprocess --tasks {a.tasks}`; load "
        f"before {load_before}, after {loadavg()}.",
        "",
        f"{3 * a.tasks:,} events put in {seconds:.1f} s: **{3 * a.tasks / seconds:,.0f} "
        f"events/s**; database {size / 1e6:,.0f} MB; RSS {rss0 / 1e6:.0f} -> {rss / 1e6:.0f} MB.",
        "",
        "| query | p50 ms | p95 ms |",
        "|---|---|---|",
        *[f"| {label} | {p50:.2f} | {p95:.2f} |" for label, p50, p95 in rows],
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--mode", choices=("http", "inprocess"), default="http")
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--lag", type=int, default=2000, help="tasks between a task's events")
    ap.add_argument("--backlog", type=int, default=10_000,
                    help="events published ahead of what celeriac applied (inprocess: tasks "
                         "waiting for the writer)")  # fmt: skip
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1, help="times the list of probes is run")
    ap.add_argument("--reuse", action="store_true",
                    help="http mode: measure the queries on the database a run left in "
                         "--workdir, without ingesting again")  # fmt: skip
    ap.add_argument("--workdir", default="/tmp/celeriac-store-bench")
    ap.add_argument("--db", default=None,
                    help="http mode: celeriac's --db, e.g. a postgresql:// URL of an empty "
                         "database (default: a SQLite file in --workdir)")  # fmt: skip
    ap.add_argument("--out", default=None, help="markdown results file")
    a = ap.parse_args()
    workdir = Path(a.workdir)
    if not a.reuse:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        lines = run_http(a, workdir) if a.mode == "http" else run_inprocess(a, workdir)
    finally:  # whatever went wrong, no celeriac or redis-server is left behind
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
