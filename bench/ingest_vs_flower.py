"""celeriac against Flower with the shared harness (../shared/bench), on private brokers.

Starts a private redis-server and a private RabbitMQ node (the test fixtures' way), then runs,
for each broker, ``ingest.py --cmd flower --vs <celeriac>`` at each K and ``realworkers.py``,
both monitors in the same invocation. celeriac gets a fresh SQLite file per run (the store on),
and the same ``--max-tasks`` as the harness gives Flower. The load average is recorded before
and after every run: the machine is shared. JSON per run and a summary go to ``--out``.

Needs Flower importable by ``--python`` (``pip install flower``; a benchmark-only dependency):

    python bench/ingest_vs_flower.py --python /tmp/flowerenv/bin/python --out /tmp/ingest-vs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HARNESS = Path(os.environ.get("CELERIAC_BENCH_HARNESS", REPO.parent / "shared" / "bench"))
CELERIAC = (
    'exec {python} -m celeriac --broker={broker} --port={port} --unauthenticated-api '
    '--max-tasks 1000000 --db "$(mktemp -u %s/celeriac-XXXXXX.sqlite3)"'
)


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def run(argv: list[str], out: Path, label: str, records: list[dict[str, Any]]) -> None:
    json_path = out / f"{label}.json"
    started, load_before = time.time(), loadavg()
    print(f"== {label}: load {load_before}\n   {' '.join(argv)}", flush=True)
    with open(out / f"{label}.table.txt", "w") as table:
        done = subprocess.run(
            [*argv, "--json-out", str(json_path)], stdout=subprocess.DEVNULL, stderr=table,
            cwd=HARNESS, check=False,
        )
    record = {
        "label": label, "argv": argv, "returncode": done.returncode,
        "load_before": load_before, "load_after": loadavg(),
        "seconds": round(time.time() - started, 1),
    }
    print(f"   rc={done.returncode} load after {record['load_after']} "
          f"({record['seconds']} s)", flush=True)
    records.append(record)
    (out / "runs.json").write_text(json.dumps(records, indent=1))  # as we go: partial is fine


def _median(xs: list[float | None]) -> float | None:
    ys = sorted(x for x in xs if x is not None)
    if not ys:
        return None
    mid = len(ys) // 2
    return ys[mid] if len(ys) % 2 else (ys[mid - 1] + ys[mid]) / 2


def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def summarize(out: Path) -> str:
    """Markdown tables of every run in ``out``: each round, then medians and ratios."""
    lines: list[str] = []
    listed = out / "runs.json"
    runs = {r["label"]: r for r in json.loads(listed.read_text())} if listed.exists() else {}
    for path in sorted(out.glob("ingest-*.json")):
        data = json.loads(path.read_text())
        meta = runs.get(path.stem, {})
        lines += [
            f"### {path.stem} (load average before {meta.get('load_before')}, "
            f"after {meta.get('load_after')})", "",
            "| monitor (round) | published ev/s | ingest ev/s | CPU s | CPU µs/event | "
            "RSS idle | RSS after | RSS peak | held | missing | wrong state | gaps/lossy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        per: dict[str, dict[str, list[float | None]]] = {}
        for r in data["results"]:
            ev = r["gen"].get("events") or 0
            cpu = r.get("cpu_s_ingest")
            hold = r.get("hold", {})
            # A lossy run's rate and CPU per event count events it never had: not valid.
            lossy = bool(r.get("lossy")) or r.get("ingest_events_per_s") is None
            valid = "LOSSY" if lossy else "ok"
            rate = None if lossy else r.get("ingest_events_per_s")
            per_event = cpu / ev * 1e6 if cpu is not None and ev and not lossy else None
            lines.append(
                f"| {r['label']} ({r['round']}) | {_fmt(r['gen'].get('publish_events_per_s'))} "
                f"| {_fmt(rate)} | {_fmt(cpu, 1)} | {_fmt(per_event, 1)} "
                f"| {_fmt(r.get('rss_idle_mb'), 1)} | {_fmt(r.get('rss_after_mb'), 1)} "
                f"| {_fmt(r.get('rss_peak_mb'), 1)} | {_fmt(hold.get('run_tasks_held'))} "
                f"| {_fmt(hold.get('run_tasks_missing'))} | {_fmt(hold.get('wrong_state'))} "
                f"| {valid} |"
            )
            m = per.setdefault(r["label"], {})
            for key, value in (
                ("rate", rate), ("cpu_per_event", per_event), ("rss_after", r.get("rss_after_mb")),
                ("rss_peak", r.get("rss_peak_mb")), ("held", hold.get("run_tasks_held")),
            ):
                m.setdefault(key, []).append(value)
        med = {label: {k: _median(v) for k, v in m.items()} for label, m in per.items()}
        if "flower" in med and "celeriac" in med:
            f, c = med["flower"], med["celeriac"]

            def ratio(key: str, inverse: bool = False, f: Any = f, c: Any = c) -> str:
                a, b = f.get(key), c.get(key)
                if not a or not b:
                    return "-"
                return f"{(a / b if inverse else b / a):.2f}x"

            lines += [
                "", "| median | flower | celeriac | celeriac vs flower |", "|---|---:|---:|---:|",
                f"| ingest events/s | {_fmt(f['rate'])} | {_fmt(c['rate'])} | {ratio('rate')} |",
                f"| CPU µs per event | {_fmt(f['cpu_per_event'], 1)} "
                f"| {_fmt(c['cpu_per_event'], 1)} | {ratio('cpu_per_event', True)} less |"
                .replace("| - less |", "| - |"),
                f"| RSS after (MB) | {_fmt(f['rss_after'], 1)} | {_fmt(c['rss_after'], 1)} "
                f"| {ratio('rss_after')} |",
                f"| RSS peak (MB) | {_fmt(f['rss_peak'], 1)} | {_fmt(c['rss_peak'], 1)} "
                f"| {ratio('rss_peak')} |",
                f"| tasks held | {_fmt(f['held'])} | {_fmt(c['held'])} | |",
            ]
        lines.append("")
    for path in sorted(out.glob("realworkers-*.json")):
        data = json.loads(path.read_text())
        meta = runs.get(path.stem, {})
        lines += [
            f"### {path.stem} (load average before {meta.get('load_before')}, "
            f"after {meta.get('load_after')})", "",
            "| monitor | tasks | all final in monitor after (s) | lag after last finish (s) "
            "| not final | wrong or missing | workers visible after (s) | RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in data["results"]:
            lines.append(
                f"| {r['label']} | {r.get('n')} | {r.get('all_done_in_monitor_s')} "
                f"| {r.get('monitor_lag_after_last_finish_s')} | {r.get('not_final')} "
                f"| {r.get('wrong_or_missing_state')} | {r.get('workers_visible_s')} "
                f"| {r.get('rss_mb')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="a Python with flower installed")
    ap.add_argument("--out", default=None, help="folder for the JSON and tables")
    ap.add_argument("-k", type=int, action="append", help="tasks per ingest run (repeatable)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--brokers", default="redis,amqp")
    ap.add_argument("-n", type=int, default=2000, help="tasks for realworkers.py")
    ap.add_argument("--skip-realworkers", action="store_true")
    ap.add_argument("--port", type=int, default=5760, help="monitor port (and the next one)")
    ap.add_argument("--gen-procs", type=int, default=1, help="generator processes (ingest.py)")
    ap.add_argument("--gen-mode", default="wire", help="ingest.py's generator mode")
    ap.add_argument("--batch", type=int, default=0,
                    help="dispatcher mode: task.multi messages of this many events")
    ap.add_argument("--celeriac-src", default=None,
                    help="run celeriac from this source tree (PYTHONPATH), e.g. a `git archive`"
                         " snapshot, so that edits in the shared checkout do not change a run")
    ap.add_argument("--summarize", metavar="OUT", help="only print the tables of an earlier run")
    a = ap.parse_args()
    if a.summarize:
        print(summarize(Path(a.summarize)))
        return
    ks = a.k or [10_000, 100_000]
    out = Path(a.out or tempfile.mkdtemp(prefix="celeriac-vs-flower-"))
    out.mkdir(parents=True, exist_ok=True)
    dbs = Path(tempfile.mkdtemp(prefix="celeriac-bench-db-"))
    celeriac = CELERIAC % dbs
    if a.celeriac_src:
        src = Path(a.celeriac_src).resolve()
        celeriac = celeriac.replace("exec {python}", f"exec env PYTHONPATH={src} {{python}}")

    sys.path.insert(0, str(REPO))
    from tests.fixtures.brokers import RabbitMQServer, RedisServer

    work = Path(tempfile.mkdtemp(prefix="celeriac-bench-brokers-"))
    brokers: dict[str, str] = {}
    redis = rabbit = None
    records: list[dict[str, Any]] = []
    try:
        kinds = a.brokers.split(",")
        if "redis" in kinds:
            (work / "redis").mkdir()
            redis = RedisServer(work / "redis").start()
            brokers["redis"] = redis.db_url(0)
        if "amqp" in kinds:
            rabbit = RabbitMQServer(work / "rabbitmq").wait_ready()
            brokers["amqp"] = rabbit.new_url("bench")
        for kind, url in brokers.items():
            for k in ks:
                run(
                    [a.python, "ingest.py", "--broker", url, "--cmd", "flower", "--vs", celeriac,
                     "--shell", "--labels", "flower,celeriac", "-k", str(k),
                     "--rounds", str(a.rounds), "--port", str(a.port),
                     "--gen-procs", str(a.gen_procs), "--gen-mode", a.gen_mode,
                     "--batch", str(a.batch)],
                    out, f"ingest-{kind}-k{k}", records,
                )
            if not a.skip_realworkers:
                # realworkers.py has no --shell: one run of each, so a fixed fresh file will do
                rw = celeriac.replace("exec ", "").replace(
                    f'"$(mktemp -u {dbs}/celeriac-XXXXXX.sqlite3)"', f"{dbs}/realworkers-{kind}.db"
                )
                run(
                    [a.python, "realworkers.py", "--broker", url, "--cmd", "flower",
                     "--vs", rw, "--labels", "flower,celeriac", "-n", str(a.n),
                     "--port", str(a.port + 1)],
                    out, f"realworkers-{kind}", records,
                )
    finally:
        if redis is not None:
            redis.stop()
        if rabbit is not None:
            rabbit.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(dbs, ignore_errors=True)
    (out / "summary.md").write_text(summarize(out))
    print(f"results in {out} (summary.md)")


if __name__ == "__main__":
    main()
