#!/usr/bin/env python
"""Events/s and losses of celeriac's event readers next to Celery's own ``EventReceiver``.

Each reader runs in a process of its own with the same trivial sink (a dict update per event,
per task uuid), subscribes, and then ``/work/shared/bench/eventgen.py`` (or ``--eventgen``)
publishes K tasks (3 events each) at full speed. A reader is done when every task has its three
events or when nothing has arrived for ``--quiet`` seconds. Readers run one after another in the
order A B B A ... (``--rounds``), so a noisy machine hurts both alike.

Modes:
  live   (default) the generator publishes while the reader reads: what a monitor lives through.
  drain  RabbitMQ only: the generator fills celeriac's stable queue first, then the reader is
         started and timed until the queue is empty: the reader's own ceiling.
  cpu    Redis only, no broker: the wire bytes of K tasks pushed through the reader's parse,
         decode and sink in-process: CPU cost per event.

Usage:
  python bench/reader_bench.py --broker redis://127.0.0.1:6390/0 -k 100000 -P 2
  python bench/reader_bench.py --broker amqp://guest:guest@127.0.0.1:5672// -k 100000 -P 2
  python bench/reader_bench.py --broker amqp://... --mode drain -k 100000
  python bench/reader_bench.py --mode cpu -k 100000
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVENTGEN = Path(os.environ.get("EVENTGEN", "/work/shared/bench/eventgen.py"))
TASK_TYPES = ("task-received", "task-started", "task-succeeded", "task-failed")


class Tally:
    """The trivial sink: a dict update per event, plus what the benchmark needs to count."""

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.workers: dict[str, dict[str, Any]] = {}
        self.events = 0
        self.done = 0  # tasks with their three events
        self.first = 0.0
        self.last = 0.0

    def batch(self, events: list[dict[str, Any]]) -> None:
        tasks, workers = self.tasks, self.workers
        for ev in events:
            u = ev.get("uuid")
            if u is not None:
                rec = tasks.get(u)
                if rec is None:
                    rec = tasks[u] = {"n": 0}
                rec.update(ev)
                rec["n"] += 1
                if rec["n"] == 3:
                    self.done += 1
            else:
                workers.setdefault(ev.get("hostname", "?"), {}).update(ev)
        now = time.time()
        if not self.events:
            self.first = now
        self.last = now
        self.events += len(events)

    def one(self, event: dict[str, Any]) -> None:
        self.batch([event])

    def complete(self) -> int:
        return self.done


# -- the reader process ----------------------------------------------------------------------


def run_reader(kind: str, broker: str, queue_name: str | None, expect: int, quiet: float) -> None:
    """Child process: read until ``expect`` tasks are complete or ``quiet`` s of silence."""
    sys.path.insert(0, str(ROOT))
    tally = Tally()
    extra: dict[str, Any] = {}
    if kind == "celeriac":
        src: Any
        if broker.startswith(("redis", "rediss", "unix")):
            from celeriac.events.redis import RedisEventSource

            src = RedisEventSource(broker, tally.batch)
        else:
            from celeriac.events.amqp import AmqpEventSource

            src = AmqpEventSource(broker, tally.batch, queue_name=queue_name)
        src.start()
        if not src.wait_subscribed(30):
            raise SystemExit(f"could not subscribe: {src.counters.last_error}")
        close = src.close

        def stats() -> dict[str, Any]:
            c = src.counters
            out = {"gaps": c.gaps, "malformed": c.malformed, "messages": c.messages}
            if hasattr(src, "backlog_bytes"):
                out["backlog_mb_now"] = round(src.backlog_bytes / 2**20, 1)
            return out
    elif kind == "redispy":
        close, stats = redispy_reader(broker, tally, extra)
    elif kind == "pyamqp":
        close, stats = pyamqp_reader(broker, queue_name, tally)
    else:
        close, stats = celery_receiver(broker, tally, extra)
    cpu0 = cpu_seconds()
    print("READY", flush=True)
    started = sys.stdin.readline().strip()  # the parent says when publishing has begun
    t_pub = float(started.split()[1]) if started.startswith("START") else time.time()
    last_n, last_change = -1, time.time()
    while True:
        time.sleep(0.1)
        if tally.events != last_n:
            last_n, last_change = tally.events, time.time()
        if tally.complete() >= expect or time.time() - last_change > quiet:
            break
    cpu = cpu_seconds() - cpu0
    close()
    span = max(tally.last - t_pub, 1e-9)
    result = {
        "reader": kind,
        "events": tally.events,
        "tasks_seen": len(tally.tasks),
        "tasks_complete": tally.complete(),
        "tasks_expected": expect,
        "seconds_publish_to_last": round(span, 2),
        "events_per_s": round(tally.events / span),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_event": round(cpu / max(tally.events, 1) * 1e6, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        **stats(),
        **extra,
    }
    print("RESULT " + json.dumps(result), flush=True)


def celery_receiver(broker: str, tally: Tally, extra: dict[str, Any]) -> tuple[Any, Any]:
    """Celery's ``app.events.Receiver`` as Flower runs it: reconnect on any error."""
    from celery import Celery

    app = Celery("bench", broker=broker, set_as_current=False)
    stop = threading.Event()
    ready = threading.Event()
    extra["reconnects"] = 0
    holder: dict[str, Any] = {}

    def loop() -> None:
        while not stop.is_set():
            try:
                with app.connection_for_read() as conn:
                    recv = app.events.Receiver(conn, handlers={"*": tally.one})
                    holder["recv"] = recv
                    # consume() declares and subscribes before it yields the first time
                    it = recv.itercapture(limit=None, timeout=None, wakeup=False)
                    ready.set()
                    for _ in it:
                        if stop.is_set():
                            break
            except Exception as exc:
                if stop.is_set():
                    break
                extra["reconnects"] += 1
                extra["last_error"] = f"{type(exc).__name__}: {exc}"[:200]
                time.sleep(0.5)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    ready.wait(30)
    time.sleep(1.0)  # the subscription is in place shortly after consume() starts

    def close() -> None:
        stop.set()
        recv = holder.get("recv")
        if recv is not None:
            recv.should_stop = True
        thread.join(2)

    return close, lambda: {}


def redispy_reader(broker: str, tally: Tally, extra: dict[str, Any]) -> tuple[Any, Any]:
    """The road not taken: redis-py's PubSub (hiredis parser) + the same decode, batched."""
    import redis

    from celeriac.events.decode import Decoded, redis_messages

    client = redis.Redis.from_url(broker)
    pattern = f"/{client.connection_pool.connection_kwargs.get('db', 0)}.celeryev/*"
    stop = threading.Event()
    extra["reconnects"] = 0

    def subscribe() -> Any:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(pattern)
        return pubsub

    holder = {"pubsub": subscribe()}

    def loop() -> None:
        while not stop.is_set():
            try:
                pubsub = holder["pubsub"]
                datas: list[bytes] = []
                msg = pubsub.get_message(timeout=0.2)
                while msg is not None and len(datas) < 1000:
                    datas.append(msg["data"])
                    msg = pubsub.get_message(timeout=0)
            except Exception as exc:  # dropped by Redis: resubscribe, as a monitor would
                extra["reconnects"] += 1
                extra["last_error"] = f"{type(exc).__name__}: {exc}"[:200]
                holder["pubsub"] = subscribe()
                continue
            if datas:
                out = Decoded()
                redis_messages(datas, out)
                tally.batch(out.events)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.5)

    def close() -> None:
        stop.set()
        thread.join(2)

    return close, lambda: {}


def pyamqp_reader(broker: str, queue_name: str | None, tally: Tally) -> tuple[Any, Any]:
    """The road not taken: py-amqp's own delivery path (basic_consume callback, drain_events)
    with the same decode, batching and multiple-acks as AmqpEventSource."""
    from kombu import Connection

    from celeriac.events.decode import Decoded, amqp_messages

    conn = Connection(broker)
    conn.connect()
    channel: Any = conn.default_channel
    name = queue_name or f"bench.pyamqp.{uuid.uuid4().hex[:8]}"
    channel.queue_declare(name, durable=True, auto_delete=False, exclusive=False)
    channel.queue_bind(name, "celeryev", "#")
    channel.basic_qos(0, 2000, False)
    pending: list[tuple[Any, str | None, str | None]] = []
    last = [0]

    def on_message(m: Any) -> None:
        pending.append((m.body, m.properties.get("content_type"), None))
        last[0] = m.delivery_tag

    channel.basic_consume(name, "", callback=on_message, no_ack=False)
    stop = threading.Event()

    def flush() -> None:
        out = Decoded()
        amqp_messages(pending, out)
        pending.clear()
        tally.batch(out.events)
        channel.basic_ack(last[0], multiple=True)

    def loop() -> None:
        started = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn.connection.drain_events(timeout=0.1)
            if pending and (len(pending) >= 500 or time.monotonic() - started > 0.1):
                flush()
                started = time.monotonic()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(2)
        if not queue_name:
            channel.queue_delete(name)
        conn.release()

    return close, lambda: {}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the parent ------------------------------------------------------------------------------


def eventgen(broker: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(EVENTGEN), "--broker", broker, "-k", str(args.tasks)]
    mode = "dispatcher" if args.batch else args.gen_mode
    cmd += ["-P", str(args.procs), "--mode", mode, "--fail-frac", "0.1"]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_run(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    queue_name = f"bench.{uuid.uuid4().hex[:8]}" if args.mode == "drain" else None
    child_cmd = [sys.executable, __file__, "_reader", kind, args.broker, str(args.tasks)]
    child_cmd += [str(args.quiet), queue_name or ""]
    if args.mode == "drain":
        prime = subprocess.run(
            [sys.executable, __file__, "_declare", args.broker, queue_name or ""]
        )
        if prime.returncode:
            raise SystemExit("could not declare the queue")
        gen = eventgen(args.broker, args)
        gen_out, _ = gen.communicate()
    child = subprocess.Popen(
        child_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert child.stdin is not None and child.stdout is not None
    line = child.stdout.readline()
    if not line.startswith("READY"):
        raise SystemExit(f"{kind} reader did not start: {line!r}")
    if args.mode == "drain":
        child.stdin.write(f"START {time.time()}\n")
        child.stdin.flush()
    else:
        gen = eventgen(args.broker, args)
        assert gen.stdout is not None
        start = gen.stdout.readline()
        child.stdin.write(start)
        child.stdin.flush()
        rest, _ = gen.communicate()
        gen_out = start + rest
    out, _ = child.communicate(timeout=3600)
    if queue_name:  # a stable queue bound to '#' would keep collecting every later event
        from kombu import Connection

        with Connection(args.broker) as conn:
            conn.default_channel.queue_delete(queue_name)
    result = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
    gen_result = json.loads(next(x for x in gen_out.splitlines() if x.startswith("RESULT "))[7:])
    result["published_events"] = gen_result["events"]
    result["publish_events_per_s"] = gen_result["events_per_s"]
    result["tasks_lost"] = args.tasks - result["tasks_complete"]
    if args.mode == "drain":
        result["events_per_s"] = round(result["events"] / result["seconds_publish_to_last"])
    return result


def declare(broker: str, queue_name: str) -> None:
    """drain mode: create the stable queue (and its binding) before anything is published."""
    sys.path.insert(0, str(ROOT))
    from celeriac.events.amqp import AmqpEventSource

    src = AmqpEventSource(broker, lambda evs: None, queue_name=queue_name)
    src.start()
    src.wait_subscribed(30)
    src.close()


def cpu_mode(k: int) -> list[dict[str, Any]]:
    """Redis reader's parse + decode + sink on pre-built wire bytes, in-process."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(EVENTGEN.parent))
    import eventgen as g  # type: ignore[import-not-found]

    from celeriac.events.redis import RedisEventSource

    chunks = []
    for i in range(k):
        for type_, host, fields in g.task_events("cpu", i, 0.1, "celery@fakeworker-01"):
            body = g._json_body(type_, host, fields, i, 1, time.time())
            env = json.dumps(
                {
                    "body": base64.b64encode(body).decode(),
                    "content-encoding": "utf-8",
                    "content-type": "application/json",
                    "headers": {"hostname": host},
                    "properties": {
                        "delivery_mode": 1,
                        "delivery_info": {"exchange": "celeryev", "routing_key": type_},
                        "priority": 0,
                        "body_encoding": "base64",
                        "delivery_tag": str(uuid.uuid4()),
                    },
                }
            ).encode()
            ch = b"/0.celeryev/" + type_.replace("-", ".").encode()
            chunks.append(
                b"*4\r\n$8\r\npmessage\r\n$13\r\n/0.celeryev/*\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (len(ch), ch, len(env), env)
            )
    wire = b"".join(chunks)
    tally = Tally()
    src = RedisEventSource("redis://127.0.0.1:1/0", tally.batch)
    import hiredis

    reader = hiredis.Reader()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    step = 1 << 20
    for off in range(0, len(wire), step):
        src._deliver(src._parse(reader, bytearray(wire[off : off + step])))
    dt, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return [
        {
            "reader": "celeriac redis parse+decode+sink (cpu mode)",
            "events": tally.events,
            "tasks_complete": tally.complete(),
            "seconds": round(dt, 2),
            "events_per_s": round(tally.events / dt),
            "cpu_us_per_event": round(cpu / tally.events * 1e6, 2),
            "bytes_per_message": round(len(wire) / len(chunks)),
        }
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_reader":
        kind, broker, expect, quiet, qn = sys.argv[2:7]
        return run_reader(kind, broker, qn or None, int(expect), float(quiet))
    if len(sys.argv) > 1 and sys.argv[1] == "_declare":
        return declare(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--broker", default="redis://127.0.0.1:6390/0")
    ap.add_argument("-k", "--tasks", type=int, default=100_000)
    ap.add_argument("-P", "--procs", type=int, default=2, help="eventgen publisher processes")
    ap.add_argument("--gen-mode", default="wire", choices=("wire", "producer", "dispatcher"))
    ap.add_argument("--batch", type=int, default=0, help="task.multi batches (dispatcher mode)")
    ap.add_argument("--mode", default="live", choices=("live", "drain", "cpu"))
    ap.add_argument("--readers", default="celeriac,celery")
    ap.add_argument("--rounds", type=int, default=1, help="A B, then B A, ...")
    ap.add_argument("--quiet", type=float, default=5.0, help="seconds of silence that end a run")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if args.mode == "cpu":
        results = cpu_mode(args.tasks)
    else:
        readers = args.readers.split(",")
        if args.mode == "drain":
            readers = [r for r in readers if r in ("celeriac", "pyamqp")] or ["celeriac"]
        results = []
        for rnd in range(args.rounds):
            for kind in readers if rnd % 2 == 0 else readers[::-1]:
                r = one_run(kind, args)
                r["round"] = rnd + 1
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    load = os.getloadavg()
    doc = {"argv": sys.argv, "loadavg": [round(x, 2) for x in load], "results": results}
    print(json.dumps(doc, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
