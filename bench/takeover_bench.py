"""How long a follower takes to lead after the leader's process is SIGKILLed.

    python bench/takeover_bench.py --rounds 20 --out bench/results/takeover.md

A child process holds the election's advisory lock (``celeriac.leader.Leadership``, as a
celeriac instance on a shared PostgreSQL store does); this process follows with the default
poll interval. Each round kills the child with SIGKILL and measures the time until this process
leads. PostgreSQL is a private server started for the run (``tests/fixtures/postgres.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celeriac.leader import Leadership  # noqa: E402
from tests.fixtures.postgres import PostgresServer  # noqa: E402

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from celeriac.leader import Leadership
lead = Leadership(sys.argv[1], "bench://cluster", lambda: print("elected", flush=True),
                  lambda graceful: None, interval=0.05)
lead.start()
time.sleep(3600)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0, help="the follower's poll interval")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    server = PostgresServer(durable=True).start()
    took: list[float] = []
    try:
        url = server.new_url("takeover")
        for _ in range(a.rounds):
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD.format(root=str(ROOT)), url],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "elected"
            elected = threading.Event()
            follower = Leadership(
                url, "bench://cluster", elected.set, lambda graceful: None, interval=a.interval
            )
            follower.start()
            # At least one round lost to the child; killed at a random point of the follower's
            # poll cycle.
            time.sleep(a.interval * (1.1 + random.random()))
            assert not follower.leading
            killed = time.perf_counter()
            os.kill(child.pid, signal.SIGKILL)
            if not elected.wait(30):
                raise SystemExit("no take-over within 30 s")
            took.append(time.perf_counter() - killed)
            follower.close()
            child.wait()
    finally:
        server.stop()
    took.sort()
    lines = [
        "# Leader take-over after SIGKILL",
        "",
        f"Command: `python bench/takeover_bench.py --rounds {a.rounds} --interval {a.interval}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}. Date: {time.strftime('%Y-%m-%d')}.",
        "",
        "The leader's process is killed; PostgreSQL ends its session when the socket closes and"
        " releases the advisory lock; the follower takes it at its next poll.",
        "",
        f"| rounds | median | p95 | max |\n|---|---|---|---|\n| {len(took)} | "
        f"{statistics.median(took):.2f} s | {took[max(0, int(len(took) * 0.95) - 1)]:.2f} s | "
        f"{took[-1]:.2f} s |",
        "",
        f"With a poll interval of {a.interval:g} s the wait is that interval at most, plus"
        " the time PostgreSQL takes to notice the dead connection (immediate for a killed"
        " process on the same network: the kernel closes its socket).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
