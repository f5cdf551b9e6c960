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


def run(argv: list[str], out: Path, label: str) -> dict[str, Any]:
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
    return record


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
    a = ap.parse_args()
    ks = a.k or [10_000, 100_000]
    out = Path(a.out or tempfile.mkdtemp(prefix="celeriac-vs-flower-"))
    out.mkdir(parents=True, exist_ok=True)
    dbs = Path(tempfile.mkdtemp(prefix="celeriac-bench-db-"))
    celeriac = CELERIAC % dbs

    sys.path.insert(0, str(REPO))
    from tests.fixtures.brokers import RabbitMQServer, RedisServer

    work = Path(tempfile.mkdtemp(prefix="celeriac-bench-brokers-"))
    brokers: dict[str, str] = {}
    redis = rabbit = None
    records = []
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
                records.append(run(
                    [a.python, "ingest.py", "--broker", url, "--cmd", "flower", "--vs", celeriac,
                     "--shell", "--labels", "flower,celeriac", "-k", str(k),
                     "--rounds", str(a.rounds), "--port", str(a.port)],
                    out, f"ingest-{kind}-k{k}",
                ))
            if not a.skip_realworkers:
                # realworkers.py has no --shell: one run of each, so a fixed fresh file will do
                rw = CELERIAC.replace("exec ", "").replace(
                    '"$(mktemp -u %s/celeriac-XXXXXX.sqlite3)"', f"{dbs}/realworkers-{kind}.db"
                )
                records.append(run(
                    [a.python, "realworkers.py", "--broker", url, "--cmd", "flower",
                     "--vs", rw, "--labels", "flower,celeriac", "-n", str(a.n),
                     "--port", str(a.port + 1)],
                    out, f"realworkers-{kind}",
                ))
    finally:
        (out / "runs.json").write_text(json.dumps(records, indent=1))
        if redis is not None:
            redis.stop()
        if rabbit is not None:
            rabbit.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(dbs, ignore_errors=True)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
