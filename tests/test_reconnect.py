"""A broker that goes away is reconnected to, and celeriac keeps serving what it knows meanwhile."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Redis:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for(up, 10, "redis-server to answer")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def redis() -> Iterator[Redis]:
    server = Redis(free_port())
    server.start()
    yield server
    server.kill()


def send_task_events(broker: str, task_id: str) -> None:
    """One whole task as a worker would announce it, through Celery's own dispatcher."""
    app = Celery("probe", broker=broker, set_as_current=False)
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname="probe@test", enabled=True)
        d.send("task-received", uuid=task_id, name="tests.probe", args="()", kwargs="{}")
        d.send("task-started", uuid=task_id)
        d.send("task-succeeded", uuid=task_id, result="'ok'", runtime=0.001)
        d.close()


def test_broker_restart_is_reconnected_without_restarting_celeriac(
    redis: Redis, tmp_path: Path
) -> None:
    broker = f"redis://127.0.0.1:{redis.port}/0"
    port = free_port()
    log_path = tmp_path / "celeriac.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "--broker", broker, "--port", str(port),
             "--unauthenticated-api"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_for(lambda: client.get("/healthcheck").status_code == 200, 30, "celeriac to start")

        def shows(task_id: str) -> bool:
            send_task_events(broker, task_id)
            r = client.get(f"/api/task/info/{task_id}")
            return r.status_code == 200 and r.json()["state"] == "SUCCESS"

        before = str(uuid.uuid4())
        wait_for(lambda: shows(before), 30, "the first task to arrive")

        redis.kill()
        wait_for(
            lambda: not client.get("/api/celeriac/status").json()["events"]["connected"],
            15, "celeriac to notice the broker is gone",
        )
        # Still serving what it knows while the broker is away.
        assert client.get("/healthcheck").text == "OK"
        assert client.get(f"/api/task/info/{before}").json()["state"] == "SUCCESS"
        assert proc.poll() is None

        redis.start()
        after = str(uuid.uuid4())
        wait_for(lambda: shows(after), 60, "a task sent after the restart to arrive")
        events = client.get("/api/celeriac/status").json()["events"]
        assert events["connected"] is True
        assert events["reconnects"] >= 1
        assert events["gaps"] >= 1
        assert "s blind" in log_path.read_text()  # the one log line that says how long
        assert proc.poll() is None
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
