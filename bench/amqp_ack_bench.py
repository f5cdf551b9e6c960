#!/usr/bin/env python
"""What acking after the store commits costs the RabbitMQ reader: drain a stable queue into a
real State and SqliteStore, acking (a) once applied (before), (b) once committed with the
prefetch window sized for the flush interval (now), (c) once committed with the old window.

    python bench/amqp_ack_bench.py --tasks 50000 --rounds 2 --out bench/results/amqp-ack.md

A private RabbitMQ node (``tests/fixtures/brokers.py``) holds K tasks x 3 events (the events of
``bench/store_bench.py``, JSON bodies as Celery publishes them) in a durable queue; then
``AmqpEventSource`` is started on it and timed until every event is applied, written and acked.
Variants run in the order a b c a b c ... (``--rounds``) so a noisy machine hurts all alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import amqp
import orjson
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import store_bench  # noqa: E402

from celeriac.constants import EVENT_EXCHANGE  # noqa: E402
from celeriac.events.amqp import PREFETCH, AmqpEventSource, committing  # noqa: E402
from celeriac.state import State  # noqa: E402
from celeriac.store.sqlite import SqliteStore  # noqa: E402
from tests.fixtures.brokers import RabbitMQServer  # noqa: E402

VARIANTS = {
    "a": "ack once applied (before), prefetch 2,000",
    "b": "ack once committed, prefetch sized for the flush interval",
    "c": "ack once committed, prefetch 2,000",
}


def fill(url: str, queue: str, bodies: list[tuple[str, bytes]]) -> None:
    host, _, rest = url.removeprefix("amqp://").partition("@")[2].partition("/")
    user, _, password = url.removeprefix("amqp://").partition("@")[0].partition(":")
    # py-amqp's default TCP_USER_TIMEOUT (1 s) drops a publisher the broker holds back under
    # flow control; give it a minute.
    conn = amqp.Connection(host, userid=user, password=password, virtual_host=rest or "/",
                           socket_settings={socket.TCP_USER_TIMEOUT: 60_000})  # fmt: skip
    conn.connect()
    ch = conn.channel()
    ch.exchange_declare(EVENT_EXCHANGE, "topic", durable=True, auto_delete=False)
    ch.queue_declare(queue, durable=True, exclusive=False, auto_delete=False)
    ch.queue_bind(queue, EVENT_EXCHANGE, "#")
    for key, body in bodies:
        ch.basic_publish(
            amqp.Message(body, content_type="application/json", content_encoding="utf-8"),
            exchange=EVENT_EXCHANGE, routing_key=key,
        )  # fmt: skip
    # Wait until the broker has them all (publishes are asynchronous).
    deadline = time.monotonic() + 120
    while ch.queue_declare(queue, passive=True)[1] < len(bodies):
        if time.monotonic() > deadline:
            raise SystemExit("the broker did not take every message")
        time.sleep(0.1)
    conn.close()


def delete(url: str, queue: str) -> None:
    with Connection(url) as conn:
        conn.default_channel.queue_delete(queue)


def drain(url: str, queue: str, variant: str, events: int, workdir: Path) -> dict[str, Any]:
    db = workdir / f"{variant}-{uuid.uuid4().hex[:6]}.sqlite3"
    store = SqliteStore(str(db))
    store.start()
    state = State(store)
    ack_when = None if variant == "a" else committing(store)
    prefetch = PREFETCH if variant in ("a", "c") else None
    src = AmqpEventSource(url, state.apply, queue_name=queue, ack_when=ack_when,
                          prefetch=prefetch)  # fmt: skip
    t0 = time.perf_counter()
    src.start()
    while True:
        time.sleep(0.01)
        if (
            state.applied >= events
            and store.stats()["pending"] == 0
            and not src._unacked
            and store.committed_mark() >= store.put_mark() - 1
        ):
            break
        if time.perf_counter() - t0 > 600:
            raise SystemExit(f"variant {variant}: not drained in 600 s ({state.applied})")
    seconds = time.perf_counter() - t0
    src.close()
    store.close()
    db.unlink(missing_ok=True)
    return {"seconds": seconds, "rate": events / seconds, "prefetch": src.prefetch}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--lag", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    bodies = []
    for kind, fields in store_bench.events(a.tasks, a.lag):
        bodies.append((kind.replace("-", "."), orjson.dumps(fields)))
    events = len(bodies)
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-ack-bench-"))
    server = RabbitMQServer().launch().wait_ready()
    load_before = store_bench.loadavg()
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    try:
        url = server.new_url("ackbench")
        for r in range(a.rounds):
            for variant in VARIANTS:
                queue = f"ack-bench-{variant}-{r}"
                fill(url, queue, bodies)
                got = drain(url, queue, variant, events, workdir)
                delete(url, queue)
                results[variant].append(got)
                print(f"round {r} {variant}: {got['seconds']:.1f} s, {got['rate']:,.0f} events/s "
                      f"(prefetch {got['prefetch']:,})", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = store_bench.loadavg()
    base = statistics.median(r["rate"] for r in results["a"])
    lines = [
        "# RabbitMQ: acking once the store has committed",
        "",
        f"Command: `python bench/amqp_ack_bench.py --tasks {a.tasks} --lag {a.lag} "
        f"--rounds {a.rounds}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other engineers' "
        f"test runs), Python {platform.python_version()}. Date: "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Load average (1, 5, 15 min) "
        f"before: {load_before}; after: {load_after}.",
        "",
        f"A durable queue on a private RabbitMQ node holds {a.tasks:,} tasks ({events:,} "
        "events, one message each); `AmqpEventSource` drains it into a `State` over a "
        "`SqliteStore` (flush interval 0.2 s), timed until every event is applied, written and "
        "acked. Medians over the rounds, variants interleaved:",
        "",
        "| variant | prefetch | events/s (median) | runs | vs before |",
        "|---|---|---|---|---|",
    ]
    for variant, label in VARIANTS.items():
        rates = [r["rate"] for r in results[variant]]
        med = statistics.median(rates)
        lines.append(
            f"| {label} | {results[variant][0]['prefetch']:,} | **{med:,.0f}** | "
            f"{', '.join(f'{x:,.0f}' for x in rates)} | {med / base:.2f}x |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
