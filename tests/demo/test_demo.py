"""``celeriac demo`` end to end: a real subprocess, real workers, Ctrl-C, and a second run.

The demo promises to work with nothing but the package installed and to leave nothing behind,
so the test runs it exactly as a user would (``python -m celeriac demo``) and counts processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")

DEMO_TASKS = {"demo.add", "demo.resize_image", "demo.send_email", "demo.fetch_url"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last_error, value = exc, None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


class Demo:
    """One ``celeriac demo`` process started as a user would, in its own session."""

    def __init__(self, directory: Path, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        env = {**os.environ, "CELERIAC_DEMO_DIR": str(directory)}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "demo", "--port", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = httpx.Client(base_url=self.url, timeout=5.0)

    def get(self, path: str) -> Any:
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    def wait_until_serving(self) -> None:
        def healthy() -> bool:
            assert self.proc.poll() is None, f"demo exited early:\n{self.log.read_text()}"
            return self.client.get("/healthcheck").text == "OK"

        wait_for(healthy, 30, "/healthcheck")

    def wait_for_workers(self, count: int) -> dict[str, bool]:
        def online() -> dict[str, bool] | None:
            status = self.get("/api/workers?status=true")
            return status if sum(status.values()) == count else None

        return wait_for(online, 30, f"{count} workers online")

    def stop(self, timeout: float = 15.0) -> tuple[list[psutil.Process], float]:
        """SIGINT, as Ctrl-C; returns what is still running after ``timeout`` and the time taken."""
        self.client.close()
        try:
            parent = psutil.Process(self.proc.pid)
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            parent, children = None, []
        workers = [c for c in children if "celeriac.demo.tasks" in " ".join(c.cmdline())]
        assert len(workers) >= 2, f"expected the demo's workers among its children: {children}"
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        procs = [parent, *children] if parent is not None else children
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        took = time.monotonic() - started
        alive = [p for p in alive if _running(p)]
        if not alive:
            self.proc.wait(timeout=1)
        return alive, took

    def kill(self) -> None:
        """Last resort for a failed test: nothing may outlive it."""
        if self.proc.poll() is not None:
            return
        try:
            parent = psutil.Process(self.proc.pid)
            procs = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=5)


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    return tmp_path / "demo"


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[[Path, int], Demo]]:
    started: list[Demo] = []

    def start(directory: Path, port: int) -> Demo:
        demo = Demo(directory, port, tmp_path / f"demo-{len(started) + 1}.log")
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.kill()


def test_demo_runs_stops_and_runs_again(
    demo_dir: Path, start_demo: Callable[[Path, int], Demo]
) -> None:
    port = free_port()
    demo = start_demo(demo_dir, port)
    demo.wait_until_serving()
    assert set(demo.wait_for_workers(2)) == {f"demo{i}@{socket.gethostname()}" for i in (1, 2)}

    def states() -> dict[str, str] | None:
        tasks = demo.get("/api/tasks")
        by_state = {t["state"]: task_id for task_id, t in tasks.items()}
        return by_state if {"SUCCESS", "FAILURE"} <= set(by_state) else None

    by_state = wait_for(states, 30, "a SUCCESS and a FAILURE in /api/tasks")
    wait_for(lambda: set(demo.get("/api/task/types")["task-types"]) >= DEMO_TASKS, 20,
             f"{sorted(DEMO_TASKS)} in /api/task/types")
    # The file:// result backend, through celeriac.
    result = demo.get(f"/api/task/result/{by_state['FAILURE']}")
    assert result["state"] == "FAILURE" and "SMTPRecipientsRefused" in result["result"]
    # Remote control over the filesystem transport: every worker answers, and a pool grows.
    worker = f"demo2@{socket.gethostname()}"
    workers = demo.get("/api/workers?refresh=true")
    assert len(workers) == 2 and all("stats" in info for info in workers.values())
    before = len(workers[worker]["stats"]["pool"]["processes"])
    assert demo.client.post(f"/api/worker/pool/grow/{worker}?n=1").status_code == 200

    def grown() -> bool:
        info = demo.get(f"/api/workers?refresh=true&workername={worker}")[worker]
        return len(info["stats"]["pool"]["processes"]) == before + 1

    wait_for(grown, 5, f"{worker}'s pool to have {before + 1} processes")

    alive, took = demo.stop()
    assert not alive, f"still running {took:.1f} s after SIGINT: {alive}"
    assert demo.proc.returncode == 0, demo.log.read_text()

    again = start_demo(demo_dir, port)
    again.wait_until_serving()
    again.wait_for_workers(2)
    alive, took = again.stop()
    assert not alive, f"second run: still running {took:.1f} s after SIGINT: {alive}"


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "CELERIAC_DEMO_DIR": str(tmp_path / "demo")}
        done = subprocess.run(
            [sys.executable, "-m", "celeriac", "demo", "--port", str(port)],
            env=env, capture_output=True, text=True, timeout=30,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"celeriac demo: port {port} on 127.0.0.1 is already in use; pick another with --port"
    ]
    assert not (tmp_path / "demo").exists()


def test_an_unusable_history_is_one_line(tmp_path: Path) -> None:
    # The demo keeps its history in the user's data directory like any celeriac: when that
    # cannot be used it says so in one line and starts nothing, as `celeriac --broker` does.
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("")
    env = {**os.environ, "CELERIAC_DEMO_DIR": str(tmp_path / "demo"),
           "XDG_DATA_HOME": str(not_a_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "demo", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("celeriac demo: task database ") and "Not a directory" in lines[0]
    assert not list((tmp_path / "demo").glob("logs/*.log"))  # no worker was started
