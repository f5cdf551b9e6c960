"""celeriac's Redis reader, state and store in this process, fed by the harness' generator
through a real Redis: the CPU of each thread per event, with the sink cut where you choose.

``--sink null`` (hiredis + decode only), ``nostore`` (and the state's merge), ``process``
(and the SQLite store, its writer in a process: the default) or ``thread`` (its writer on a
thread). Needs a redis-server (``--broker``).

    python bench/ingest_live.py --broker redis://127.0.0.1:6391/0 -k 100000 --sink process
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest_cpu import HARNESS, NoStore

from celeriac.events.redis import RedisEventSource
from celeriac.state import State
from celeriac.store.sqlite import SqliteStore


def thread_cpu() -> dict[str, float]:
    out = {}
    for t in threading.enumerate():
        if t.native_id:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[t.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    ap.add_argument("-k", type=int, default=100_000, help="tasks (3 events each)")
    ap.add_argument("--sink", choices=("null", "nostore", "process", "thread"), default="process")
    ap.add_argument("--procs", type=int, default=2, help="generator processes")
    a = ap.parse_args()
    taken = [0]
    store: Any = None
    with tempfile.TemporaryDirectory() as tmp:
        if a.sink in ("process", "thread"):
            store = SqliteStore(
                os.path.join(tmp, "t.sqlite3"), max_tasks=10**7, writer_process=a.sink == "process"
            )
            store.start()
        state = State(store or NoStore())  # type: ignore[arg-type]

        def null(events: list[dict[str, Any]]) -> None:
            taken[0] += len(events)

        src = RedisEventSource(a.broker, null if a.sink == "null" else state.apply)
        src.start()
        src.wait_subscribed(10)
        before, started = thread_cpu(), time.time()
        subprocess.run(
            [sys.executable, str(HARNESS / "eventgen.py"), "--broker", a.broker, "-k", str(a.k),
             "-P", str(a.procs), "--mode", "wire", "--json"],
            check=True, capture_output=True,
        )  # fmt: skip
        events = 3 * a.k
        while (taken[0] if a.sink == "null" else state.applied) < events:
            if time.time() - started > 300:
                raise SystemExit("not all events arrived in 300 s")
            time.sleep(0.01)
        after = thread_cpu()
        src.close()
        if store is not None:
            store.close()
    per = {k: (after[k] - before.get(k, 0)) / events * 1e6 for k in after}
    shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v)
    print(f"sink {a.sink}, k={a.k}: µs of CPU per event by thread: {shown}")


if __name__ == "__main__":
    main()
