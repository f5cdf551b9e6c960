"""The live stream over real HTTP: what it sends, and that a stuck reader slows nobody."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures import wait_for
from tests.web.conftest import PREFIX, UI

pytestmark = pytest.mark.timeout(120)


def messages(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


def test_hello_then_the_tasks_that_changed(ui: UI) -> None:
    with ui.api() as c, c.stream("GET", "/ui/stream", timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        stream = messages(r)
        hello = next(stream)
        assert hello["hello"] is True
        assert {w.hostname for w in ui.workers} <= set(hello["workers"])
        assert all(hello["workers"][w.hostname]["online"] for w in ui.workers)
        task_id = ui.send("tests.add", 2, 2)
        seen: dict[str, str] = {}
        deadline = time.monotonic() + 20
        for message in stream:
            assert message["hello"] is False
            assert message["v"] > hello["v"]
            for t in message["tasks"]:
                seen[t["uuid"]] = t["state"]
            if seen.get(task_id) == "SUCCESS" or time.monotonic() > deadline:
                break
        assert seen.get(task_id) == "SUCCESS"


def test_readers_that_never_read_do_not_slow_ingestion(ui: UI) -> None:
    host, port = "127.0.0.1", ui.monitor.port
    stuck = []
    for _ in range(5):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET {PREFIX}/ui/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        stuck.append(s)  # and never read from again
    try:
        started = time.monotonic()
        with ui.api() as c:
            before = c.get("/api/celeriac/status").json()["events"]["applied"]
            ids = [
                c.post("/api/task/send-task/tests.echo", json={"args": [i]}).json()["task-id"]
                for i in range(100)
            ]

            def all_done() -> bool:
                found = c.get("/api/tasks", params={"state": "SUCCESS", "limit": 1000}).json()
                return set(ids) <= set(found)

            wait_for(all_done, 60, 0.2, "100 tasks to be stored as succeeded")
            after = c.get("/api/celeriac/status").json()["events"]["applied"]
        assert after - before >= 300  # sent, received, started, succeeded for each
        assert time.monotonic() - started < 60
    finally:
        for s in stuck:
            s.close()
