"""What /metrics costs: on the ingest path per event, and per scrape.

    python bench/metrics_bench.py --tasks 50000 --out bench/results/metrics.md

Ingest: the same synthetic event stream (``--tasks`` tasks of 4 events each: sent, received,
started, succeeded; 100 task names, 10 workers, plus a heartbeat every 50 events) is applied to a
fresh ``State`` over a ``MemoryStore`` three ways, interleaved, ``--repeat`` times (medians):

- no observer (the state alone, the floor);
- celeriac's ``EventTally`` (plain dict counters, families built at scrape time);
- the baseline: an observer that updates ``prometheus_client`` labelled metrics on every event
  (a counter by worker, type and task, a runtime histogram, prefetch gauges), the usual way an
  exporter is written.

Scrape: ``Metrics.render`` over a tally holding ``--names`` task names on ``--workers`` workers,
every name on every worker (200 x 10 is the default cap of 2000 pairs, the largest scrape).

The machine is shared (2 cores): the load average is written with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402

from celeriac.events.base import Event  # noqa: E402
from celeriac.metrics import EventTally  # noqa: E402
from celeriac.server import create_app  # noqa: E402
from celeriac.settings import Settings  # noqa: E402
from celeriac.state import State  # noqa: E402
from celeriac.store.base import TaskRecord  # noqa: E402
from celeriac.store.memory import MemoryStore  # noqa: E402


class LabelledMetrics:
    """The baseline observer: prometheus_client metrics updated as each event is applied."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.events = Counter("bench_events", "events", ["worker", "type", "task"],
                              registry=registry)
        self.runtime = Histogram("bench_runtime_seconds", "runtime", ["worker", "task"],
                                 registry=registry)
        self.prefetched = Gauge("bench_prefetched", "prefetched", ["worker", "task"],
                                registry=registry)
        self.prefetch_time = Gauge("bench_prefetch_seconds", "prefetch", ["worker", "task"],
                                   registry=registry)

    def task_event(self, kind: str, ev: Event, rec: TaskRecord) -> None:
        worker = str(ev.get("hostname") or "")
        name = str(rec.get("name") or "")
        self.events.labels(worker, kind, name).inc()
        if kind == "task-received":
            self.prefetched.labels(worker, name).inc()
        elif kind == "task-started":
            self.prefetched.labels(worker, name).dec()
            if rec.get("received") is not None and rec.get("started") is not None:
                self.prefetch_time.labels(worker, name).set(rec["started"] - rec["received"])
        elif kind == "task-succeeded" and isinstance(ev.get("runtime"), float):
            self.runtime.labels(worker, name).observe(ev["runtime"])

    def worker_event(self, kind: str, ev: Event) -> None:
        pass


def stream(tasks: int) -> list[list[Event]]:
    """Batches of 100 events, as a reader hands them over."""
    now = time.time()
    events: list[Event] = []
    for i in range(tasks):
        name = f"proj.tasks.t{i % 100:02d}"
        worker = f"w{i % 10}@host"
        t = now + i * 0.001
        uuid = f"{i:08x}-0000-4000-8000-000000000000"
        events += [
            {"type": "task-sent", "uuid": uuid, "name": name, "hostname": "client@host",
             "timestamp": t, "clock": 4 * i},
            {"type": "task-received", "uuid": uuid, "name": name, "hostname": worker,
             "timestamp": t + 0.01, "clock": 4 * i + 1},
            {"type": "task-started", "uuid": uuid, "hostname": worker, "timestamp": t + 0.02,
             "clock": 4 * i + 2},
            {"type": "task-succeeded", "uuid": uuid, "hostname": worker, "runtime": 0.05,
             "result": "3", "timestamp": t + 0.07, "clock": 4 * i + 3},
        ]
        if i % 12 == 0:
            events.append({"type": "worker-heartbeat", "hostname": worker, "active": 1,
                           "freq": 2.0, "timestamp": t})
    return [events[i:i + 100] for i in range(0, len(events), 100)]


def ingest(batches: list[list[Event]], observer: Callable[[], Any] | None) -> float:
    """Seconds to apply every batch to a fresh state."""
    state = State(MemoryStore(len(batches) * 100))
    state.observer = observer() if observer else None
    started = time.perf_counter()
    for batch in batches:
        state.apply(batch)
    return time.perf_counter() - started


def scrape(names: int, workers: int, repeat: int) -> tuple[float, int, int]:
    """Median seconds of a render, its size in bytes, and the number of series."""
    app = create_app(Settings(broker="redis://127.0.0.1:1/0", unauthenticated_api=True,
                              db=":memory:"))
    metrics, state = app.state.metrics, app.state.cluster.state
    now = time.time()
    for n in range(names):
        uuid = f"u{n}"
        name = f"proj.tasks.t{n:04d}"
        for w in range(workers):  # every name on every worker: the worst case
            worker = f"w{w}@host"
            u = f"{uuid}-{w}"
            state.apply([
                {"type": "task-received", "uuid": u, "name": name, "hostname": worker,
                 "timestamp": now},
                {"type": "task-started", "uuid": u, "hostname": worker, "timestamp": now},
                {"type": "task-succeeded", "uuid": u, "hostname": worker, "runtime": 0.1,
                 "timestamp": now},
            ])
    times = []
    body = b""
    for _ in range(repeat):
        # A heartbeat just before, so that every worker is online (its series shown).
        state.apply([{"type": "worker-heartbeat", "hostname": f"w{w}@host", "active": 1,
                      "freq": 2.0} for w in range(workers)])
        started = time.perf_counter()
        body, _ = metrics.render(None)
        times.append(time.perf_counter() - started)
    lines = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return statistics.median(times), len(body), lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--names", type=int, default=200)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    batches = stream(args.tasks)
    n_events = sum(len(b) for b in batches)
    ways: dict[str, Callable[[], Any] | None] = {
        "state alone": None, "EventTally (celeriac)": EventTally,
        "labelled prometheus_client metrics (baseline)": LabelledMetrics,
    }
    runs: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.repeat):
        for label, observer in ways.items():  # interleaved: load changes hit all alike
            runs[label].append(ingest(batches, observer))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    floor = medians["state alone"]
    scrape_s, size, series = scrape(args.names, args.workers, args.repeat)

    lines = [
        f"# /metrics: cost per event and per scrape ({n_events:,} events)",
        "",
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load before "
        f"{load_before:.2f}. Medians of {args.repeat} interleaved runs "
        f"(`python bench/metrics_bench.py --tasks {args.tasks}`).",
        "",
        "| observer on the ingest path | µs / event | added to the state's own | events / s |",
        "|---|---|---|---|",
    ]
    for label, seconds in medians.items():
        per = seconds / n_events * 1e6
        added = (seconds - floor) / n_events * 1e6
        lines.append(f"| {label} | {per:.2f} | {'' if seconds == floor else f'+{added:.2f}'}"
                     f" | {n_events / seconds:,.0f} |")
    tally_added = medians["EventTally (celeriac)"] - floor
    base_added = medians["labelled prometheus_client metrics (baseline)"] - floor
    lines += [
        "",
        f"The tally adds {tally_added / max(base_added, 1e-12):.2f}x what per-event labelled "
        "metrics add.",
        "",
        f"Scrape (`Metrics.render`, text format) with {args.names} task names on "
        f"{args.workers} workers, every name on every worker: {scrape_s * 1000:.1f} ms, "
        f"{size / 1024:.0f} KiB, {series:,} samples.",
        "",
        f"Load after: {os.getloadavg()[0]:.2f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
