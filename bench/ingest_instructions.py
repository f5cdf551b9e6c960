"""Instructions per event on the ingest thread, stage by stage, counted by valgrind.

Timings on a shared machine move by 20% from one run to the next; instruction counts do not.
This replays the harness' synthetic tasks (``../shared/bench/eventgen.py``, 3 events each) in
kombu's Redis envelope, in batches of 1,500 as the Redis reader delivers them, with a
100,000-object heap beside (a server's), and counts the instructions of:

- decode: ``redis_messages`` (base64 + orjson);
- merge: ``State.apply`` with a store that keeps nothing;
- tally: the same with the metrics' ``EventTally`` observing;
- store: the same with the SQLite store (its writer process is not counted: valgrind follows
  only this process).

Each stage runs in a process of its own under ``valgrind --tool=cachegrind``; a stage's count
is the difference to the one before, divided by the events. The server's collector settings
(``celeriac/heap.py``) are applied when the source tree has them. Needs valgrind.

    python bench/ingest_instructions.py -k 20000 [--src /tmp/celeriac-src-<commit>]
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH = 1500
STAGES = ("decode", "merge", "tally", "store")


def child(stage: str, data: str, src: str) -> None:
    """One stage's work, in this process (run under valgrind)."""
    sys.path.insert(0, src)
    with open(data, "rb") as f:
        datas = pickle.load(f)
    from celeriac.events.decode import Decoded, redis_messages
    from celeriac.metrics import EventTally
    from celeriac.state import State

    # After celeriac's imports: ingest_cpu puts this repository on the path, and the tree
    # counted must be ``src``.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ingest_cpu import NoStore

    ballast = [{"a": i, "b": [i]} for i in range(100_000)]  # noqa: F841 - a server's heap
    try:
        from celeriac import heap
    except ImportError:  # an older tree: CPython's defaults
        pass
    else:
        heap.tune_gc()
    store = None
    if stage.startswith("store"):
        from celeriac.store.sqlite import SqliteStore

        store = SqliteStore(os.path.join(tempfile.mkdtemp(), "t.sqlite3"), max_tasks=10**7)
        store.start()
    if stage in ("none", "store-none"):
        if store is not None:
            store.close()
        return

    state = State(store or NoStore())  # type: ignore[arg-type]
    if stage in ("tally", "store"):
        state.observe(EventTally())
    for i in range(0, len(datas), BATCH):
        out = Decoded()
        redis_messages(datas[i : i + BATCH], out)
        if stage != "decode":
            state.apply(out.events)
    if store is not None:
        store.close()


def count(stage: str, data: str, src: str) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "--stage", stage, "--data", data, "--src", src],
        capture_output=True, text=True, check=True,
    )
    m = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if m is None:
        raise SystemExit(f"no count from valgrind:\n{done.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("-k", type=int, default=20_000, help="tasks (3 events each)")
    ap.add_argument("--src", default=str(REPO), help="the celeriac source tree to count")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stage:
        child(a.stage, a.data, a.src)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ingest_cpu import envelope, events

    evs = events(a.k)
    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as f:
        pickle.dump([envelope(e) for e in evs], f)
    try:
        n = len(evs)
        base, store_base = count("none", f.name, a.src), count("store-none", f.name, a.src)
        totals = {s: count(s, f.name, a.src) for s in STAGES}
    finally:
        os.unlink(f.name)
    per = {
        "decode": (totals["decode"] - base) / n,
        "merge": (totals["merge"] - totals["decode"]) / n,
        "tally": (totals["tally"] - totals["merge"]) / n,
        "store": ((totals["store"] - store_base) - (totals["tally"] - base)) / n,
    }
    print(f"{a.src}: {n:,} events, instructions per event on the ingest thread")
    for stage, value in per.items():
        print(f"  {stage:8s} {value:10,.0f}")
    print(f"  {'total':8s} {sum(per.values()):10,.0f}")


if __name__ == "__main__":
    main()
